//! Fault injection for tests: fail the next N requests on a path, drop or hold watch
//! streams. (Compacting the event log lives on the store: `Emulator::compact`.)

use std::sync::Mutex;
use tokio::sync::watch;

/// What an injected fault does to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a matching `Status` body
    /// (409 → Conflict, 500 → InternalError, 429 → TooManyRequests, ...).
    Status(u16),
    /// Close the connection without answering.
    Drop,
    /// Never answer (a stuck API server or a dead connection): the client's own
    /// timeouts must rescue it.
    Hang,
}

#[derive(Debug)]
struct Rule {
    method: Option<String>,
    path_prefix: String,
    remaining: usize,
    fault: Fault,
}

#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    drop_epoch: watch::Sender<u64>,
    hold: watch::Sender<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rules: Mutex::new(Vec::new()),
            drop_epoch: watch::channel(0).0,
            hold: watch::channel(false).0,
        }
    }
}

impl Faults {
    /// The next `n` requests whose path starts with `path_prefix` (any method) fail.
    pub fn fail_next(&self, path_prefix: &str, n: usize, fault: Fault) {
        self.push(None, path_prefix, n, fault);
    }

    /// Like [`fail_next`](Self::fail_next) for one HTTP method (`"PATCH"`, `"GET"`, ...).
    pub fn fail_next_method(&self, method: &str, path_prefix: &str, n: usize, fault: Fault) {
        self.push(Some(method.to_ascii_uppercase()), path_prefix, n, fault);
    }

    fn push(&self, method: Option<String>, path_prefix: &str, n: usize, fault: Fault) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                method,
                path_prefix: path_prefix.to_string(),
                remaining: n,
                fault,
            });
    }

    /// Removes every pending request fault.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Ends every open watch stream now (clients see a clean end of stream and re-watch).
    pub fn drop_watches(&self) {
        self.drop_epoch.send_modify(|e| *e += 1);
    }

    /// While held, new watch requests wait before being answered; useful to make
    /// changes (and compact) while a client is disconnected.
    pub fn hold_watches(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// The most recently added matching rule wins.
    pub(crate) fn take(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let idx = rules.iter().rposition(|r| {
            r.remaining > 0
                && path.starts_with(&r.path_prefix)
                && r.method.as_deref().is_none_or(|m| m == method)
        })?;
        rules[idx].remaining -= 1;
        let fault = rules[idx].fault.clone();
        rules.retain(|r| r.remaining > 0);
        Some(fault)
    }

    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drop_epoch.subscribe()
    }

    pub(crate) async fn wait_unheld(&self) {
        let mut rx = self.hold.subscribe();
        // Err only if the sender is gone, i.e. the emulator is shutting down.
        let _ = rx.wait_for(|held| !*held).await;
    }
}

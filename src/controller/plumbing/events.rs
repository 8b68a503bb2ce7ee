//! Kubernetes Events (`events.k8s.io/v1`) for the controllers' transitions.
//!
//! An Event repeated for the same object, type, reason and note within
//! [`SERIES_WINDOW`] becomes a series on the first one (its `series.count` goes up)
//! instead of a new object (the API server keeps an Event's note immutable, so a new
//! note is a new Event), as kube-runtime's `Recorder` does. Unlike the `Recorder`, which keeps every
//! Event it wrote for six minutes and scans them all on each publish, this remembers
//! only a name and a count per key, and sweeps expired keys at most once per window:
//! a burst of thousands of calculations costs kilobytes, not tens of megabytes.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::ObjectReference,
    api::events::v1::{Event, EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};

use super::names::fnv1a;

/// How long a repeat counts as part of the same series.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Every Event reports a transition its reconcile made.
const ACTION: &str = "Reconcile";

/// The API server refuses notes over 1 kB.
const NOTE_LIMIT: usize = 1024;

/// What the publisher remembers of a series: the Event's name, how often it was
/// seen, and when last.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

/// What to write for one more occurrence of an Event.
#[derive(Debug, PartialEq)]
enum Write {
    Create { name: String },
    Repeat { name: String, count: i32 },
}

/// Decides between a new Event and one more count on a series still open at `now`.
fn next_write(previous: Option<&Series>, now: Instant, new_name: impl FnOnce() -> String) -> Write {
    match previous {
        Some(series) if now.duration_since(series.last) < SERIES_WINDOW => Write::Repeat {
            name: series.name.clone(),
            count: series.count + 1,
        },
        _ => Write::Create { name: new_name() },
    }
}

/// The note cut to the API server's limit, on a character boundary.
fn bounded_note(note: &str) -> String {
    if note.len() <= NOTE_LIMIT {
        return note.to_string();
    }
    let mut end = NOTE_LIMIT - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

/// What makes a repeat part of a series: the same object, type, reason and note (the
/// note of an Event cannot change once written).
fn series_key(regarding: &ObjectReference, type_: &str, reason: &str, note: &str) -> u64 {
    fnv1a(
        [
            regarding.uid.as_deref().unwrap_or_default(),
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.name.as_deref().unwrap_or_default(),
            type_,
            reason,
            note,
        ]
        .join("\0")
        .as_bytes(),
    )
}

#[derive(Default)]
struct Memory {
    series: HashMap<u64, Series>,
    swept: Option<Instant>,
}

impl Memory {
    /// Forgets series that can no longer be continued, at most once per window.
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|at| now.duration_since(at) < SERIES_WINDOW)
        {
            return;
        }
        self.series
            .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
        self.swept = Some(now);
    }
}

pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    memory: Mutex<Memory>,
}

impl EventPublisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            memory: Mutex::default(),
        }
    }

    /// Publishes an Event about `object`; one that cannot be written is logged, not
    /// worth failing a reconcile over.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: &str,
    ) {
        let regarding = &object.object_ref(&());
        let type_ = if warning { "Warning" } else { "Normal" };
        let key = series_key(regarding, type_, reason, note);
        let now = Instant::now();
        let write = {
            let Ok(mut memory) = self.memory.lock() else {
                return;
            };
            memory.sweep(now);
            next_write(memory.series.get(&key), now, || {
                format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    Timestamp::now().as_nanosecond()
                )
            })
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events = Api::<Event>::namespaced(self.client.clone(), namespace);
        let stamp = MicroTime(Timestamp::now());
        let (name, count, result) = match write {
            Write::Create { name } => {
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.to_string()),
                        ..ObjectMeta::default()
                    },
                    event_time: Some(stamp),
                    action: Some(ACTION.to_string()),
                    reason: Some(reason.to_string()),
                    note: Some(bounded_note(note)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(type_.to_string()),
                    ..Event::default()
                };
                let result = events
                    .create(&PostParams::default(), &event)
                    .await
                    .map(|_| ());
                (name, 1, result)
            }
            Write::Repeat { name, count } => {
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: stamp },
                });
                let result = events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ());
                (name, count, result)
            }
        };
        match result {
            Ok(()) => {
                if let Ok(mut memory) = self.memory.lock() {
                    memory.series.insert(
                        key,
                        Series {
                            name,
                            count,
                            last: now,
                        },
                    );
                }
            }
            Err(error) => {
                // A series whose Event is gone (deleted, expired) starts over next time.
                if let Ok(mut memory) = self.memory.lock() {
                    memory.series.remove(&key);
                }
                tracing::warn!(object = ?regarding.name, reason, %error, "could not publish an Event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_with_another_note_starts_a_new_series() {
        let calc = ObjectReference {
            uid: Some("u-1".into()),
            namespace: Some("shop".into()),
            name: Some("daily".into()),
            ..ObjectReference::default()
        };
        let key = |note| series_key(&calc, "Normal", "RunCreated", note);
        assert_eq!(key("run 1 fires"), key("run 1 fires"));
        assert_ne!(key("run 1 fires"), key("run 2 fires"));
    }

    #[test]
    fn a_first_event_is_created_and_a_repeat_within_the_window_counts_on_it() {
        let start = Instant::now();
        assert_eq!(
            next_write(None, start, || "calc.1".into()),
            Write::Create {
                name: "calc.1".into()
            }
        );
        let series = Series {
            name: "calc.1".into(),
            count: 1,
            last: start,
        };
        assert_eq!(
            next_write(Some(&series), start + Duration::from_secs(60), || "calc.2"
                .into()),
            Write::Repeat {
                name: "calc.1".into(),
                count: 2
            }
        );
        assert_eq!(
            next_write(Some(&series), start + SERIES_WINDOW, || "calc.3".into()),
            Write::Create {
                name: "calc.3".into()
            }
        );
    }

    #[test]
    fn expired_series_are_swept_at_most_once_per_window() {
        let start = Instant::now();
        let mut memory = Memory::default();
        let series = |last| Series {
            name: "x".into(),
            count: 1,
            last,
        };
        memory.series.insert(1, series(start));
        memory.sweep(start);
        assert_eq!(memory.series.len(), 1);
        memory
            .series
            .insert(2, series(start + Duration::from_secs(10)));
        // Within the window since the last sweep: nothing is scanned.
        memory.sweep(start + SERIES_WINDOW - Duration::from_secs(1));
        assert_eq!(memory.series.len(), 2);
        memory.sweep(start + SERIES_WINDOW + Duration::from_secs(5));
        assert_eq!(memory.series.keys().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn long_notes_are_cut_to_the_api_limit_on_a_character_boundary() {
        assert_eq!(bounded_note("short"), "short");
        let long = "é".repeat(NOTE_LIMIT);
        let cut = bounded_note(&long);
        assert!(cut.len() <= NOTE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}

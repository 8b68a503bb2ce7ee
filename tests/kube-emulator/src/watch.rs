//! Watch streams: newline-delimited `WatchEvent` JSON with selector filtering, bookmarks,
//! `timeoutSeconds`, streaming-list initial events and the in-stream 410 for compacted
//! resourceVersions.

use crate::error::ApiError;
use crate::faults::Faults;
use crate::resources::ResourceDef;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{EventType, Store, WatchEvent, WatchFrom};
use crate::table;
use bytes::Bytes;
use futures::SinkExt;
use futures::channel::mpsc;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

pub struct WatchRequest {
    pub def: Arc<ResourceDef>,
    pub version: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: String,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    /// Render objects as single-row Tables (kubectl get -w); value is includeObject.
    pub table: Option<String>,
    /// Render objects as PartialObjectMetadata.
    pub metadata_only: bool,
}

impl WatchRequest {
    fn selected(&self, obj: &Value) -> bool {
        let in_ns = match &self.namespace {
            Some(ns) if self.def.namespaced => obj["metadata"]["namespace"].as_str() == Some(ns),
            _ => true,
        };
        in_ns && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// What this watcher sees of an event, turning selection changes into ADDED/DELETED.
    /// The event as this watcher sees it: its type and object (core/v1 Event watches
    /// also see events.k8s.io Events, converted).
    fn view(&self, ev: &WatchEvent) -> Option<(&'static str, Arc<Value>)> {
        if ev.res.plural == self.def.plural && ev.res.group == self.def.group {
            return self
                .classify(ev, &ev.object, ev.old.as_deref())
                .map(|k| (k, ev.object.clone()));
        }
        if self.def.plural == "events"
            && crate::store::event_alias(&self.def.key()).as_ref() == Some(&ev.res)
        {
            let obj = crate::store::core_event_from(&ev.object);
            let old = ev.old.as_deref().map(crate::store::core_event_from);
            return self
                .classify(ev, &obj, old.as_ref())
                .map(|k| (k, Arc::new(obj)));
        }
        None
    }

    fn classify(
        &self,
        ev: &WatchEvent,
        object: &Value,
        old: Option<&Value>,
    ) -> Option<&'static str> {
        let now = self.selected(object);
        let before = old.is_some_and(|o| self.selected(o));
        match ev.kind {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => now.then_some("DELETED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }

    fn render(&self, kind: &str, obj: &Value) -> Bytes {
        let mut obj = obj.clone();
        obj["apiVersion"] = json!(self.def.api_version(&self.version));
        let object = match &self.table {
            Some(include) => table::table(
                &self.def,
                &self.version,
                std::slice::from_ref(&obj),
                include,
                json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            ),
            None if self.metadata_only => table::partial(&obj),
            None => obj,
        };
        line(&json!({"type": kind, "object": object}))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            &json!({"type": "BOOKMARK", "object": {"kind": self.def.kind, "apiVersion": self.def.api_version(&self.version), "metadata": meta}}),
        )
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

/// The single ERROR event a watch from a compacted resourceVersion gets (HTTP 200).
pub fn error_event(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.to_status()}))
}

/// Starts a watch; returns the body stream. Errors that Kubernetes reports in-stream
/// (410 Expired) come back as a stream with one ERROR event.
pub async fn start(
    store: Arc<Store>,
    faults: Arc<Faults>,
    req: WatchRequest,
    bookmark_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<Bytes> {
    let (mut tx, rx) = mpsc::channel::<Bytes>(64);
    faults.wait_unheld().await;
    let from = match req.resource_version.as_str() {
        "" | "0" => WatchFrom::State,
        rv => match rv.parse::<u64>() {
            Ok(n) => WatchFrom::Rv(n),
            Err(_) => {
                let _ = tx.try_send(error_event(&ApiError::bad_request(format!(
                    "invalid resource version: {rv}"
                ))));
                return rx;
            }
        },
    };
    let (backlog, mut events, snapshot_rv) = match store.watch(&req.def.key(), &from) {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.try_send(error_event(&e));
            return rx;
        }
    };
    let mut dropped = faults.drop_signal();
    dropped.mark_unchanged();
    tokio::spawn(async move {
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut last_rv = snapshot_rv;
        let initial = matches!(from, WatchFrom::State);
        for ev in &backlog {
            // Initial-state events are all ADDED; log replays keep their type.
            let shown = if initial {
                req.selected(&ev.object)
                    .then(|| ("ADDED", ev.object.clone()))
            } else {
                req.view(ev)
            };
            if let Some((k, obj)) = shown
                && tx.send(req.render(k, &obj)).await.is_err()
            {
                return;
            }
        }
        if initial
            && req.send_initial_events
            && req.bookmarks
            && tx.send(req.bookmark(last_rv, true)).await.is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            let sleep_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400));
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        last_rv = last_rv.max(ev.rv);
                        if let Some((k, obj)) = req.view(&ev)
                            && tx.send(req.render(k, &obj)).await.is_err()
                        {
                            return;
                        }
                    }
                    // Fell behind the live events (a burst while this task waited): catch
                    // up from the event log, as the API server's watch cache does; once
                    // the log no longer reaches back that far, end the stream and let the
                    // client resume (and get 410 Expired).
                    Err(RecvError::Lagged(_)) => {
                        let from = WatchFrom::Rv(last_rv);
                        let Ok((missed, rx, rv)) = store.watch(&req.def.key(), &from) else {
                            return;
                        };
                        events = rx;
                        for ev in &missed {
                            if let Some((k, obj)) = req.view(ev)
                                && tx.send(req.render(k, &obj)).await.is_err()
                            {
                                return;
                            }
                        }
                        last_rv = rv;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    if req.bookmarks && tx.send(req.bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => {
                    if req.bookmarks {
                        let _ = tx.send(req.bookmark(last_rv, false)).await;
                    }
                    return;
                }
                _ = dropped.changed() => return,
                _ = shutdown.changed() => return,
            }
        }
    });
    rx
}

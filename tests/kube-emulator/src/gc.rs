//! Garbage collection: dependents of vanished owners, foreground and orphan deletion,
//! and the namespace controller's content cleanup. Level-triggered: every pass looks at
//! all objects being deleted and all objects whose owners are gone (both indexed by the
//! store as it commits), so no event can be missed.

use crate::resources::ResKey;
use crate::store::{Changes, DeleteOpts, State, Store, Sub, finalizers};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// (uid, blockOwnerDeletion) of each owner reference.
fn owner_refs(o: &Value) -> Vec<(String, bool)> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some((
                        r["uid"].as_str()?.to_string(),
                        r["blockOwnerDeletion"].as_bool().unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

fn uid(o: &Value) -> String {
    o["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn background() -> DeleteOpts {
    DeleteOpts {
        propagation: Some("Background".into()),
        ..Default::default()
    }
}

fn delete(st: &mut State, res: &ResKey, o: &Value, opts: &DeleteOpts) {
    if let Ok(t) = st.target_for(res, o) {
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // A concurrent delete may have won; either way the object is on its way out.
        let _ = st.delete(&t, &name, opts);
    }
}

fn drop_finalizer(st: &mut State, res: &ResKey, o: &Value, fin: &str) -> bool {
    let mut updated = o.clone();
    let left: Vec<String> = finalizers(o).into_iter().filter(|f| f != fin).collect();
    updated["metadata"]["finalizers"] = json!(left);
    if left.is_empty()
        && let Some(m) = updated["metadata"].as_object_mut()
    {
        m.remove("finalizers");
    }
    st.put_internal(res, updated, Sub::Main).is_ok()
}

/// One pass; returns whether it changed anything (then another pass follows at once).
/// It visits only objects being deleted and objects whose owners are all gone, which
/// the store indexes, so a pass costs nothing when neither exists.
pub fn pass(st: &mut State) -> bool {
    let mut changed = false;
    for (res, o) in &st.deleting() {
        let me = uid(o);
        let fins = finalizers(o);
        let dependents = st.dependents_of(&me);
        if fins.iter().any(|f| f == "orphan") {
            for (dres, d) in &dependents {
                let mut freed = (**d).clone();
                let refs: Vec<Value> = d["metadata"]["ownerReferences"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r["uid"] != me.as_str())
                    .collect();
                freed["metadata"]["ownerReferences"] = json!(refs);
                if refs.is_empty()
                    && let Some(m) = freed["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
                let _ = st.put_internal(dres, freed, Sub::Main);
            }
            if drop_finalizer(st, res, o, "orphan") {
                return true;
            }
        }
        if fins.iter().any(|f| f == "foregroundDeletion") {
            for (dres, d) in &dependents {
                if !deleting(d) {
                    // Dependents of a foreground delete go in the foreground too.
                    delete(
                        st,
                        dres,
                        d,
                        &DeleteOpts {
                            propagation: Some("Foreground".into()),
                            ..Default::default()
                        },
                    );
                    changed = true;
                }
            }
            let blocking = dependents
                .iter()
                .any(|(_, d)| owner_refs(d).iter().any(|(u, b)| *u == me && *b));
            if !blocking && drop_finalizer(st, res, o, "foregroundDeletion") {
                return true;
            }
        }
        if res.group.is_empty() && res.plural == "namespaces" {
            let ns = o["metadata"]["name"].as_str().unwrap_or_default();
            let content = st.in_namespace(ns);
            for (cres, c) in &content {
                if !deleting(c) {
                    delete(st, cres, c, &background());
                    changed = true;
                }
            }
            if content.is_empty() && fins.is_empty() && st.remove(res, "", ns).is_some() {
                return true;
            }
        }
    }
    for (res, o) in &st.dangling() {
        if !deleting(o) {
            delete(st, res, o, &background());
            changed = true;
        }
    }
    changed
}

/// Runs passes whenever the store changes, plus a slow safety tick.
pub async fn run(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    let mut events = store.subscribe();
    loop {
        // Bounded, so an object that refuses an update cannot spin the collector.
        for _ in 0..100 {
            if !store.with(pass) {
                break;
            }
        }
        tokio::select! {
            // A burst of changes is answered by one pass.
            ev = events.recv() => if Changes::collect(ev, &mut events).is_none() {
                return;
            },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

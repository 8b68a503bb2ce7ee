//! A minimal apps/v1 Deployment controller, so a Helm chart's controller Deployment
//! runs under the emulator. Simplification: Pods are owned by the Deployment directly
//! (no ReplicaSets); a template change replaces all Pods at once (no surge/unavailable
//! budgeting).

use crate::resources::ResKey;
use crate::store::{Changes, DeleteOpts, State, Store, Sub, Target, WriteOpts, now};
use serde_json::{Value, json};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn deployments_key() -> ResKey {
    ResKey::new("apps", "deployments")
}

fn pods_key() -> ResKey {
    ResKey::new("", "pods")
}

/// Stable short hash of the pod template, like `pod-template-hash`.
fn template_hash(template: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{:x}", h.finish() & 0xffff_ffff)
}

fn str_of<'a>(v: &'a Value, a: &str, b: &str) -> &'a str {
    v[a][b].as_str().unwrap_or_default()
}

pub async fn run(store: Arc<Store>, mut shutdown: watch::Receiver<bool>) {
    let mut events = store.subscribe();
    loop {
        store.with(reconcile_all);
        tokio::select! {
            // A burst of changes is answered by one pass.
            ev = events.recv() => if Changes::collect(ev, &mut events).is_none() {
                return;
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn reconcile_all(st: &mut State) {
    let deployments: Vec<Value> = st.all(&deployments_key()).cloned().collect();
    for d in deployments {
        if let Err(e) = reconcile(st, &d) {
            tracing::debug!(error = %e, "deployment reconcile");
        }
    }
}

fn reconcile(st: &mut State, d: &Value) -> crate::ApiResult<()> {
    if !d["metadata"]["deletionTimestamp"].is_null() {
        return Ok(());
    }
    let ns = str_of(d, "metadata", "namespace").to_string();
    let name = str_of(d, "metadata", "name").to_string();
    let uid = str_of(d, "metadata", "uid").to_string();
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let hash = template_hash(&d["spec"]["template"]);
    let pods: Vec<Arc<Value>> = st
        .dependents_of(&uid)
        .into_iter()
        .filter(|(res, _)| *res == pods_key())
        .map(|(_, p)| p)
        .filter(|p| str_of(p, "metadata", "namespace") == ns)
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|o| o["uid"] == uid.as_str() && o["controller"] == true)
                })
        })
        .collect();
    let live: Vec<&Value> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let target = |p: &Value| Target {
        res: pods_key(),
        version: "v1".into(),
        namespace: p["metadata"]["namespace"].as_str().map(String::from),
    };
    let delete = |st: &mut State, p: &Value| {
        let n = str_of(p, "metadata", "name").to_string();
        let _ = st.delete(
            &target(p),
            &n,
            &DeleteOpts {
                propagation: Some("Background".into()),
                ..Default::default()
            },
        );
    };
    let mut current = Vec::new();
    for p in &live {
        let stale = p["metadata"]["labels"]["pod-template-hash"] != hash.as_str();
        let dead = matches!(
            p["status"]["phase"].as_str(),
            Some("Failed") | Some("Succeeded")
        );
        if stale || dead {
            delete(st, p);
        } else {
            current.push(*p);
        }
    }
    for extra in current.iter().skip(want) {
        delete(st, extra);
    }
    let kept = current.len().min(want);
    for _ in kept..want {
        let mut tmpl = d["spec"]["template"].clone();
        tmpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": format!("{name}-{hash}-"),
                "namespace": ns,
                "labels": tmpl["metadata"]["labels"],
                "annotations": tmpl["metadata"]["annotations"].as_object().cloned().unwrap_or_default(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": tmpl["spec"],
        });
        let opts = WriteOpts {
            field_manager: Some("kube-controller-manager".into()),
            ..Default::default()
        };
        st.create(
            &Target {
                res: pods_key(),
                version: "v1".into(),
                namespace: Some(ns.clone()),
            },
            pod,
            &opts,
        )?;
    }
    let ready = current
        .iter()
        .take(want)
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count() as i64;
    let total = (live.len().max(want)) as i64;
    let want = want as i64;
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": want,
        "updatedReplicas": want,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": (total - ready).max(0),
    });
    let old_conditions = d["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cond = |t: &str, ok: bool, reason: &str, message: String| {
        let s = if ok { "True" } else { "False" };
        let prev = old_conditions
            .iter()
            .find(|c| c["type"] == t && c["status"] == s && c["reason"] == reason);
        prev.cloned().unwrap_or_else(|| json!({"type": t, "status": s, "reason": reason, "message": message, "lastUpdateTime": now(), "lastTransitionTime": now()}))
    };
    let available = ready >= want;
    status["conditions"] = json!([
        cond(
            "Available",
            available,
            if available {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            format!(
                "Deployment {} minimum availability.",
                if available { "has" } else { "does not have" }
            )
        ),
        cond(
            "Progressing",
            true,
            if available {
                "NewReplicaSetAvailable"
            } else {
                "ReplicaSetUpdated"
            },
            format!("Deployment \"{name}\" is progressing.")
        ),
    ]);
    for k in ["readyReplicas", "availableReplicas", "unavailableReplicas"] {
        if status[k] == 0 {
            status.as_object_mut().map(|m| m.remove(k));
        }
    }
    if status != d["status"] {
        let mut updated = d.clone();
        updated["status"] = status;
        st.put_internal(&deployments_key(), updated, Sub::Status)?;
    }
    Ok(())
}

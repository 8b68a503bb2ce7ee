//! Per-kind defaulting that built-in kinds get from the real API server's registry code.

use base64::Engine;
use serde_json::{Value, json};

/// Applied on create (and, where Kubernetes does so, on update) before storage.
pub fn apply(kind: &str, group: &str, obj: &mut Value, creating: bool) {
    match (group, kind) {
        ("", "Secret") => secret_string_data(obj),
        ("", "Namespace") if creating => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"] = json!({"phase": "Active"});
        }
        ("", "Pod") => {
            pod_spec_defaults(&mut obj["spec"]);
            if creating {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        ("", "ServiceAccount") | ("", "ConfigMap") => {}
        ("", "Service") if creating => {
            if obj["spec"]["type"].is_null() {
                obj["spec"]["type"] = json!("ClusterIP");
            }
            if obj["spec"]["clusterIP"].is_null() {
                let n = rand_byte();
                obj["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", n / 16, n % 250 + 2));
                obj["spec"]["clusterIPs"] = json!([obj["spec"]["clusterIP"].clone()]);
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        // Defaulting runs on every write (it is part of decoding in Kubernetes), so
        // re-applying a manifest without the defaults is a no-op, not a change.
        ("batch", "Job") => job_defaults(obj, creating),
        ("apps", "Deployment") => {
            if obj["spec"]["replicas"].is_null() {
                obj["spec"]["replicas"] = json!(1);
            }
            pod_spec_defaults(&mut obj["spec"]["template"]["spec"]);
        }
        _ => {}
    }
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

/// `stringData` is write-only: the server folds it into base64 `data`.
fn secret_string_data(obj: &mut Value) {
    let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in sd {
        let s = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
    }
    if obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
}

fn set_default(v: &mut Value, key: &str, d: Value) {
    if v.get(key).is_none_or(Value::is_null) {
        v[key] = d;
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers {
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "imagePullPolicy", json!("IfNotPresent"));
            set_default(c, "resources", json!({}));
        }
    }
}

/// Job defaulting: selector and labels tie Pods to the Job by the Job's uid, as the real
/// API server does when `manualSelector` is unset.
fn job_defaults(obj: &mut Value, creating: bool) {
    let uid = obj["metadata"]["uid"].clone();
    let name = obj["metadata"]["name"].clone();
    let spec = &mut obj["spec"];
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completions", json!(1));
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if creating && spec["manualSelector"].as_bool() != Some(true) {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let labels = &mut spec["template"]["metadata"]["labels"];
        labels["batch.kubernetes.io/controller-uid"] = uid.clone();
        labels["batch.kubernetes.io/job-name"] = name.clone();
        labels["controller-uid"] = uid;
        labels["job-name"] = name;
    }
    pod_spec_defaults(&mut spec["template"]["spec"]);
    if creating {
        obj["status"] = json!({});
    }
}

//! Built-in kinds' validation that tests can trip over: required fields on create and
//! immutable fields on update (Job template/selector, Pod spec, immutable ConfigMaps
//! and Secrets, and everything of an `events.k8s.io` Event but its series). Returns field errors for a 422 Invalid.

use serde_json::{Value, json};

pub type FieldErrors = Vec<(String, String)>;

fn containers_required(spec: &Value, path: &str, errs: &mut FieldErrors) {
    if spec["containers"].as_array().is_none_or(|c| c.is_empty()) {
        errs.push((format!("{path}.containers"), "Required value".into()));
    }
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if c["name"].as_str().is_none_or(str::is_empty) {
            errs.push((
                format!("{path}.containers[{i}].name"),
                "Required value".into(),
            ));
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            errs.push((
                format!("{path}.containers[{i}].image"),
                "Required value".into(),
            ));
        }
    }
}

pub fn on_create(group: &str, kind: &str, obj: &Value) -> FieldErrors {
    let mut errs = Vec::new();
    match (group, kind) {
        ("", "Pod") => containers_required(&obj["spec"], "spec", &mut errs),
        ("batch", "Job") => {
            let spec = &obj["spec"]["template"]["spec"];
            containers_required(spec, "spec.template.spec", &mut errs);
            let rp = spec["restartPolicy"].as_str().unwrap_or("Always");
            if rp != "Never" && rp != "OnFailure" {
                errs.push((
                    "spec.template.spec.restartPolicy".into(),
                    format!(
                        "Unsupported value: \"{rp}\": supported values: \"OnFailure\", \"Never\""
                    ),
                ));
            }
        }
        ("apps", "Deployment") => containers_required(
            &obj["spec"]["template"]["spec"],
            "spec.template.spec",
            &mut errs,
        ),
        _ => {}
    }
    errs
}

fn immutable(errs: &mut FieldErrors, old: &Value, new: &Value, field: &str) {
    let mut a = old;
    let mut b = new;
    for seg in field.split('.') {
        a = &a[seg];
        b = &b[seg];
    }
    if a != b {
        errs.push((
            field.into(),
            format!(
                "Invalid value: \"{}\": field is immutable",
                crate::schema::type_name(b)
            ),
        ));
    }
}

/// Pod spec fields the API server lets an update change.
fn mutable_pod_view(spec: &Value, old_spec: &Value) -> Value {
    let mut v = spec.clone();
    for list in ["containers", "initContainers"] {
        if let Some(cs) = v[list].as_array_mut() {
            for c in cs {
                c["image"] = json!(null);
            }
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
        // Binding sets nodeName once (the emulator's scheduler does it through update).
        if old_spec["nodeName"].is_null() {
            m.remove("nodeName");
        }
    }
    v
}

pub fn on_update(group: &str, kind: &str, old: &Value, new: &Value) -> FieldErrors {
    let mut errs = Vec::new();
    match (group, kind) {
        // As the API server's ValidateEventUpdate for events.k8s.io/v1: a repeat may
        // only count up its series.
        ("events.k8s.io", "Event") => {
            for f in [
                "regarding",
                "related",
                "reason",
                "note",
                "type",
                "eventTime",
                "action",
                "reportingController",
                "reportingInstance",
            ] {
                immutable(&mut errs, old, new, f);
            }
        }
        ("batch", "Job") => {
            for f in [
                "spec.selector",
                "spec.completions",
                "spec.completionMode",
                "spec.podFailurePolicy",
            ] {
                immutable(&mut errs, old, new, f);
            }
            let mut a = old["spec"]["template"].clone();
            let mut b = new["spec"]["template"].clone();
            // Only a suspended Job that never started may change its template.
            let never_started =
                old["status"]["startTime"].is_null() && old["spec"]["suspend"] == true;
            if never_started {
                a = json!(null);
                b = json!(null);
            }
            if a != b {
                errs.push((
                    "spec.template".into(),
                    "Invalid value: \"object\": field is immutable".into(),
                ));
            }
        }
        ("", "Pod")
            if mutable_pod_view(&old["spec"], &old["spec"])
                != mutable_pod_view(&new["spec"], &old["spec"]) =>
        {
            errs.push((
                    "spec".into(),
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                ));
        }
        ("", "ConfigMap") | ("", "Secret") if old["immutable"] == true => {
            for f in ["data", "binaryData"] {
                if old[f] != new[f] {
                    errs.push((
                        f.into(),
                        "Forbidden: field is immutable when `immutable` is set".into(),
                    ));
                }
            }
            if new["immutable"] != true {
                errs.push((
                    "immutable".into(),
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
        }
        _ => {}
    }
    errs
}

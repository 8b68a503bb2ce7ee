//! The CRDs: `crds/` equals `tally crds`, and their schemas are ones the API server
//! takes and bound what users write. Their CEL rules are tested on `crds/` in the
//! `tally-e2e` crate (`crd_rules.rs`), whose CEL evaluator would otherwise change the
//! features of this crate's build dependencies, and so compile DuckDB a second time
//! for `cargo run`.

use serde_json::{Value, json};

fn schema(kind: &str) -> Value {
    let crd = tally::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every CRD has a schema");
    serde_json::to_value(schema).unwrap()
}

#[test]
fn checked_in_crds_equal_generated() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in tally::api::crds() {
        let file = dir.join(format!("{}.yaml", crd.spec.names.singular.clone().unwrap()));
        let generated = serde_yaml::to_string(&crd).unwrap();
        let checked_in = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `tally crds --output-dir crds`",
                file.display()
            )
        });
        assert!(
            checked_in == generated,
            "{} is out of date; run `tally crds --output-dir crds`",
            file.display()
        );
    }
}

/// Every `format` in the schemas, with where it is.
fn formats(path: &str, schema: &Value, found: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(fields) => {
            for (key, value) in fields {
                if key == "format"
                    && let Some(format) = value.as_str()
                {
                    found.push((path.to_string(), format.to_string()));
                }
                formats(&format!("{path}.{key}"), value, found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                formats(&format!("{path}[{i}]"), item, found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_schema_format_is_one_the_api_server_knows() {
    // The formats kube-apiserver validates; any other draws a warning on every apply.
    let known = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "binary",
        "date",
        "date-time",
        "password",
        "duration",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
    ];
    for crd in tally::api::crds() {
        let mut found = Vec::new();
        formats(
            &crd.spec.names.kind,
            &serde_json::to_value(&crd).unwrap(),
            &mut found,
        );
        for (path, format) in found {
            assert!(
                known.contains(&format.as_str()),
                "{path}: format {format:?}"
            );
        }
    }
}

/// Every string, list and map under `schema` without a maximum size, with where it is.
fn unbounded(path: &str, schema: &Value, found: &mut Vec<String>) {
    let Some(fields) = schema.as_object() else {
        return;
    };
    let lacks = |bound: &str| !fields.contains_key(bound);
    match fields.get("type").and_then(Value::as_str) {
        Some("string") if lacks("maxLength") => found.push(path.to_string()),
        Some("array") if lacks("maxItems") => found.push(path.to_string()),
        Some("object")
            if fields
                .get("additionalProperties")
                .is_some_and(Value::is_object)
                && lacks("maxProperties") =>
        {
            found.push(path.to_string())
        }
        _ => {}
    }
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("properties", Value::Object(properties)) => {
                for (name, child) in properties {
                    unbounded(&format!("{path}.{name}"), child, found);
                }
            }
            ("items" | "additionalProperties", child) => {
                unbounded(&format!("{path}[]"), child, found)
            }
            ("allOf" | "anyOf" | "oneOf", Value::Array(children)) => {
                for child in children {
                    unbounded(path, child, found);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_string_list_and_map_a_user_writes_has_a_maximum_size() {
    for crd in tally::api::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = schema(&kind);
        let mut found = Vec::new();
        unbounded(
            &format!("{kind}.spec"),
            &schema["properties"]["spec"],
            &mut found,
        );
        if kind.ends_with("Table") {
            // Tables' status is written by the user's pipelines.
            unbounded(
                &format!("{kind}.status"),
                &schema["properties"]["status"],
                &mut found,
            );
        }
        assert!(found.is_empty(), "unbounded: {found:#?}");
    }
    // The bounds are what the API server checks; a source's SQL may be longer than
    // other strings.
    let fact_table = schema("FactTable");
    let source = &fact_table["properties"]["spec"]["properties"]["source"]["properties"];
    assert_eq!(source["sql"]["maxLength"], tally::api::MAX_SQL_LENGTH);
    assert_eq!(source["files"]["maxLength"], tally::api::MAX_STRING_LENGTH);
    // A bound a field declares itself is kept.
    let calculation = schema("MetricCalculation");
    let template = &calculation["properties"]["spec"]["properties"];
    assert_eq!(template["splitDimensions"]["maxItems"], 8);
    assert_eq!(
        template["metric"]["maxLength"],
        tally::api::MAX_STRING_LENGTH
    );
}

#[test]
fn crds_have_names_columns_and_status() {
    for crd in tally::api::crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "tally.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["tally".to_string()][..])
        );
        assert_eq!(
            names.short_names.as_ref().map(|s| s.len()),
            Some(1),
            "{}",
            names.kind
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty())
        );
    }
    let mc = tally::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "MetricCalculation")
        .unwrap();
    let columns: Vec<String> = mc.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(columns, ["State", "Metric", "Age"]);
    assert!(
        mc.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
}

/// `kubectl get smc` shows the next run as a time (an age reads like a countdown for a
/// future run and hides that a run is overdue), and how long ago the last run fired.
#[test]
fn schedules_show_the_next_run_as_a_time_and_the_last_as_an_age() {
    let smc = tally::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "ScheduledMetricCalculation")
        .unwrap();
    let columns: Vec<(String, String, String)> = smc.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect();
    let column = |name: &str| columns.iter().find(|c| c.0 == name).cloned().unwrap();
    assert_eq!(
        column("Next Run"),
        (
            "Next Run".into(),
            "string".into(),
            ".status.nextScheduledRunTime".into()
        )
    );
    assert_eq!(
        column("Last Run"),
        (
            "Last Run".into(),
            "date".into(),
            ".status.lastScheduledRunTime".into()
        )
    );
}

/// The rules of a structural schema that generated schemas could break: a type on
/// every node (unless it preserves unknown fields or is int-or-string), no `$ref`, and
/// no types or defaults inside `anyOf`/`allOf`/`oneOf`/`not`.
fn structural_problems(path: &str, node: &Value, in_junctor: bool, out: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    for banned in ["$ref", "definitions", "$defs"] {
        if map.contains_key(banned) {
            out.push(format!("{path}: has {banned}"));
        }
    }
    let free = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        || map.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if in_junctor {
        for banned in ["type", "default", "nullable", "description"] {
            if map.contains_key(banned) {
                out.push(format!("{path}: {banned} inside anyOf/allOf/oneOf/not"));
            }
        }
    } else if !free && !map.contains_key("type") {
        out.push(format!("{path}: no type"));
    }
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            structural_problems(&format!("{path}.{name}"), child, in_junctor, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key).filter(|c| c.is_object()) {
            structural_problems(&format!("{path}.{key}"), child, in_junctor, out);
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        for (i, child) in map
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural_problems(&format!("{path}.{key}[{i}]"), child, true, out);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for crd in tally::api::crds() {
        let kind = crd.spec.names.kind.clone();
        let mut problems = Vec::new();
        structural_problems(&kind, &schema(&kind), false, &mut problems);
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
    }
}

/// `kubernetes-validate` (PyPI) checks each CRD against Kubernetes' own schema for
/// `apiextensions.k8s.io/v1`. CI installs it; elsewhere the test says how.
#[test]
fn crds_validate_against_kubernetes_schemas() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "one CRD file per kind in {}", dir.display());
    let output = match std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
    {
        Ok(output) => output,
        Err(e) if std::env::var_os("TALLY_REQUIRE_TOOLS").is_none() => {
            eprintln!(
                "skipped: kubernetes-validate not runnable ({e}); pip install kubernetes-validate"
            );
            return;
        }
        Err(e) => panic!("kubernetes-validate is required: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{text}"
    );
    assert!(!text.to_lowercase().contains("error"), "{text}");
}

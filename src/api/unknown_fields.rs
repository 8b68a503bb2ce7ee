//! Fields a manifest sets that its kind's schema does not have: what the API server
//! refuses under kubectl's strict field validation, and what `tally run` would
//! otherwise ignore (a misspelt `filter` silently measures everything).

use std::sync::OnceLock;

use serde_json::Value;

use super::crds;

/// The first field of `object` (a `tally.dev` resource of `kind`) that the kind's
/// schema does not know, as a path (`spec.average.measurement.filters`) with the
/// fields known there.
pub fn first_unknown_field(kind: &str, object: &Value) -> Option<(String, Vec<String>)> {
    let (_, schema) = schemas().iter().find(|(k, _)| k == kind)?;
    let mut path = Vec::new();
    walk(schema, object, &mut path)
}

/// Each kind's OpenAPI schema, generated once: a manifest has many documents.
fn schemas() -> &'static [(String, Value)] {
    static SCHEMAS: OnceLock<Vec<(String, Value)>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crds()
            .into_iter()
            .filter_map(|crd| {
                let schema = crd.spec.versions.first()?.schema.as_ref()?;
                let schema = serde_json::to_value(schema.open_api_v3_schema.as_ref()?).ok()?;
                Some((crd.spec.names.kind, schema))
            })
            .collect()
    })
}

fn walk(schema: &Value, value: &Value, path: &mut Vec<String>) -> Option<(String, Vec<String>)> {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return None;
    }
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, field) in fields {
                    // The type and object metadata are the API server's to check, not
                    // a kind's schema.
                    if path.is_empty()
                        && matches!(name.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                    {
                        continue;
                    }
                    path.push(name.clone());
                    let found = match properties.get(name) {
                        Some(field_schema) => walk(field_schema, field, path),
                        None => Some((path.join("."), properties.keys().cloned().collect())),
                    };
                    path.pop();
                    if found.is_some() {
                        return found;
                    }
                }
            } else if let Some(values) = schema.get("additionalProperties") {
                for (name, field) in fields {
                    path.push(name.clone());
                    let found = walk(values, field, path);
                    path.pop();
                    if found.is_some() {
                        return found;
                    }
                }
            }
            None
        }
        Value::Array(items) => {
            let item_schema = schema.get("items")?;
            items.iter().enumerate().find_map(|(i, item)| {
                let last = path.pop().unwrap_or_default();
                path.push(format!("{last}[{i}]"));
                let found = walk(item_schema, item, path);
                path.pop();
                path.push(last);
                found
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metric(spec: Value) -> Value {
        json!({"apiVersion": "tally.dev/v1alpha1", "kind": "Metric",
               "metadata": {"name": "m", "labels": {"any": "thing"}}, "spec": spec})
    }

    #[test]
    fn a_misspelt_field_is_found_with_its_path_and_the_known_fields() {
        let object = metric(json!({"type": "Average", "average": {"measurement": {
            "factTable": "f", "measurement": "amount", "aggregation": "Sum", "filters": "amt > 3"
        }}}));
        let (path, known) = first_unknown_field("Metric", &object).unwrap();
        assert_eq!(path, "spec.average.measurement.filters");
        assert!(known.contains(&"filter".to_string()), "{known:?}");
    }

    #[test]
    fn known_fields_maps_and_lists_pass() {
        let object = metric(json!({"type": "Average", "average": {"measurement": {
            "factTable": "f", "measurement": "amount", "aggregation": "Sum", "filter": "amt > 3"
        }}}));
        assert_eq!(first_unknown_field("Metric", &object), None);
        let warehouse = json!({"apiVersion": "tally.dev/v1alpha1", "kind": "Warehouse",
            "metadata": {"name": "w"},
            "spec": {"engine": "duckdb", "job": {
                "nodeSelector": {"disk": "ssd"},
                "volumes": [{"name": "data", "emptyDir": {}}]}}});
        assert_eq!(first_unknown_field("Warehouse", &warehouse), None);
    }

    #[test]
    fn an_unknown_field_inside_a_list_names_its_index() {
        let calculation = json!({"apiVersion": "tally.dev/v1alpha1", "kind": "MetricCalculation",
            "metadata": {"name": "c"},
            "spec": {"metric": "m", "exposureTable": "e",
                     "startTime": "2026-10-01T00:00:00Z", "endTime": "2026-10-08T00:00:00Z",
                     "splitDimensions": [{"name": "country"}, {"name": "os", "table": "users"}]}});
        let (path, _) = first_unknown_field("MetricCalculation", &calculation).unwrap();
        assert_eq!(path, "spec.splitDimensions[1].table");
    }
}

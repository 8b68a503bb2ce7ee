//! Server-side printing: `meta.k8s.io/v1 Table` responses, which `kubectl get` asks for
//! and which carry CRD printer columns.

use crate::resources::{Column, ResourceDef};
use crate::store::parse_time;
use serde_json::{Value, json};

/// Whether the Accept header asks for a Table (kubectl get does; controllers don't).
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Whether the client asked for metadata only (kube-rs `metadata_watcher`, client-go
/// metadata informers): `as=PartialObjectMetadata` / `as=PartialObjectMetadataList`.
pub fn wants_metadata(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=PartialObjectMetadata"))
}

pub fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// kubectl's human durations: 45s, 5m3s, 17m, 3h4m, 20h, 3d4h, 120d, 3y.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 730 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(v: &Value) -> String {
    match v.as_str().and_then(parse_time) {
        Some(t) => human_duration((chrono::Utc::now() - t).num_seconds()),
        None => "<unknown>".into(),
    }
}

/// Splits a JSONPath like `.status.conditions[?(@.type=="Ready")].status` into steps.
fn steps(path: &str) -> Vec<String> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => {
                if depth == 0 && !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                depth += 1;
                cur.push(c);
            }
            ']' => {
                depth -= 1;
                cur.push(c);
                if depth == 0 {
                    out.push(std::mem::take(&mut cur));
                }
            }
            '.' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Evaluates the JSONPath subset printer columns use: fields, `[n]`, `[*]` and
/// `[?(@.field=="value")]` filters. Returns the first match.
pub fn eval_jsonpath(obj: &Value, path: &str) -> Option<Value> {
    let mut cur: Vec<Value> = vec![obj.clone()];
    for step in steps(path) {
        let mut next = Vec::new();
        for v in &cur {
            if let Some(inner) = step.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                let items = v.as_array().cloned().unwrap_or_default();
                if inner == "*" {
                    next.extend(items);
                } else if let Ok(i) = inner.parse::<usize>() {
                    next.extend(items.get(i).cloned());
                } else if let Some(filter) =
                    inner.strip_prefix("?(").and_then(|s| s.strip_suffix(')'))
                {
                    let (lhs, rhs) = filter.split_once("==").unwrap_or((filter, ""));
                    let field = lhs.trim().trim_start_matches("@.");
                    let want = rhs.trim().trim_matches('"').trim_matches('\'');
                    for item in items {
                        let got = eval_jsonpath(&item, field);
                        let matches = match got {
                            Some(Value::String(s)) => s == want,
                            Some(other) => other == want,
                            None => false,
                        };
                        if matches {
                            next.push(item);
                        }
                    }
                }
            } else if let Some(x) = v.get(&step) {
                next.push(x.clone());
            }
        }
        cur = next;
    }
    cur.into_iter().next()
}

fn cell_for(col: &Column, v: Option<Value>) -> Value {
    let Some(v) = v else { return Value::Null };
    match col.type_.as_str() {
        "date" => json!(age(&v)),
        "integer" | "number" => v,
        "boolean" => v,
        _ => match v {
            Value::String(_) => v,
            Value::Null => Value::Null,
            other => json!(other.to_string()),
        },
    }
}

fn builtin_cell(def: &ResourceDef, col: &Column, obj: &Value) -> Option<Value> {
    let status = &obj["status"];
    match (def.kind.as_str(), col.name.as_str()) {
        ("Pod", "Ready") => {
            let total = obj["spec"]["containers"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0);
            let ready = status["containerStatuses"]
                .as_array()
                .map(|a| a.iter().filter(|c| c["ready"] == true).count())
                .unwrap_or(0);
            Some(json!(format!("{ready}/{total}")))
        }
        ("Pod", "Status") => {
            let reason = status["containerStatuses"]
                .as_array()
                .and_then(|a| {
                    a.iter().find_map(|c| {
                        c["state"]["terminated"]["reason"]
                            .as_str()
                            .or(c["state"]["waiting"]["reason"].as_str())
                    })
                })
                .map(String::from);
            let phase = status["phase"].as_str().unwrap_or("Pending").to_string();
            if !obj["metadata"]["deletionTimestamp"].is_null() {
                return Some(json!("Terminating"));
            }
            Some(json!(reason.unwrap_or(phase)))
        }
        ("Pod", "Restarts") => {
            let n: i64 = status["containerStatuses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            Some(json!(n.to_string()))
        }
        ("Job", "Status") => {
            let conds = status["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let s = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else if !obj["metadata"]["deletionTimestamp"].is_null() {
                "Terminating"
            } else {
                "Running"
            };
            Some(json!(s))
        }
        ("Job", "Completions") => {
            let done = status["succeeded"].as_i64().unwrap_or(0);
            let want = obj["spec"]["completions"].as_i64().unwrap_or(1);
            Some(json!(format!("{done}/{want}")))
        }
        ("Job", "Duration") => {
            let start = status["startTime"].as_str().and_then(parse_time)?;
            let end = status["completionTime"]
                .as_str()
                .and_then(parse_time)
                .unwrap_or_else(chrono::Utc::now);
            Some(json!(human_duration((end - start).num_seconds())))
        }
        ("Event", "Object") => {
            let r = if obj["involvedObject"].is_object() {
                &obj["involvedObject"]
            } else {
                &obj["regarding"]
            };
            Some(json!(format!(
                "{}/{}",
                r["kind"].as_str().unwrap_or("").to_lowercase(),
                r["name"].as_str().unwrap_or("")
            )))
        }
        ("Event", "Message") => Some(
            obj.get("message")
                .or_else(|| obj.get("note"))
                .cloned()
                .unwrap_or(Value::Null),
        ),
        _ => None,
    }
}

fn row(def: &ResourceDef, columns: &[Column], obj: &Value, include: &str) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for col in columns {
        let v = if def.custom || !col.json_path.is_empty() && builtin_cell(def, col, obj).is_none()
        {
            eval_jsonpath(obj, &col.json_path)
        } else {
            builtin_cell(def, col, obj)
        };
        cells.push(cell_for(col, v));
    }
    let object = match include {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
        }
    };
    json!({"cells": cells, "object": object})
}

/// Builds a Table for `items`; `list_meta` carries resourceVersion/continue.
pub fn table(
    def: &ResourceDef,
    version: &str,
    items: &[Value],
    include: &str,
    list_meta: Value,
) -> Value {
    let columns = def
        .version(version)
        .map(|v| v.columns.clone())
        .unwrap_or_default();
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in &columns {
        defs.push(json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}));
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": items.iter().map(|o| row(def, &columns, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_filters_and_indexes() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}], "n": [1, 2]}});
        assert_eq!(
            eval_jsonpath(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(eval_jsonpath(&o, ".status.n[1]"), Some(json!(2)));
        assert_eq!(eval_jsonpath(&o, ".status.missing"), None);
    }

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(303), "5m3s");
        assert_eq!(human_duration(3 * 3600 + 240), "3h4m");
    }
}

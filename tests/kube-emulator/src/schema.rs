//! CRD structural schema handling on writes: pruning unknown fields, defaulting, type and
//! value validation, and `x-kubernetes-validations` CEL rules (via `kube-cel`).

use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceDef;
use serde_json::Value;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Removes fields the schema does not declare (recording their paths), and nulls on
/// non-nullable fields, as the API server does before defaulting.
pub fn prune(schema: &Value, value: &mut Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let embedded = root || schema["x-kubernetes-embedded-resource"].as_bool() == Some(true);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if embedded
                    && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    && props.and_then(|p| p.get(&k)).is_none()
                {
                    continue;
                }
                let child_schema = props.and_then(|p| p.get(&k)).or(additional);
                match child_schema {
                    Some(cs) => {
                        let child = map.get_mut(&k).expect("key exists");
                        if child.is_null() && cs["nullable"].as_bool() != Some(true) {
                            map.remove(&k);
                            continue;
                        }
                        if root && k == "metadata" {
                            continue;
                        }
                        prune(cs, child, &join(path, &k), false, pruned);
                    }
                    None if preserves(schema)
                        || schema["additionalProperties"].as_bool() == Some(true) => {}
                    None => {
                        map.remove(&k);
                        pruned.push(join(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(is, item, &format!("{path}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

/// OpenAPI v3 value validation (the subset CRDs commonly use).
pub fn validate_values(schema: &Value, v: &Value, path: &str, errs: &mut Vec<(String, String)>) {
    let p = if path.is_empty() {
        "<nil>".to_string()
    } else {
        path.to_string()
    };
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) && schema.get("type").is_some() {
            errs.push((
                p,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(v);
        let ok = match t {
            "number" => v.is_number(),
            other => other == actual,
        } || int_or_string && (actual == "integer" || actual == "string");
        if !ok {
            errs.push((
                p,
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {t}: {}",
                    show(v)
                ),
            ));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(show).collect();
        errs.push((
            p.clone(),
            format!(
                "Unsupported value: {}: supported values: {}",
                show(v),
                supported.join(", ")
            ),
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64() {
            let excl = schema["exclusiveMinimum"].as_bool() == Some(true);
            if n < min || excl && n == min {
                errs.push((p.clone(), format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}")));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            let excl = schema["exclusiveMaximum"].as_bool() == Some(true);
            if n > max || excl && n == max {
                errs.push((
                    p.clone(),
                    format!(
                        "Invalid value: {v}: {path} in body should be less than or equal to {max}"
                    ),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64()
            && len < min
        {
            errs.push((
                p.clone(),
                format!(
                    "Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                ),
            ));
        }
        if let Some(max) = schema["maxLength"].as_u64()
            && len > max
        {
            errs.push((
                p.clone(),
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(pattern) = schema["pattern"].as_str()
            && let Ok(re) = regex::Regex::new(pattern)
            && !re.is_match(s)
        {
            errs.push((
                p.clone(),
                format!("Invalid value: \"{s}\": {path} in body should match '{pattern}'"),
            ));
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(req) = schema["required"].as_array() {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errs.push((join(path, r), "Required value".into()));
                    }
                }
            }
            let props = schema["properties"].as_object();
            for (k, child) in map {
                if path.is_empty() && k == "metadata" {
                    continue;
                }
                let cs = props
                    .and_then(|pr| pr.get(k))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(cs) = cs {
                    validate_values(cs, child, &join(path, k), errs);
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errs.push((
                    p.clone(),
                    format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errs.push((
                    p.clone(),
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_values(is, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

thread_local! {
    // Building a validator registers every CEL extension function; do it once per thread.
    static VALIDATOR: kube_cel::Validator = kube_cel::Validator::new();
}

/// Prunes, defaults and validates a custom resource on create/update.
/// `strict` (fieldValidation=Strict) turns pruned fields into a 400, as kubectl expects.
pub fn admit(
    def: &ResourceDef,
    version: &str,
    obj: &mut Value,
    old: Option<&Value>,
    strict: bool,
) -> ApiResult<()> {
    let Some((schema, rules)) = def
        .version(version)
        .and_then(|v| v.schema.as_ref().zip(v.rules.as_ref()))
    else {
        return Ok(());
    };
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut pruned = Vec::new();
    prune(schema, obj, "", true, &mut pruned);
    if strict && !pruned.is_empty() {
        let list: Vec<String> = pruned
            .iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    *obj = kube_cel::apply_defaults(schema, obj);
    let mut errs = Vec::new();
    validate_values(schema, obj, "", &mut errs);
    if errs.is_empty() {
        let ctx = kube_cel::RootContext {
            api_version: def.api_version(version),
            api_group: def.group.clone(),
            kind: def.kind.clone(),
        };
        let result =
            VALIDATOR.with(|v| v.validate_compiled_with_context(rules, obj, old, Some(&ctx)));
        if let Err(cel_errs) = result {
            for e in cel_errs.into_vec() {
                let field = e.field_path.clone();
                let at = if field.is_empty() {
                    obj.clone()
                } else {
                    lookup(obj, &field).cloned().unwrap_or(Value::Null)
                };
                let label = if field.is_empty() {
                    "<nil>".to_string()
                } else {
                    field
                };
                errs.push((
                    label,
                    format!("Invalid value: \"{}\": {}", type_name(&at), e.message),
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&def.kind, &def.group, &name, errs))
    }
}

/// Follows a `a.b[0].c` path.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        let (key, idx) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !key.is_empty() {
            cur = cur.get(key)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prunes_unknown_but_keeps_preserved() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}, "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut v = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"}, "spec": {"a": "1", "b": 2, "free": {"z": 1}}});
        let mut pruned = Vec::new();
        prune(&schema, &mut v, "", true, &mut pruned);
        assert_eq!(pruned, vec!["spec.b".to_string()]);
        assert_eq!(v["spec"], json!({"a": "1", "free": {"z": 1}}));
        assert_eq!(v["kind"], "K");
    }

    #[test]
    fn reports_type_errors() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"n": {"type": "integer"}}}}});
        let mut errs = Vec::new();
        validate_values(&schema, &json!({"spec": {"n": "x"}}), "", &mut errs);
        assert_eq!(errs[0].0, "spec.n");
        assert!(errs[0].1.contains("must be of type integer"), "{errs:?}");
    }
}

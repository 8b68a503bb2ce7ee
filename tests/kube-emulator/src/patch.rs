//! Patch application by Content-Type: JSON merge patch (RFC 7386), JSON Patch (RFC 6902),
//! strategic merge patch (merge semantics plus the common `$` directives) and server-side
//! apply with managedFields tracking.

use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Parses a request body that may be JSON or YAML (kubectl sends JSON; people send YAML).
pub fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml::from_slice::<Value>(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902. A failed `test` (and any operation on a missing path) is 422 Invalid,
/// which kube-runtime's finalizer helper relies on to detect a concurrent change.
/// Like the API server's JSON Patch library, `test` of a missing path against `null`
/// passes (kube-runtime tests `/metadata/finalizers` for null before adding the first).
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && t.path.resolve(target).is_err()
        {
            continue;
        }
        json_patch::patch(target, std::slice::from_ref(&op)).map_err(|e| {
            ApiError::unprocessable(format!(
                "the server rejected our request due to an error in our request: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Strategic merge patch without per-field schema knowledge: maps merge; lists of objects
/// merge by `name` (or `type` for conditions) when every element carries that key, which
/// covers containers, env, ports, volumes and conditions; other lists replace.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    strategic_into(target, patch, "");
}

fn list_key(field: &str, a: &[Value], b: &[Value]) -> Option<&'static str> {
    let all_have = |k: &str| a.iter().chain(b.iter()).all(|x| x.get(k).is_some());
    if a.is_empty() && b.is_empty() {
        return None;
    }
    if field == "conditions" && all_have("type") {
        Some("type")
    } else if all_have("name") {
        Some("name")
    } else if field == "ports" && all_have("containerPort") {
        Some("containerPort")
    } else {
        None
    }
}

fn strategic_into(target: &mut Value, patch: &Value, field: &str) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut clean = p.clone();
                clean.remove("$patch");
                *target = Value::Object(clean);
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
                    if let (Some(Value::Array(items)), Some(del)) = (t.get_mut(list), v.as_array())
                    {
                        items.retain(|x| !del.contains(x));
                    }
                    continue;
                }
                if k.starts_with('$') {
                    continue; // $setElementOrder, $retainKeys: ordering/retention hints only
                }
                if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                    continue;
                }
                let entry = t.entry(k.clone()).or_insert(Value::Null);
                strategic_into(entry, v, k);
            }
        }
        Value::Array(pitems) => {
            if let Value::Array(titems) = target
                && let Some(key) = list_key(field, titems, pitems)
            {
                for pi in pitems {
                    let deleting = pi.get("$patch").and_then(Value::as_str) == Some("delete");
                    let pos = titems.iter().position(|t| t.get(key) == pi.get(key));
                    match (pos, deleting) {
                        (Some(i), true) => {
                            titems.remove(i);
                        }
                        (Some(i), false) => strategic_into(&mut titems[i], pi, ""),
                        (None, false) => {
                            let mut fresh = Value::Null;
                            strategic_into(&mut fresh, pi, "");
                            titems.push(fresh);
                        }
                        (None, true) => {}
                    }
                }
                return;
            }
            *target = patch.clone();
        }
        _ => *target = patch.clone(),
    }
}

/// A field path inside an object, e.g. `["spec", "replicas"]`. Items of keyed lists
/// appear as `k:{"name":"main"}` segments and items of sets as `v:"value"`, as in
/// `fieldsV1`.
pub type FieldPath = Vec<String>;

/// How server-side apply treats a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced whole, owned as one field.
    Atomic,
    /// Merged by these key fields; each item owned separately.
    Map(Vec<String>),
    /// Merged as a set of scalars; each value owned separately.
    Set,
}

/// Where list semantics come from: a CRD's structural schema
/// (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`), or for built-in kinds and
/// `metadata` a table of the well-known keyed lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lists<'a> {
    pub schema: Option<&'a Value>,
}

fn builtin_list_kind(field: &str) -> ListKind {
    let keys = |k: &[&str]| ListKind::Map(k.iter().map(|s| s.to_string()).collect());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "conditions" => keys(&["type"]),
        "ownerReferences" => keys(&["uid"]),
        "finalizers" => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

impl Lists<'_> {
    /// The list kind of the list at `path` (a path ending at the list field).
    pub fn kind(&self, path: &[String]) -> ListKind {
        let field = path.last().map(String::as_str).unwrap_or("");
        let Some(mut node) = self
            .schema
            .filter(|_| path.first().map(String::as_str) != Some("metadata"))
        else {
            return builtin_list_kind(field);
        };
        for seg in path {
            node = if seg.starts_with("k:") || seg.starts_with("v:") {
                &node["items"]
            } else if let Some(p) = node["properties"].get(seg) {
                p
            } else if node["additionalProperties"].is_object() {
                &node["additionalProperties"]
            } else {
                return ListKind::Atomic;
            };
        }
        match node["x-kubernetes-list-type"].as_str() {
            Some("map") => ListKind::Map(
                node["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Some("set") => ListKind::Set,
            _ => ListKind::Atomic,
        }
    }

    /// The effective kind for these items: keyed lists whose items lack a key, and sets
    /// of non-scalars, fall back to atomic.
    fn effective(&self, path: &[String], items: &[&Value]) -> ListKind {
        match self.kind(path) {
            ListKind::Map(keys)
                if !keys.is_empty()
                    && items
                        .iter()
                        .all(|i| keys.iter().all(|k| i.get(k).is_some())) =>
            {
                ListKind::Map(keys)
            }
            ListKind::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => ListKind::Set,
            _ => ListKind::Atomic,
        }
    }
}

fn item_key(item: &Value, keys: &[String]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}:{}",
                serde_json::to_string(k).unwrap_or_default(),
                item[k]
            )
        })
        .collect();
    format!("k:{{{}}}", parts.join(","))
}

fn set_key(item: &Value) -> String {
    format!("v:{item}")
}

/// Whether a path names a keyed-list item as a whole.
fn is_item(p: &FieldPath) -> bool {
    p.last().is_some_and(|s| s.starts_with("k:"))
}

/// Top-level bookkeeping fields no manager owns.
fn ignored(path: &[String]) -> bool {
    match path {
        [a] => a == "apiVersion" || a == "kind",
        [m, f] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// Leaf field paths of an object, descending into keyed lists and sets.
pub fn leaf_paths(v: &Value, lists: Lists<'_>) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>, lists: Lists<'_>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    if !ignored(path) {
                        walk(child, path, out, lists);
                    }
                    path.pop();
                }
            }
            Value::Array(items) if !items.is_empty() => {
                let refs: Vec<&Value> = items.iter().collect();
                match lists.effective(path, &refs) {
                    ListKind::Map(keys) => {
                        for item in items {
                            path.push(item_key(item, &keys));
                            // The item itself is owned too, so it goes when its owner
                            // stops applying it (fieldsV1's `.` entry).
                            out.insert(path.clone());
                            walk(item, path, out, lists);
                            path.pop();
                        }
                    }
                    ListKind::Set => {
                        for item in items {
                            path.push(set_key(item));
                            out.insert(path.clone());
                            path.pop();
                        }
                    }
                    ListKind::Atomic => {
                        out.insert(path.clone());
                    }
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    walk(v, &mut Vec::new(), &mut out, lists);
    out
}

fn find_item(items: &[Value], seg: &str) -> Option<usize> {
    items.iter().position(|i| {
        if seg.starts_with("v:") {
            set_key(i) == seg
        } else {
            // Rebuild the key from the names in the segment to compare.
            let names: Vec<String> = serde_json::from_str::<Map<String, Value>>(&seg[2..])
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            let mut sorted = names.clone();
            sorted.sort();
            item_key(i, &names) == seg || item_key(i, &sorted) == seg
        }
    })
}

pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = if p.starts_with("k:") || p.starts_with("v:") {
            let items = cur.as_array()?;
            &items[find_item(items, p)?]
        } else {
            cur.get(p)?
        };
    }
    Some(cur)
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        let next = if p.starts_with("k:") || p.starts_with("v:") {
            match cur.as_array_mut() {
                Some(items) => match find_item(items, p) {
                    Some(i) => &mut items[i],
                    None => return,
                },
                None => return,
            }
        } else {
            match cur.get_mut(p) {
                Some(n) => n,
                None => return,
            }
        };
        cur = next;
    }
    if last.starts_with("k:") || last.starts_with("v:") {
        if let Some(items) = cur.as_array_mut()
            && let Some(i) = find_item(items, last)
        {
            items.remove(i);
        }
    } else if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Encodes paths as `fieldsV1` (`{"f:spec":{"f:replicas":{}}}`).
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for seg in p {
            let name = if seg.starts_with("k:") || seg.starts_with("v:") {
                seg.clone()
            } else {
                format!("f:{seg}")
            };
            let e = cur.entry(name).or_insert_with(|| Value::Object(Map::new()));
            cur = e.as_object_mut().expect("object");
        }
        if is_item(p) {
            // `.` marks ownership of the item itself, not just its fields.
            cur.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

/// Decodes `fieldsV1` back into paths (a `.` entry owns its node itself).
pub fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        if v.get(".").is_some() && !path.is_empty() {
            out.insert(path.clone());
        }
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        k.starts_with("f:") || k.starts_with("k:") || k.starts_with("v:")
                    })
                    .collect()
            })
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(
                k.strip_prefix("f:")
                    .map(String::from)
                    .unwrap_or_else(|| k.clone()),
            );
            walk(child, path, out);
            path.pop();
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn entry_matches(e: &Value, manager: &str, operation: &str, subresource: &str) -> bool {
    e["manager"].as_str() == Some(manager)
        && e["operation"].as_str() == Some(operation)
        && e["subresource"].as_str().unwrap_or("") == subresource
}

fn make_entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    subresource: &str,
    paths: &BTreeSet<FieldPath>,
) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": crate::store::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(paths),
    });
    if !subresource.is_empty() {
        e["subresource"] = json!(subresource);
    }
    e
}

/// Server-side apply. Returns the merged object with updated `metadata.managedFields`.
///
/// Simplification (documented in the README): conflicts are raised only against
/// fields owned by *other Apply managers* whose current value differs; `force=true`
/// takes ownership instead.
#[allow(clippy::too_many_arguments)]
pub fn server_side_apply(
    current: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    subresource: &str,
    api_version: &str,
    lists: Lists<'_>,
) -> ApiResult<Value> {
    let mut managed: Vec<Value> = current["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_set = leaf_paths(applied, lists);
    let old_set = managed
        .iter()
        .find(|e| entry_matches(e, manager, "Apply", subresource))
        .map(|e| from_fields_v1(&e["fieldsV1"]))
        .unwrap_or_default();

    let mut conflicts = Vec::new();
    for e in managed
        .iter()
        .filter(|e| e["operation"] == "Apply" && !entry_matches(e, manager, "Apply", subresource))
    {
        let theirs = from_fields_v1(&e["fieldsV1"]);
        for p in new_set.intersection(&theirs).filter(|p| !is_item(p)) {
            if get_path(current, p) != get_path(applied, p) {
                conflicts.push((e["manager"].as_str().unwrap_or("").to_string(), p.join(".")));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": format!(".{f}")}))
            .collect();
        let msg = conflicts
            .iter()
            .map(|(m, f)| format!("conflict with \"{m}\": .{f}"))
            .collect::<Vec<_>>()
            .join(", ");
        let n = conflicts.len();
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {msg}",
                if n == 1 { "" } else { "s" }
            ),
        )
        .with_details(json!({"causes": causes})));
    }

    let mut result = current.clone();
    let mut patch = applied.clone();
    if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    apply_merge(&mut result, &patch, &mut Vec::new(), lists);

    // Fields this manager stopped applying go away unless someone else still owns them.
    for p in old_set.difference(&new_set) {
        let owned_by_other = managed.iter().any(|e| {
            !entry_matches(e, manager, "Apply", subresource)
                && from_fields_v1(&e["fieldsV1"]).contains(p)
        });
        if !owned_by_other {
            remove_path(&mut result, p);
        }
    }

    // Applied fields move away from other managers, except values an Apply manager
    // shares because it applied the same value (shared ownership).
    for e in managed.iter_mut() {
        if entry_matches(e, manager, "Apply", subresource) {
            continue;
        }
        let mut theirs = from_fields_v1(&e["fieldsV1"]);
        let before = theirs.len();
        theirs.retain(|p| {
            !new_set.contains(p)
                || get_path(current, p) == get_path(applied, p) && e["operation"] == "Apply"
        });
        if theirs.len() != before {
            e["fieldsV1"] = to_fields_v1(&theirs);
        }
    }
    managed.retain(|e| {
        !entry_matches(e, manager, "Apply", subresource)
            && e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty())
    });
    managed.push(make_entry(
        manager,
        "Apply",
        api_version,
        subresource,
        &new_set,
    ));
    result["metadata"]["managedFields"] = Value::Array(managed);
    Ok(result)
}

/// Records a non-apply write: the changed fields move to `manager`'s Update entry.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    lists: Lists<'_>,
) {
    let mut managed: Vec<Value> = match old {
        Some(o) => o["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        None => new["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    let new_paths = leaf_paths(new, lists);
    let changed: BTreeSet<FieldPath> = match old {
        Some(o) => {
            let old_paths = leaf_paths(o, lists);
            new_paths
                .iter()
                .filter(|p| {
                    !old_paths.contains(*p) || !is_item(p) && get_path(o, p) != get_path(new, p)
                })
                .cloned()
                .collect()
        }
        None => new_paths,
    };
    if changed.is_empty() {
        new["metadata"]["managedFields"] = Value::Array(managed);
        if new["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|a| a.is_empty())
        {
            new["metadata"]
                .as_object_mut()
                .map(|m| m.remove("managedFields"));
        }
        return;
    }
    for e in managed.iter_mut() {
        let mut theirs = from_fields_v1(&e["fieldsV1"]);
        theirs.retain(|p| !changed.contains(p));
        e["fieldsV1"] = to_fields_v1(&theirs);
    }
    let mut mine = managed
        .iter()
        .find(|e| entry_matches(e, manager, "Update", subresource))
        .map(|e| from_fields_v1(&e["fieldsV1"]))
        .unwrap_or_default();
    mine.extend(changed);
    managed.retain(|e| {
        !entry_matches(e, manager, "Update", subresource)
            && e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty())
    });
    managed.push(make_entry(
        manager,
        "Update",
        api_version,
        subresource,
        &mine,
    ));
    new["metadata"]["managedFields"] = Value::Array(managed);
}

/// The apply merge: maps merge recursively, keyed lists merge item by item, sets
/// union, atomic lists and scalars replace. (No null deletion: apply configurations
/// remove fields by omitting them.)
fn apply_merge(target: &mut Value, patch: &Value, path: &mut FieldPath, lists: Lists<'_>) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                path.push(k.clone());
                match t.get_mut(k) {
                    Some(existing)
                        if (existing.is_object() && v.is_object())
                            || (existing.is_array() && v.is_array()) =>
                    {
                        apply_merge(existing, v, path, lists)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(t), Value::Array(p)) => {
            let all: Vec<&Value> = t.iter().chain(p.iter()).collect();
            match lists.effective(path, &all) {
                ListKind::Map(keys) => {
                    for item in p {
                        let key = item_key(item, &keys);
                        path.push(key.clone());
                        match find_item(t, &key) {
                            Some(i) => apply_merge(&mut t[i], item, path, lists),
                            None => t.push(item.clone()),
                        }
                        path.pop();
                    }
                }
                ListKind::Set => {
                    for item in p {
                        if !t.contains(item) {
                            t.push(item.clone());
                        }
                    }
                }
                ListKind::Atomic => *t = p.clone(),
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Recursive map merge where lists and scalars from `patch` replace (no null deletion).
pub fn deep_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut t =
            json!({"spec": {"containers": [{"name": "a", "image": "x", "command": ["run"]}]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "a", "image": "y"}], "$setElementOrder/containers": [{"name": "a"}]}}),
        );
        assert_eq!(
            t["spec"]["containers"][0],
            json!({"name": "a", "image": "y", "command": ["run"]})
        );
    }

    #[test]
    fn apply_removes_fields_no_longer_applied_and_detects_conflicts() {
        let base = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let a1 = server_side_apply(
            &base,
            &json!({"data": {"a": "1", "b": "2"}}),
            "m1",
            false,
            "",
            "v1",
            Lists::default(),
        )
        .unwrap();
        let a2 = server_side_apply(
            &a1,
            &json!({"data": {"a": "1"}}),
            "m1",
            false,
            "",
            "v1",
            Lists::default(),
        )
        .unwrap();
        assert_eq!(a2["data"], json!({"a": "1"}));
        let err = server_side_apply(
            &a2,
            &json!({"data": {"a": "other"}}),
            "m2",
            false,
            "",
            "v1",
            Lists::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        let forced = server_side_apply(
            &a2,
            &json!({"data": {"a": "other"}}),
            "m2",
            true,
            "",
            "v1",
            Lists::default(),
        )
        .unwrap();
        assert_eq!(forced["data"]["a"], "other");
    }

    #[test]
    fn apply_merges_keyed_lists_per_item_with_per_item_ownership() {
        let base = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}});
        let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {"conditions": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            "items": {"type": "object", "properties": {"type": {"type": "string"}, "status": {"type": "string"}}}}}}}});
        let lists = Lists {
            schema: Some(&schema),
        };
        let a = server_side_apply(
            &base,
            &json!({"status": {"conditions": [{"type": "A", "status": "True"}]}}),
            "ma",
            false,
            "",
            "v1",
            lists,
        )
        .unwrap();
        let b = server_side_apply(
            &a,
            &json!({"status": {"conditions": [{"type": "B", "status": "False"}]}}),
            "mb",
            false,
            "",
            "v1",
            lists,
        )
        .unwrap();
        assert_eq!(
            b["status"]["conditions"],
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "False"}])
        );
        assert!(
            b["metadata"]["managedFields"][1]["fieldsV1"]["f:status"]["f:conditions"]
                .get("k:{\"type\":\"B\"}")
                .is_some(),
            "{}",
            b["metadata"]["managedFields"]
        );
        // ma stops applying A: only A goes.
        let c =
            server_side_apply(&b, &json!({"status": {}}), "ma", false, "", "v1", lists).unwrap();
        assert_eq!(
            c["status"]["conditions"],
            json!([{"type": "B", "status": "False"}])
        );
        // Changing B's status from ma conflicts with mb.
        let e = server_side_apply(
            &c,
            &json!({"status": {"conditions": [{"type": "B", "status": "True"}]}}),
            "ma",
            false,
            "",
            "v1",
            lists,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
    }
}

//! Discovery documents (`/version`, `/api`, `/apis`, resource lists) and the OpenAPI v3
//! documents kubectl consults for field validation support, patch types and `explain`.

use crate::resources::{Registry, ResourceDef};
use serde_json::{Map, Value, json};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-kube-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

pub fn core_versions(addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let groups = reg.groups();
    let vs = groups.get(name)?;
    let mut g = group_json(name, vs);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

fn resource_entries(d: &ResourceDef, version: &str) -> Vec<Value> {
    let mut out = vec![json!({
        "name": d.plural,
        "singularName": d.singular,
        "namespaced": d.namespaced,
        "kind": d.kind,
        "verbs": d.verbs(),
        "shortNames": d.short_names,
        "categories": d.categories,
        "storageVersionHash": "",
    })];
    if d.has_status(version) {
        out.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
    }
    if d.group.is_empty() && d.kind == "Pod" {
        out.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
    }
    out
}

pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = reg
        .defs
        .values()
        .map(|d| &**d)
        .filter(|d| d.group == group && d.version(version).is_some())
        .collect();
    if defs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = defs
        .iter()
        .flat_map(|d| resource_entries(d, version))
        .collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI v3 index. The hash changes with the registry so kubectl's cache refreshes.
pub fn openapi_v3_index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, vs) in reg.groups() {
        for v in vs {
            let p = gv_path(&g, &v);
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={:016X}", reg.generation)}));
        }
    }
    json!({"paths": paths})
}

/// Schema name Kubernetes uses: reversed group, version, kind (`dev.tally.test.v1.Widget`).
fn schema_name(d: &ResourceDef, version: &str) -> String {
    let group = if d.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        d.group.split('.').rev().collect::<Vec<_>>().join(".")
    };
    format!("{group}.{version}.{}", d.kind)
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(d: &ResourceDef, version: &str, action: &str, params: &[&str]) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", d.kind),
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": d.group, "version": version, "kind": d.kind},
    });
    if matches!(action, "post" | "put" | "patch") {
        op["requestBody"] = json!({"content": {"*/*": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(d, version))}}}});
    }
    op
}

/// One group-version's OpenAPI v3 document. Every write operation declares the
/// `fieldValidation` parameter, which is how kubectl decides to validate server-side.
/// Only CRD kinds carry full schemas (built-in kinds get an open object schema).
pub fn openapi_v3_gv(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = reg
        .defs
        .values()
        .map(|d| &**d)
        .filter(|d| d.group == group && d.version(version).is_some())
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    for d in defs {
        let base = format!("/{}", gv_path(group, version));
        let coll = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", d.plural)
        } else {
            format!("{base}/{}", d.plural)
        };
        paths.insert(coll.clone(), json!({"get": operation(d, version, "list", &[]), "post": operation(d, version, "post", &write)}));
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": operation(d, version, "get", &[]),
                "put": operation(d, version, "put", &write),
                "patch": operation(d, version, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
                "delete": operation(d, version, "delete", &[]),
            }),
        );
        if d.has_status(version) {
            paths.insert(format!("{coll}/{{name}}/status"), json!({"patch": operation(d, version, "patch", &["fieldValidation", "fieldManager"])}));
        }
        let mut schema = d
            .version(version)
            .and_then(|v| v.schema.clone())
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert("metadata".into(), json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata."}));
        }
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": d.group, "version": version, "kind": d.kind}]);
        schemas.insert(schema_name(d, version), schema);
    }
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        json!({"type": "object", "description": "ObjectMeta is metadata that all persisted resources must have.", "properties": {
            "name": {"type": "string", "description": "Name must be unique within a namespace."},
            "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Map of string keys and values."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Annotations is an unstructured key value map."},
            "uid": {"type": "string"}, "resourceVersion": {"type": "string"}, "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"}, "deletionTimestamp": {"type": "string", "format": "date-time"},
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "generateName": {"type": "string"}
        }}),
    );
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-kube-emulator"},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}

//! The registry of served resource types: built-in kinds plus those defined by CRDs.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Storage identity of a resource type: all versions of a group share one storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResKey {
    pub group: String,
    pub plural: String,
}

impl ResKey {
    pub fn new(group: &str, plural: &str) -> Self {
        ResKey {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// One printer column (`additionalPrinterColumns` of a CRD, or a built-in's column).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub json_path: String,
    pub priority: i64,
}

#[derive(Debug, Clone)]
pub struct VersionDef {
    pub name: String,
    pub served: bool,
    pub storage: bool,
    /// The structural `openAPIV3Schema` for CRD versions; built-ins carry none.
    pub schema: Option<Value>,
    /// The schema's `x-kubernetes-validations` rules, compiled once per CRD write.
    pub rules: Option<Arc<kube_cel::CompiledSchema>>,
    pub columns: Vec<Column>,
    pub status_subresource: bool,
}

#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub versions: Vec<VersionDef>,
    /// True for kinds defined by a CustomResourceDefinition.
    pub custom: bool,
}

impl ResourceDef {
    pub fn key(&self) -> ResKey {
        ResKey::new(&self.group, &self.plural)
    }

    pub fn version(&self, v: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|x| x.name == v && x.served)
    }

    pub fn api_version(&self, v: &str) -> String {
        if self.group.is_empty() {
            v.to_string()
        } else {
            format!("{}/{}", self.group, v)
        }
    }

    pub fn has_status(&self, v: &str) -> bool {
        self.version(v)
            .map(|x| x.status_subresource)
            .unwrap_or(false)
    }

    pub fn preferred_version(&self) -> &str {
        self.versions
            .iter()
            .find(|v| v.storage && v.served)
            .or_else(|| self.versions.iter().find(|v| v.served))
            .map(|v| v.name.as_str())
            .unwrap_or("v1")
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// All resource types currently served. Definitions are shared: every request looks
/// its type up here, and a CRD's schema is large.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub defs: BTreeMap<ResKey, Arc<ResourceDef>>,
    /// Bumped on every change so OpenAPI documents get a new hash (kubectl caches by it).
    pub generation: u64,
}

fn col(name: &str, type_: &str, json_path: &str) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: String::new(),
        description: String::new(),
        json_path: json_path.into(),
        priority: 0,
    }
}

struct B {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
}

impl Registry {
    /// The built-in kinds Tally and its Helm chart use.
    pub fn builtins() -> Registry {
        let list = [
            B {
                group: "",
                version: "v1",
                plural: "namespaces",
                kind: "Namespace",
                namespaced: false,
                short: &["ns"],
                status: true,
            },
            B {
                group: "",
                version: "v1",
                plural: "pods",
                kind: "Pod",
                namespaced: true,
                short: &["po"],
                status: true,
            },
            B {
                group: "",
                version: "v1",
                plural: "configmaps",
                kind: "ConfigMap",
                namespaced: true,
                short: &["cm"],
                status: false,
            },
            B {
                group: "",
                version: "v1",
                plural: "secrets",
                kind: "Secret",
                namespaced: true,
                short: &[],
                status: false,
            },
            B {
                group: "",
                version: "v1",
                plural: "serviceaccounts",
                kind: "ServiceAccount",
                namespaced: true,
                short: &["sa"],
                status: false,
            },
            B {
                group: "",
                version: "v1",
                plural: "services",
                kind: "Service",
                namespaced: true,
                short: &["svc"],
                status: true,
            },
            B {
                group: "",
                version: "v1",
                plural: "events",
                kind: "Event",
                namespaced: true,
                short: &["ev"],
                status: false,
            },
            B {
                group: "events.k8s.io",
                version: "v1",
                plural: "events",
                kind: "Event",
                namespaced: true,
                short: &["ev"],
                status: false,
            },
            B {
                group: "batch",
                version: "v1",
                plural: "jobs",
                kind: "Job",
                namespaced: true,
                short: &[],
                status: true,
            },
            B {
                group: "coordination.k8s.io",
                version: "v1",
                plural: "leases",
                kind: "Lease",
                namespaced: true,
                short: &[],
                status: false,
            },
            B {
                group: "apps",
                version: "v1",
                plural: "deployments",
                kind: "Deployment",
                namespaced: true,
                short: &["deploy"],
                status: true,
            },
            B {
                group: "rbac.authorization.k8s.io",
                version: "v1",
                plural: "roles",
                kind: "Role",
                namespaced: true,
                short: &[],
                status: false,
            },
            B {
                group: "rbac.authorization.k8s.io",
                version: "v1",
                plural: "rolebindings",
                kind: "RoleBinding",
                namespaced: true,
                short: &[],
                status: false,
            },
            B {
                group: "rbac.authorization.k8s.io",
                version: "v1",
                plural: "clusterroles",
                kind: "ClusterRole",
                namespaced: false,
                short: &[],
                status: false,
            },
            B {
                group: "rbac.authorization.k8s.io",
                version: "v1",
                plural: "clusterrolebindings",
                kind: "ClusterRoleBinding",
                namespaced: false,
                short: &[],
                status: false,
            },
            B {
                group: "apiextensions.k8s.io",
                version: "v1",
                plural: "customresourcedefinitions",
                kind: "CustomResourceDefinition",
                namespaced: false,
                short: &["crd", "crds"],
                status: true,
            },
        ];
        let mut reg = Registry::default();
        for b in list {
            let columns = builtin_columns(b.kind);
            let singular = b.kind.to_lowercase();
            let def = ResourceDef {
                group: b.group.into(),
                plural: b.plural.into(),
                singular,
                kind: b.kind.into(),
                list_kind: format!("{}List", b.kind),
                namespaced: b.namespaced,
                short_names: b.short.iter().map(|s| s.to_string()).collect(),
                categories: if matches!(b.kind, "Pod" | "Job" | "Deployment" | "Service") {
                    vec!["all".into()]
                } else {
                    vec![]
                },
                versions: vec![VersionDef {
                    name: b.version.into(),
                    served: true,
                    storage: true,
                    schema: None,
                    rules: None,
                    columns,
                    status_subresource: b.status,
                }],
                custom: false,
            };
            reg.defs.insert(def.key(), Arc::new(def));
        }
        reg
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.defs.get(&ResKey::new(group, plural))
    }

    /// Finds a served type by group, version and plural, as URLs name it.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.get(group, plural)
            .filter(|d| d.version(version).is_some())
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&Arc<ResourceDef>> {
        self.defs
            .values()
            .find(|d| d.group == group && d.kind == kind)
    }

    /// Served group → versions, the core group ("") included.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.defs.values() {
            let entry = out.entry(d.group.clone()).or_default();
            for v in d.versions.iter().filter(|v| v.served) {
                if !entry.contains(&v.name) {
                    entry.push(v.name.clone());
                }
            }
        }
        for versions in out.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// Registers (or re-registers) the type a CRD defines.
    pub fn register_crd(&mut self, crd: &Value) -> Result<ResKey, String> {
        let def = def_from_crd(crd)?;
        let key = def.key();
        self.defs.insert(key.clone(), Arc::new(def));
        self.generation += 1;
        Ok(key)
    }

    pub fn unregister(&mut self, key: &ResKey) {
        self.defs.remove(key);
        self.generation += 1;
    }
}

/// Kubernetes' version ordering: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.trim_start_matches('v');
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

fn builtin_columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            col("Ready", "string", ""),
            col("Status", "string", ".status.phase"),
            col("Restarts", "string", ""),
            col("Age", "date", ".metadata.creationTimestamp"),
        ],
        "Job" => vec![
            col("Status", "string", ""),
            col("Completions", "string", ""),
            col("Duration", "string", ""),
            col("Age", "date", ".metadata.creationTimestamp"),
        ],
        "Namespace" => vec![
            col("Status", "string", ".status.phase"),
            col("Age", "date", ".metadata.creationTimestamp"),
        ],
        // kubectl prints the CRD's creation time verbatim, not as an age.
        "CustomResourceDefinition" => {
            vec![col("Created At", "string", ".metadata.creationTimestamp")]
        }
        "Event" => vec![
            col("Type", "string", ".type"),
            col("Reason", "string", ".reason"),
            col("Object", "string", ""),
            col("Message", "string", ""),
        ],
        _ => vec![col("Age", "date", ".metadata.creationTimestamp")],
    }
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn def_from_crd(crd: &Value) -> Result<ResourceDef, String> {
    let spec = &crd["spec"];
    let group = spec["group"]
        .as_str()
        .ok_or("spec.group: Required value")?
        .to_string();
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("spec.names.plural: Required value")?
        .to_string();
    let kind = names["kind"]
        .as_str()
        .ok_or("spec.names.kind: Required value")?
        .to_string();
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        return Err(format!(
            "metadata.name: Invalid value: {}: must be spec.names.plural+\".\"+spec.group",
            crd["metadata"]["name"]
        ));
    }
    let singular = names["singular"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names["listKind"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
            ));
        }
    };
    let versions_json = spec["versions"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or(
            "spec.versions: Invalid value: must have exactly one version marked as storage version",
        )?;
    let mut versions = Vec::new();
    for v in versions_json {
        let name = v["name"]
            .as_str()
            .ok_or("spec.versions[].name: Required value")?
            .to_string();
        let schema = v["schema"]["openAPIV3Schema"].clone();
        let schema = if schema.is_null() { None } else { Some(schema) };
        let rules = schema
            .as_ref()
            .map(|s| Arc::new(kube_cel::compile_schema(s)));
        let mut columns: Vec<Column> = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| Column {
                        name: c["name"].as_str().unwrap_or_default().into(),
                        type_: c["type"].as_str().unwrap_or("string").into(),
                        format: c["format"].as_str().unwrap_or_default().into(),
                        description: c["description"].as_str().unwrap_or_default().into(),
                        json_path: c["jsonPath"].as_str().unwrap_or_default().into(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if columns.is_empty() {
            // Kubernetes shows Age for CRDs that declare no columns.
            columns.push(col("Age", "date", ".metadata.creationTimestamp"));
        }
        versions.push(VersionDef {
            name,
            served: v["served"].as_bool().unwrap_or(true),
            storage: v["storage"].as_bool().unwrap_or(false),
            schema,
            rules,
            columns,
            status_subresource: v["subresources"].get("status").is_some(),
        });
    }
    if versions.iter().filter(|v| v.storage).count() != 1 {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    Ok(ResourceDef {
        group,
        plural,
        singular,
        kind,
        list_kind,
        namespaced,
        short_names: str_list(&names["shortNames"]),
        categories: str_list(&names["categories"]),
        versions,
        custom: true,
    })
}

/// The status a CRD gets once accepted: names accepted and established at once.
pub fn crd_status(crd: &Value) -> Value {
    let now = crate::store::now();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let mut names = crd["spec"]["names"].clone();
    if names.get("singular").is_none() {
        names["singular"] = json!(names["kind"].as_str().unwrap_or_default().to_lowercase());
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!(
            "{}List",
            names["kind"].as_str().unwrap_or_default()
        ));
    }
    json!({
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
        ]
    })
}

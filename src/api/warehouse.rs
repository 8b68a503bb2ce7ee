use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration, Volume, VolumeMount};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where SQL runs, and how the Jobs that run it look.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "Warehouse",
    namespaced,
    shortname = "wh",
    category = "tally",
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.engine"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WarehouseSpec {
    pub engine: Engine,
    /// Settings of the embedded DuckDB engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duckdb: Option<DuckDbSettings>,
    /// Overrides for the Kubernetes Jobs that run this warehouse's calculations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSettings>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Engine {
    /// Embedded DuckDB, reading `files` sources or a database file.
    #[default]
    #[serde(rename = "duckdb")]
    DuckDb,
}

/// The most DuckDB threads a calculation may ask for.
pub const MAX_DUCKDB_THREADS: u32 = 256;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DuckDbSettings {
    /// A DuckDB database file whose tables `source.table` names (opened read-only).
    /// Without it, only `files` and `sql` sources are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The only directories a calculation may read files from (`files` sources, and
    /// files that `sql` sources and filters read), as absolute paths: in calculation
    /// Jobs DuckDB runs with external access off but for these, its `database` and
    /// its scratch directory, so a table cannot read the worker's credentials or a
    /// Secret mounted elsewhere. `/`, `/etc`, `/proc`, `/sys`, `/dev` and the
    /// ServiceAccount token's `/var/run/secrets` are refused. `tally run` adds the
    /// directories of the manifests' own `files` sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 1024)))]
    pub data_directories: Vec<String>,
    /// DuckDB `threads` setting for a calculation. Default: in calculation Jobs, the
    /// worker container's CPU limit in whole cores (the node's cores without one); in
    /// `tally run`, the machine's cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_DUCKDB_THREADS))]
    pub threads: Option<u32>,
    /// DuckDB `memory_limit` setting, e.g. `4GB`. Default: in calculation Jobs, 75% of
    /// the worker container's memory limit; in `tally run`, DuckDB's own (80% of the
    /// machine's memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// Where DuckDB writes what does not fit in memory. Default: in calculation Jobs,
    /// their scratch volume (an emptyDir, as the root filesystem is read-only); in
    /// `tally run`, DuckDB's own (`.tmp` in the working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_directory: Option<String>,
}

/// Pod and Job settings for calculation Jobs; unset fields take the controller's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

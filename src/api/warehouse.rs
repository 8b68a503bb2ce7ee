use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration, Volume, VolumeMount};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where SQL runs, and how the Jobs that run it look.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
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
#[x_kube(
    validation = kube::core::Rule::new("self.engine != 'postgres' || has(self.postgres)")
        .message("a Warehouse of engine postgres needs spec.postgres")
)]
pub struct WarehouseSpec {
    pub engine: Engine,
    /// Settings of the embedded DuckDB engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duckdb: Option<DuckDbSettings>,
    /// The PostgreSQL database of engine `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSettings>,
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
    /// A PostgreSQL database (`spec.postgres`), reading `table` and `sql` sources.
    #[serde(rename = "postgres")]
    Postgres,
}

/// Where a PostgreSQL warehouse is and how Tally signs in. The password is a Secret
/// reference: calculation Jobs get it from Kubernetes as an environment variable,
/// and it appears in no plan, status, Event or log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSettings {
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Default 5432.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    #[schemars(length(min = 1, max = 63))]
    pub user: String,
    /// The Secret (in the Warehouse's namespace) and key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<KeyReference>,
    /// `tally run` only: the environment variable holding the password (default
    /// `PGPASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub password_env: Option<String>,
    /// Default `prefer`: TLS when the server offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<SslMode>,
    /// The CA that signs the server's certificate, PEM, for `verify-full` (default:
    /// the system's roots; `tally run` reads `PGSSLROOTCERT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<CaCertificate>,
    /// The schema unqualified table names are looked up in (`search_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub schema: Option<String>,
    /// The longest a calculation's statement may run, e.g. `30m`; the server stops it
    /// then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<super::PositiveDuration>,
}

impl PostgresSettings {
    pub const DEFAULT_PORT: u16 = 5432;
    /// Where `tally run` reads the password when the manifest names no variable.
    pub const DEFAULT_PASSWORD_ENV: &str = "PGPASSWORD";

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(Self::DEFAULT_PORT)
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode.unwrap_or_default()
    }
}

/// A key of a Secret or ConfigMap in the Warehouse's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct KeyReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A CA certificate from a Secret or a ConfigMap: set one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)")
        .message("set exactly one of secretKeyRef or configMapKeyRef")
)]
pub struct CaCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyReference>,
}

/// As libpq's `sslmode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SslMode {
    /// Never TLS.
    #[serde(rename = "disable")]
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    #[default]
    #[serde(rename = "prefer")]
    Prefer,
    /// TLS always, without checking the server's certificate.
    #[serde(rename = "require")]
    Require,
    /// TLS always, the certificate checked against the CA and the host name.
    #[serde(rename = "verify-full")]
    VerifyFull,
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

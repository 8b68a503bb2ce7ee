//! `tally worker`: the Job entrypoint (DESIGN §4).
//!
//! Reads its plan from `TALLY_PLAN`, runs it, and writes the result as JSON to the
//! ConfigMap `<job>-result`, owned by the Job. On failure it writes a short reason to
//! the termination log and exits non-zero; the controller reads either. SIGTERM (the
//! Job being deleted on cancel) stops the warehouse query, whenever it comes. The
//! worker only creates its result: its ServiceAccount may change no ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, PostParams},
};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::engine::Cancellation;
use crate::plan::CalculationPlan;
use crate::result::{self, CalculationResult, RunError};

pub const PLAN_ENV: &str = "TALLY_PLAN";
/// The Job's name and namespace (from the downward API).
pub const JOB_NAME_ENV: &str = "TALLY_JOB_NAME";
pub const NAMESPACE_ENV: &str = "TALLY_NAMESPACE";
/// The worker container's memory limit in bytes and its CPU limit in whole cores
/// (from the downward API; the node's allocatable amounts when the container has no
/// limit), which DuckDB's `memory_limit` and `threads` follow unless the Warehouse
/// sets them.
pub const MEMORY_LIMIT_ENV: &str = "TALLY_MEMORY_LIMIT";
pub const CPU_LIMIT_ENV: &str = "TALLY_CPU_LIMIT";
/// The share of the container's memory DuckDB may use: the rest is the worker's own,
/// the allocator's slack and the result.
const DUCKDB_MEMORY_SHARE: f64 = 0.75;
/// Where to write the failure reason; Kubernetes reads `/dev/termination-log`.
pub const TERMINATION_LOG_ENV: &str = "TALLY_TERMINATION_LOG";
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// The key of the result JSON in the result ConfigMap.
pub const RESULT_KEY: &str = "result.json";
/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4000;

/// The exit code of a failure that running the Job again cannot fix (an invalid plan,
/// a missing file or column, a query the warehouse refuses): the Job's
/// `podFailurePolicy` fails the Job at once on it instead of retrying. Other failures
/// (the API server unreachable while writing the result) exit 1 and are retried.
pub const PERMANENT_FAILURE_EXIT_CODE: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("{PLAN_ENV} is not a valid plan: {0}")]
    Plan(serde_json::Error),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Runtime(String),
    #[error("the result could not be encoded: {0}")]
    Encode(serde_json::Error),
    #[error("writing the result to the cluster: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Job {0} has no uid")]
    JobWithoutUid(String),
    #[error(
        "the result is {bytes} bytes, more than its ConfigMap and the calculation's status \
         can hold ({RESULT_LIMIT} bytes){detail}: split by fewer or coarser dimensions"
    )]
    ResultTooLarge { bytes: usize, detail: String },
}

/// The largest result the worker writes: a ConfigMap holds 1 MiB, and the controller
/// copies the result into the calculation's status beside its SQL, within etcd's
/// 1.5 MiB object limit.
pub const RESULT_LIMIT: usize = 900 * 1024;

/// Refuses a result too large to store, naming the split dimension that made it so
/// (the one with the most values).
pub fn check_result_size(result: &CalculationResult, json: &str) -> Result<(), WorkerError> {
    if json.len() <= RESULT_LIMIT {
        return Ok(());
    }
    let mut values: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for bucket in &result.metric_results.metric_bucket_stats {
        for dimension in &bucket.dimensions {
            values
                .entry(dimension.dimension.as_str())
                .or_default()
                .insert(dimension.value.as_str());
        }
    }
    let detail = values
        .iter()
        .max_by_key(|(_, values)| values.len())
        .map(|(dimension, values)| {
            format!("; split dimension {dimension} has {} values", values.len())
        })
        .unwrap_or_default();
    Err(WorkerError::ResultTooLarge {
        bytes: json.len(),
        detail,
    })
}

impl WorkerError {
    /// Whether the same Job would fail the same way again.
    pub fn is_permanent(&self) -> bool {
        match self {
            // A warehouse out of reach for a moment: the Job's next Pod tries again.
            WorkerError::Run(RunError::Engine(e)) if e.is_transient() => false,
            WorkerError::MissingEnv(_)
            | WorkerError::Plan(_)
            | WorkerError::Run(_)
            | WorkerError::Encode(_)
            | WorkerError::JobWithoutUid(_)
            | WorkerError::ResultTooLarge { .. } => true,
            WorkerError::Runtime(_) | WorkerError::Kube(_) => false,
        }
    }

    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        if self.is_permanent() {
            PERMANENT_FAILURE_EXIT_CODE
        } else {
            1
        }
    }
}

pub fn result_config_map_name(job_name: &str) -> String {
    format!("{job_name}-result")
}

/// The result ConfigMap of a Job: owned by the Job and by the Job's own owner (the
/// MetricCalculation), so it outlives a Job that its TTL deletes before the
/// controller has read the result, and goes when both are gone.
pub fn result_config_map(job: &Job, result: &CalculationResult) -> Result<ConfigMap, WorkerError> {
    let owner = job
        .controller_owner_ref(&())
        .ok_or_else(|| WorkerError::JobWithoutUid(job.name_any()))?;
    let calculation = job
        .owner_references()
        .iter()
        .filter(|o| o.controller == Some(true))
        .map(|o| OwnerReference {
            controller: None,
            block_owner_deletion: None,
            ..o.clone()
        });
    let owners = std::iter::once(owner).chain(calculation).collect();
    let json = serde_json::to_string(result).map_err(WorkerError::Encode)?;
    check_result_size(result, &json)?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(result_config_map_name(&job.name_any())),
            namespace: job.namespace(),
            labels: job.metadata.labels.clone(),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(RESULT_KEY.to_string(), json)])),
        ..ConfigMap::default()
    })
}

fn env(name: &'static str) -> Result<String, WorkerError> {
    std::env::var(name).map_err(|_| WorkerError::MissingEnv(name))
}

/// How often a cancelled query is interrupted again until it stops: an engine may
/// miss an interrupt that arrives just as its statement starts.
const INTERRUPT_REPEAT: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs the plan on a blocking thread; SIGTERM, whenever it comes, stops the query.
async fn execute(
    plan: CalculationPlan,
    terminate: &mut Signal,
) -> Result<CalculationResult, WorkerError> {
    let cancellation = Cancellation::default();
    let for_query = cancellation.clone();
    let mut task = tokio::task::spawn_blocking(move || result::run(&plan, &for_query));
    let joined = tokio::select! {
        joined = &mut task => joined,
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: interrupting the warehouse query");
            loop {
                cancellation.cancel();
                tokio::select! {
                    joined = &mut task => break joined,
                    () = tokio::time::sleep(INTERRUPT_REPEAT) => {}
                }
            }
        }
    };
    let result =
        joined.map_err(|e| WorkerError::Runtime(format!("the query thread failed: {e}")))?;
    Ok(result?)
}

/// Fits DuckDB to the container it runs in: without these, DuckDB takes 80% of the
/// node's memory and a thread per node core, and the container is killed or
/// throttled. Settings the Warehouse gives are kept.
pub fn fit_to_container(
    settings: &mut crate::api::DuckDbSettings,
    memory_limit: Option<&str>,
    cpu_limit: Option<&str>,
) {
    if settings.memory_limit.is_none()
        && let Some(bytes) = memory_limit.and_then(|v| v.trim().parse::<u64>().ok())
        && bytes > 0
    {
        let mib = ((bytes as f64 * DUCKDB_MEMORY_SHARE) / (1024.0 * 1024.0)).floor() as u64;
        settings.memory_limit = Some(format!("{}MiB", mib.max(1)));
    }
    if settings.threads.is_none()
        && let Some(cores) = cpu_limit.and_then(|v| v.trim().parse::<u32>().ok())
        && cores > 0
    {
        settings.threads = Some(cores.min(crate::api::MAX_DUCKDB_THREADS));
    }
}

pub async fn run() -> Result<(), WorkerError> {
    // First of all, so that a SIGTERM in the worker's first moments (a cancel right
    // after the Pod started) is seen and stops the query before or as it starts.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| WorkerError::Runtime(format!("installing the SIGTERM handler: {e}")))?;
    let mut plan: CalculationPlan =
        serde_json::from_str(&env(PLAN_ENV)?).map_err(WorkerError::Plan)?;
    fit_to_container(
        &mut plan.engine.duckdb,
        std::env::var(MEMORY_LIMIT_ENV).ok().as_deref(),
        std::env::var(CPU_LIMIT_ENV).ok().as_deref(),
    );
    let job_name = env(JOB_NAME_ENV)?;
    let namespace = env(NAMESPACE_ENV)?;
    tracing::info!(calculation = %plan.calculation, job = %job_name, "running the calculation");
    let result = execute(plan, &mut terminate).await?;
    let client = Client::try_default().await?;
    let job = Api::<Job>::namespaced(client.clone(), &namespace)
        .get(&job_name)
        .await?;
    let config_map = result_config_map(&job, &result)?;
    let name = config_map.name_any();
    // Create only: the worker may create ConfigMaps in its namespace and change none,
    // so it cannot overwrite anyone else's. An existing result of this name is an
    // earlier attempt of this Job's (the controller reads only one the Job owns).
    match Api::<ConfigMap>::namespaced(client, &namespace)
        .create(&PostParams::default(), &config_map)
        .await
    {
        Ok(_) => tracing::info!(configmap = %name, "result written"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(configmap = %name, "the result was written before")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Writes the failure reason where Kubernetes reads the termination message.
pub fn report_failure(error: &WorkerError) {
    let path =
        std::env::var(TERMINATION_LOG_ENV).unwrap_or_else(|_| DEFAULT_TERMINATION_LOG.into());
    let mut message = error.to_string();
    if message.len() > TERMINATION_MESSAGE_LIMIT {
        let mut end = TERMINATION_MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    if let Err(e) = std::fs::write(&path, &message) {
        eprintln!("could not write the termination message to {path}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Analysis, MetricResults};
    use crate::plan::PlanTimes;

    /// A result of these buckets, at the epoch.
    fn result_with(metric_bucket_stats: Vec<crate::api::MetricBucketStats>) -> CalculationResult {
        let t = jiff::Timestamp::UNIX_EPOCH;
        CalculationResult {
            times: PlanTimes {
                exposure_start: t,
                exposure_end: t,
                fact_start: t,
                fact_end: t,
            }
            .to_status(),
            metric_results: MetricResults {
                metric_bucket_stats,
            },
            analysis: Analysis::default(),
        }
    }

    #[test]
    fn the_result_config_map_is_owned_by_the_job_and_its_calculation() {
        let job = Job {
            metadata: ObjectMeta {
                name: Some("calc-1".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-1".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "tally.dev/v1alpha1".into(),
                    kind: "MetricCalculation".into(),
                    name: "calc".into(),
                    uid: "calc-uid".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                labels: Some(BTreeMap::from([(
                    "tally.dev/calculation".into(),
                    "calc".into(),
                )])),
                ..ObjectMeta::default()
            },
            ..Job::default()
        };
        let result = result_with(Vec::new());
        let cm = result_config_map(&job, &result).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("calc-1-result"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns"));
        let owners = cm.metadata.owner_references.unwrap();
        let summary: Vec<_> = owners
            .iter()
            .map(|o| (o.kind.as_str(), o.uid.as_str(), o.controller))
            .collect();
        // One controller (the Job); the calculation keeps it after the Job's TTL.
        assert_eq!(
            summary,
            [
                ("Job", "uid-1", Some(true)),
                ("MetricCalculation", "calc-uid", None)
            ]
        );
        assert_eq!(owners[1].block_owner_deletion, None);
        let back: CalculationResult = serde_json::from_str(&cm.data.unwrap()[RESULT_KEY]).unwrap();
        assert_eq!(back, result);

        let mut no_uid = job.clone();
        no_uid.metadata.uid = None;
        assert!(matches!(
            result_config_map(&no_uid, &result),
            Err(WorkerError::JobWithoutUid(_))
        ));
    }

    #[test]
    fn an_unreachable_warehouse_is_retried_and_a_refused_query_is_not() {
        use crate::engine::EngineError;
        let unreachable = WorkerError::Run(RunError::Engine(EngineError::Unreachable {
            resource: "Warehouse/pg".into(),
            field: "spec.postgres.host".into(),
            message: "could not connect to db:5432: connection refused".into(),
        }));
        assert!(!unreachable.is_permanent());
        assert_eq!(unreachable.exit_code(), 1);
        assert_eq!(
            unreachable.to_string(),
            "Warehouse/pg: spec.postgres.host: could not connect to db:5432: connection refused"
        );
        let missing_table = WorkerError::Run(RunError::Engine(EngineError::Source {
            resource: "FactTable/purchases".into(),
            field: "spec.source.table".into(),
            message: "relation \"checkout.purchases\" does not exist".into(),
        }));
        assert!(missing_table.is_permanent());
    }

    #[test]
    fn a_result_too_large_to_store_names_the_dimension_with_the_most_values() {
        use crate::api::{DimensionValue, MetricBucketStats, SummaryStats};
        let bucket = |country: usize| MetricBucketStats {
            variant: "control".into(),
            dimensions: vec![
                DimensionValue {
                    dimension: "platform".into(),
                    value: "ios".into(),
                },
                DimensionValue {
                    dimension: "user".into(),
                    value: format!("user-{country}"),
                },
            ],
            summary_stats: SummaryStats::default(),
        };
        let result = |buckets: usize| result_with((0..buckets).map(bucket).collect());
        let small = result(100);
        let json = serde_json::to_string(&small).unwrap();
        assert!(check_result_size(&small, &json).is_ok());
        let large = result(50_000);
        let json = serde_json::to_string(&large).unwrap();
        let error = check_result_size(&large, &json).unwrap_err();
        assert!(error.is_permanent());
        let message = error.to_string();
        assert!(
            message.contains("split dimension user has 50000 values"),
            "{message}"
        );
    }

    #[test]
    fn duckdb_fits_the_container_unless_the_warehouse_says_otherwise() {
        use crate::api::DuckDbSettings;
        let mut settings = DuckDbSettings::default();
        // 2 GiB and 3 cores (the downward API gives bytes and whole cores).
        fit_to_container(&mut settings, Some("2147483648"), Some("3"));
        assert_eq!(settings.memory_limit.as_deref(), Some("1536MiB"));
        assert_eq!(settings.threads, Some(3));

        let mut own = DuckDbSettings {
            memory_limit: Some("4GB".into()),
            threads: Some(8),
            ..DuckDbSettings::default()
        };
        fit_to_container(&mut own, Some("2147483648"), Some("3"));
        assert_eq!(own.memory_limit.as_deref(), Some("4GB"));
        assert_eq!(own.threads, Some(8));

        // Outside a Job (no variables) or with nonsense, DuckDB's own defaults.
        let mut bare = DuckDbSettings::default();
        fit_to_container(&mut bare, None, Some("lots"));
        assert_eq!(bare.memory_limit, None);
        assert_eq!(bare.threads, None);
        // A huge node without a limit: the CRD's maximum.
        fit_to_container(&mut bare, None, Some("100000"));
        assert_eq!(bare.threads, Some(crate::api::MAX_DUCKDB_THREADS));
    }
}

//! `tally worker`: the Job entrypoint (DESIGN §4).
//!
//! Reads its plan from `TALLY_PLAN`, runs it, and writes the result as JSON to the
//! ConfigMap `<job>-result`, owned by the Job. On failure it writes a short reason to
//! the ConfigMap `<job>-failure` and the termination log, and exits non-zero; the
//! controller reads either ConfigMap (`job_contract`). SIGTERM (the Job being deleted
//! on cancel) stops the warehouse query, whenever it comes. The worker only creates
//! ConfigMaps: its ServiceAccount may change none.

use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use kube::{Api, Client, ResourceExt, api::PostParams};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::engine::Cancellation;
use crate::execute::{self, RunError};
use crate::job_contract::{
    CPU_LIMIT_ENV, CalculationResult, ContractError, DEFAULT_TERMINATION_LOG,
    FAILURE_MESSAGE_LIMIT, JOB_NAME_ENV, MEMORY_LIMIT_ENV, NAMESPACE_ENV,
    PERMANENT_FAILURE_EXIT_CODE, PLAN_ENV, TERMINATION_LOG_ENV, failure_config_map,
    result_config_map, truncated,
};
use crate::plan::CalculationPlan;

/// The share of the container's memory DuckDB may use: the rest is the worker's own,
/// the allocator's slack and the result.
const DUCKDB_MEMORY_SHARE: f64 = 0.75;
/// How long a failing worker tries to report its reason to the API server: the Pod's
/// grace period after a cancel is 30 seconds.
const FAILURE_REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("writing the result to the cluster: {0}")]
    Kube(#[from] kube::Error),
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
            | WorkerError::Contract(_) => true,
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
    let mut task = tokio::task::spawn_blocking(move || execute::run(&plan, &for_query));
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
    if create_once(client, &namespace, &config_map).await? {
        tracing::info!(configmap = %name, "result written");
    } else {
        tracing::info!(configmap = %name, "the result was written before");
    }
    Ok(())
}

/// Creates `config_map` unless one of its name exists; whether it did. Create only:
/// the worker may create ConfigMaps in its namespace and change none, so it cannot
/// overwrite anyone else's. An existing one of this name is an earlier attempt's of
/// this Job (the controller reads only one the Job owns).
async fn create_once(
    client: Client,
    namespace: &str,
    config_map: &ConfigMap,
) -> Result<bool, kube::Error> {
    match Api::<ConfigMap>::namespaced(client, namespace)
        .create(&PostParams::default(), config_map)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reports why the worker failed: in the termination log (what `kubectl describe`
/// shows) and in the Job's failure ConfigMap, which the controller reads. The
/// ConfigMap is best effort: a worker that cannot reach the API server leaves the
/// controller the Job's own failure reason.
pub async fn report_failure(error: &WorkerError) {
    let message = error.to_string();
    let message = truncated(&message, FAILURE_MESSAGE_LIMIT);
    let path =
        std::env::var(TERMINATION_LOG_ENV).unwrap_or_else(|_| DEFAULT_TERMINATION_LOG.into());
    if let Err(e) = std::fs::write(&path, message) {
        eprintln!("could not write the termination message to {path}: {e}");
    }
    let (Ok(job_name), Ok(namespace)) = (env(JOB_NAME_ENV), env(NAMESPACE_ENV)) else {
        return;
    };
    match tokio::time::timeout(
        FAILURE_REPORT_TIMEOUT,
        write_failure(&job_name, &namespace, message),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not report the failure to the cluster: {e}"),
        Err(_) => eprintln!("could not report the failure to the cluster in time"),
    }
}

/// Creates the Job's failure ConfigMap; one an earlier attempt wrote is kept.
async fn write_failure(job_name: &str, namespace: &str, message: &str) -> Result<(), WorkerError> {
    let client = Client::try_default().await?;
    let job = Api::<Job>::namespaced(client.clone(), namespace)
        .get(job_name)
        .await?;
    create_once(client, namespace, &failure_config_map(&job, message)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

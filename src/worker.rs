//! `tally worker`: the Job entrypoint (DESIGN §4).
//!
//! Reads its plan from `TALLY_PLAN`, runs it, and writes the result as JSON to the
//! ConfigMap `<job>-result`, owned by the Job. On failure it writes a short reason to
//! the termination log and exits non-zero; the controller reads either. SIGTERM (the
//! Job being deleted on cancel) interrupts the running warehouse query.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
};

use crate::engine::Interrupt;
use crate::plan::CalculationPlan;
use crate::result::{self, CalculationResult, RunError};

pub const PLAN_ENV: &str = "TALLY_PLAN";
/// The Job's name and namespace (from the downward API).
pub const JOB_NAME_ENV: &str = "TALLY_JOB_NAME";
pub const NAMESPACE_ENV: &str = "TALLY_NAMESPACE";
/// Where to write the failure reason; Kubernetes reads `/dev/termination-log`.
pub const TERMINATION_LOG_ENV: &str = "TALLY_TERMINATION_LOG";
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// The key of the result JSON in the result ConfigMap.
pub const RESULT_KEY: &str = "result.json";
const FIELD_MANAGER: &str = "tally-worker";
/// Kubernetes keeps at most 4096 bytes of a termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4000;

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

/// Runs the plan on a blocking thread; SIGTERM interrupts the query.
async fn execute(plan: CalculationPlan) -> Result<CalculationResult, WorkerError> {
    // Installed before the query starts, so no SIGTERM goes unanswered.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| WorkerError::Runtime(format!("installing the SIGTERM handler: {e}")))?;
    let interrupt: Arc<Mutex<Option<Box<dyn Interrupt>>>> = Arc::default();
    let slot = interrupt.clone();
    let mut task = tokio::task::spawn_blocking(move || {
        result::run(&plan, |handle| {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(handle);
            }
        })
    });
    let joined = tokio::select! {
        joined = &mut task => joined,
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: interrupting the warehouse query");
            if let Ok(slot) = interrupt.lock() && let Some(handle) = slot.as_ref() {
                handle.interrupt();
            }
            task.await
        }
    };
    let result =
        joined.map_err(|e| WorkerError::Runtime(format!("the query thread failed: {e}")))?;
    Ok(result?)
}

pub async fn run() -> Result<(), WorkerError> {
    let plan: CalculationPlan = serde_json::from_str(&env(PLAN_ENV)?).map_err(WorkerError::Plan)?;
    let job_name = env(JOB_NAME_ENV)?;
    let namespace = env(NAMESPACE_ENV)?;
    tracing::info!(calculation = %plan.calculation, job = %job_name, "running the calculation");
    let result = execute(plan).await?;
    let client = Client::try_default().await?;
    let job = Api::<Job>::namespaced(client.clone(), &namespace)
        .get(&job_name)
        .await?;
    let config_map = result_config_map(&job, &result)?;
    let name = config_map.name_any();
    Api::<ConfigMap>::namespaced(client, &namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&config_map),
        )
        .await?;
    tracing::info!(configmap = %name, "result written");
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
        let t = jiff::Timestamp::UNIX_EPOCH;
        let result = CalculationResult {
            times: PlanTimes {
                exposure_start: t,
                exposure_end: t,
                fact_start: t,
                fact_end: t,
            }
            .to_status(),
            metric_results: MetricResults::default(),
            analysis: Analysis::default(),
        };
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
}

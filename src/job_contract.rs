//! What the controller and the worker share about a calculation Job (DESIGN §4): the
//! environment the controller gives the worker, the ConfigMaps the worker writes back
//! (its result, or why it failed) and the result's type, with how each is written and
//! read.
//!
//! Pure, and a leaf: it imports only the API types. The controller reaches the worker
//! through this module alone and never imports the engine or the worker.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::{batch::v1::Job, core::v1::ConfigMap};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::api::{
    Analysis, CalculationState, CalculationTimes, MetricCalculationStatus, MetricResults,
};

/// The calculation's plan, as JSON.
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
/// Where to write the failure reason; Kubernetes reads `/dev/termination-log`.
pub const TERMINATION_LOG_ENV: &str = "TALLY_TERMINATION_LOG";
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";
/// A PostgreSQL Warehouse's password, from its Secret (`secretKeyRef`: the value is
/// never in the Job spec).
pub const POSTGRES_PASSWORD_ENV: &str = "TALLY_POSTGRES_PASSWORD";
/// The PEM CA certificate that `sslMode: verify-full` checks the server against.
pub const POSTGRES_CA_ENV: &str = "TALLY_POSTGRES_CA";

/// The key of the result JSON in the result ConfigMap.
pub const RESULT_KEY: &str = "result.json";
/// The key of the reason in the failure ConfigMap.
pub const FAILURE_KEY: &str = "message";

/// The exit code of a failure that running the Job again cannot fix (an invalid plan,
/// a missing file or column, a query the warehouse refuses): the Job's
/// `podFailurePolicy` fails the Job at once on it instead of retrying. Other failures
/// (the API server unreachable while writing the result) exit 1 and are retried.
pub const PERMANENT_FAILURE_EXIT_CODE: u8 = 3;

/// The largest result the worker writes: a ConfigMap holds 1 MiB, and the controller
/// copies the result into the calculation's status beside its SQL, within etcd's
/// 1.5 MiB object limit.
pub const RESULT_LIMIT: usize = 900 * 1024;

/// The longest failure reason kept: what Kubernetes keeps of a termination message
/// (4096 bytes), with room to spare.
pub const FAILURE_MESSAGE_LIMIT: usize = 4000;

/// What a finished calculation produced; the worker's output, the controller's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalculationResult {
    pub times: CalculationTimes,
    pub metric_results: MetricResults,
    pub analysis: Analysis,
}

/// Records a completed run in `status`.
pub fn complete(
    status: &mut MetricCalculationStatus,
    sql: Option<String>,
    result: CalculationResult,
    completed: Timestamp,
) {
    status.state = Some(CalculationState::Completed);
    status.times = Some(result.times);
    status.sql = sql;
    status.metric_results = Some(result.metric_results);
    status.analysis = Some(result.analysis);
    status.completion_time = Some(Time(completed));
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("the result could not be encoded: {0}")]
    Encode(serde_json::Error),
    #[error("the Job {0} has no uid")]
    JobWithoutUid(String),
    #[error(
        "the result is {bytes} bytes, more than its ConfigMap and the calculation's status \
         can hold ({RESULT_LIMIT} bytes){detail}: split by fewer or coarser dimensions"
    )]
    ResultTooLarge { bytes: usize, detail: String },
}

pub fn result_config_map_name(job_name: &str) -> String {
    format!("{job_name}-result")
}

pub fn failure_config_map_name(job_name: &str) -> String {
    format!("{job_name}-failure")
}

/// Refuses a result too large to store, naming the split dimension that made it so
/// (the one with the most values).
pub fn check_result_size(result: &CalculationResult, json: &str) -> Result<(), ContractError> {
    if json.len() <= RESULT_LIMIT {
        return Ok(());
    }
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
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
    Err(ContractError::ResultTooLarge {
        bytes: json.len(),
        detail,
    })
}

/// A ConfigMap of `job` named `name` holding `key: value`: owned by the Job and by the
/// Job's own owner (the MetricCalculation), so it outlives a Job that its TTL deletes
/// before the controller has read it, and goes when both are gone.
fn job_config_map(
    job: &Job,
    name: String,
    key: &str,
    value: String,
) -> Result<ConfigMap, ContractError> {
    let owner = job
        .controller_owner_ref(&())
        .ok_or_else(|| ContractError::JobWithoutUid(job.name_any()))?;
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
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: job.namespace(),
            labels: job.metadata.labels.clone(),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), value)])),
        ..ConfigMap::default()
    })
}

/// The result ConfigMap of a Job (see [`job_config_map`] for its owners).
pub fn result_config_map(
    job: &Job,
    result: &CalculationResult,
) -> Result<ConfigMap, ContractError> {
    let json = serde_json::to_string(result).map_err(ContractError::Encode)?;
    check_result_size(result, &json)?;
    job_config_map(
        job,
        result_config_map_name(&job.name_any()),
        RESULT_KEY,
        json,
    )
}

/// `message` cut to at most `limit` bytes, on a character boundary.
pub fn truncated(message: &str, limit: usize) -> &str {
    if message.len() <= limit {
        return message;
    }
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// The failure ConfigMap of a Job: why its worker failed, read by the controller when
/// the Job fails (so it needs no right to read Pods for their termination messages).
pub fn failure_config_map(job: &Job, message: &str) -> Result<ConfigMap, ContractError> {
    job_config_map(
        job,
        failure_config_map_name(&job.name_any()),
        FAILURE_KEY,
        truncated(message, FAILURE_MESSAGE_LIMIT).to_string(),
    )
}

/// Whether the object with `uid` is among `object`'s owners.
pub fn owned_by(object: &impl Resource, uid: &str) -> bool {
    object.owner_references().iter().any(|r| r.uid == uid)
}

/// The result in a result ConfigMap of the Job `job`, or why it cannot be read.
pub fn read_result(config_map: ConfigMap, job: &str) -> Result<CalculationResult, String> {
    match config_map.data.and_then(|mut d| d.remove(RESULT_KEY)) {
        Some(json) => serde_json::from_str::<CalculationResult>(&json)
            .map_err(|e| format!("the worker's result could not be read: {e}")),
        None => Err(format!(
            "the result ConfigMap of the Job {job} holds no result"
        )),
    }
}

/// The reason in a failure ConfigMap, if it holds one.
pub fn read_failure(config_map: ConfigMap) -> Option<String> {
    config_map
        .data
        .and_then(|mut d| d.remove(FAILURE_KEY))
        .filter(|m| !m.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanTimes;

    /// A result of these buckets, at the epoch.
    pub(crate) fn result_with(
        metric_bucket_stats: Vec<crate::api::MetricBucketStats>,
    ) -> CalculationResult {
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

    fn job() -> Job {
        Job {
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
        }
    }

    #[test]
    fn the_result_config_map_is_owned_by_the_job_and_its_calculation() {
        let job = job();
        let result = result_with(Vec::new());
        let cm = result_config_map(&job, &result).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("calc-1-result"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("ns"));
        let owners = cm.metadata.owner_references.clone().unwrap();
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
        let back: CalculationResult =
            serde_json::from_str(&cm.data.clone().unwrap()[RESULT_KEY]).unwrap();
        assert_eq!(back, result);
        assert_eq!(read_result(cm, "calc-1"), Ok(result.clone()));

        let mut no_uid = job.clone();
        no_uid.metadata.uid = None;
        assert!(matches!(
            result_config_map(&no_uid, &result),
            Err(ContractError::JobWithoutUid(_))
        ));
    }

    #[test]
    fn the_failure_config_map_carries_a_bounded_reason_the_controller_reads_back() {
        let job = job();
        let cm = failure_config_map(&job, "FactTable/purchases: no file matches").unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("calc-1-failure"));
        assert!(owned_by(&cm, "uid-1") && owned_by(&cm, "calc-uid"));
        assert_eq!(
            read_failure(cm).as_deref(),
            Some("FactTable/purchases: no file matches")
        );

        let long = "é".repeat(FAILURE_MESSAGE_LIMIT);
        let message = read_failure(failure_config_map(&job, &long).unwrap()).unwrap();
        assert!(message.len() <= FAILURE_MESSAGE_LIMIT && long.starts_with(&message));
        assert_eq!(read_failure(ConfigMap::default()), None);
    }

    #[test]
    fn a_result_config_map_without_a_readable_result_says_so() {
        let empty = ConfigMap::default();
        assert_eq!(
            read_result(empty, "calc-1"),
            Err("the result ConfigMap of the Job calc-1 holds no result".into())
        );
        let garbled = ConfigMap {
            data: Some(BTreeMap::from([(RESULT_KEY.into(), "{".into())])),
            ..ConfigMap::default()
        };
        let error = read_result(garbled, "calc-1").unwrap_err();
        assert!(
            error.starts_with("the worker's result could not be read"),
            "{error}"
        );
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
        let message = error.to_string();
        assert!(crate::worker::WorkerError::from(error).is_permanent());
        assert!(
            message.contains("split dimension user has 50000 values"),
            "{message}"
        );
    }
}

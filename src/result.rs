//! From a plan's rows to the calculation's result, as it appears in status (pure).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::{
    Analysis, CalculationState, CalculationTimes, MetricCalculationStatus, MetricResults,
};
use crate::engine::QueryResult;
use crate::plan::{CalculationPlan, RowError, read_buckets};
use crate::stats::{AnalysisInput, analyse, summarise};

/// What a finished calculation produced; the worker's output, the controller's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalculationResult {
    pub times: CalculationTimes,
    pub metric_results: MetricResults,
    pub analysis: Analysis,
}

pub fn calculation_result(
    plan: &CalculationPlan,
    query: &QueryResult,
) -> Result<CalculationResult, RowError> {
    let (buckets, multiple_variant_entities) =
        read_buckets(&plan.layout, &query.columns, &query.rows)?;
    Ok(CalculationResult {
        times: plan.times.to_status(),
        metric_results: MetricResults {
            metric_bucket_stats: buckets.iter().map(summarise).collect(),
        },
        analysis: analyse(&AnalysisInput {
            buckets: &buckets,
            control: &plan.control,
            expected_variants: &plan.exposure_groups,
            multiple_variant_entities,
        }),
    })
}

/// The status of a completed calculation.
pub fn completed_status(
    plan: &CalculationPlan,
    result: CalculationResult,
    started: Timestamp,
    completed: Timestamp,
) -> MetricCalculationStatus {
    MetricCalculationStatus {
        state: Some(CalculationState::Completed),
        times: Some(result.times),
        sql: Some(plan.sql.clone()),
        metric_results: Some(result.metric_results),
        analysis: Some(result.analysis),
        start_time: Some(Time(started)),
        completion_time: Some(Time(completed)),
        ..MetricCalculationStatus::default()
    }
}

//! From a plan to the calculation's result, as it appears in status: [`run`] executes
//! a plan on its engine; the rest is pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::{
    Analysis, CalculationState, CalculationTimes, MetricCalculationStatus, MetricResults,
};
use crate::engine::{self, Cancellation, EngineError, QueryResult};
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

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("reading the result: {0}")]
    Rows(#[from] RowError),
}

/// Runs a plan on its engine and summarises the rows; `cancellation` stops it.
pub fn run(
    plan: &CalculationPlan,
    cancellation: &Cancellation,
) -> Result<CalculationResult, RunError> {
    let query = engine::run(plan, cancellation)?;
    Ok(calculation_result(plan, &query)?)
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

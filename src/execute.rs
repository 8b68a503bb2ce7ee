//! From a plan to the calculation's result: [`run`] executes a plan on its engine and
//! summarises the rows. Used by the worker and `tally run`, never by the controller.

use crate::api::MetricResults;
use crate::engine::{self, Cancellation, EngineError, QueryResult};
use crate::job_contract::CalculationResult;
use crate::plan::{CalculationPlan, RowError, read_buckets};
use crate::stats::{AnalysisInput, analyse, summarise};

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

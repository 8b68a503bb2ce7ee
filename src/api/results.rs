//! Result fields of a MetricCalculation's status. Names follow Confidence's
//! metric-calculation API exactly, so tools written against it read Tally's status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The time ranges a calculation covered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CalculationTimes {
    pub exposure_start_time: Time,
    pub exposure_end_time: Time,
    pub fact_start_time: Time,
    pub fact_end_time: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResults {
    pub metric_bucket_stats: Vec<MetricBucketStats>,
}

/// Summary statistics of one variant, overall (`dimensions: []`) or for one value of
/// a split dimension.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricBucketStats {
    pub variant: String,
    pub dimensions: Vec<DimensionValue>,
    pub summary_stats: SummaryStats,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DimensionValue {
    pub dimension: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_summary_stats: Option<AverageSummaryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_summary_stats: Option<RatioSummaryStats>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AverageSummaryStats {
    pub count: i64,
    pub count_missing: i64,
    pub count_missing_rows: i64,
    pub sum: f64,
    pub sum_of_squares: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Sample variance (n − 1); absent below two entities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_reduction_stats: Option<AverageVarianceReductionStats>,
}

/// Pre-exposure value x against the post value y, over entities with both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AverageVarianceReductionStats {
    pub count: i64,
    pub count_missing: i64,
    pub count_missing_rows: i64,
    pub post_count: i64,
    pub sum: f64,
    pub post_sum: f64,
    pub sum_of_squares: f64,
    pub sum_of_products: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariance: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatioSummaryStats {
    pub count: i64,
    pub count_missing: i64,
    pub count_missing_rows: i64,
    pub numerator_sum: f64,
    pub numerator_sum_of_squares: f64,
    pub denominator_sum: f64,
    pub denominator_sum_of_squares: f64,
    pub sum_of_products: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_variance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_variance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_denominator_covariance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_reduction_stats: Option<RatioVarianceReductionStats>,
}

/// Pre-exposure numerator a and denominator b against the post values y and d.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatioVarianceReductionStats {
    pub count: i64,
    pub count_missing: i64,
    pub count_missing_rows: i64,
    pub numerator_sum: f64,
    pub post_numerator_sum: f64,
    pub denominator_sum: f64,
    pub post_denominator_sum: f64,
    pub numerator_sum_of_squares: f64,
    pub denominator_sum_of_squares: f64,
    pub sum_of_products: f64,
    pub numerator_numerator_sum_of_products: f64,
    pub numerator_denominator_sum_of_products: f64,
    pub denominator_numerator_sum_of_products: f64,
    pub denominator_denominator_sum_of_products: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_variance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator_variance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator_denominator_covariance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_numerator_post_numerator_covariance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_numerator_post_denominator_covariance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_denominator_post_numerator_covariance: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_denominator_post_denominator_covariance: Option<f64>,
}

/// Effects of each treatment against control, on the overall buckets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub comparisons: Vec<Comparison>,
    /// Entities seen in more than one variant; they are excluded from every result.
    pub multiple_variant_entities: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio_mismatch: Option<SampleRatioMismatch>,
    /// Exposed entities (every variant) with no value of the metric before null
    /// handling. When it is every one of them, the fact tables matched no rows in
    /// anyone's window and the figures are zeros that say nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub entities_without_value: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

impl Analysis {
    /// What to tell the reader when no exposed entity has a value of the metric.
    pub fn no_values_warning(&self) -> Option<String> {
        let exposed: i64 = self
            .sample_ratio_mismatch
            .as_ref()
            .map_or(0, |srm| srm.counts.values().sum());
        (exposed > 0 && self.entities_without_value >= exposed).then(|| {
            format!(
                "none of the {exposed} exposed entities has a value of the metric: its fact \
                 tables matched no rows in their windows (check the FactTable's source, time \
                 column and delivery, the metric's filter and window, and endTime)"
            )
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub variant: String,
    pub control: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute: Option<Effect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<Effect>,
    /// The CUPED coefficient, when variance reduction is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theta: Option<f64>,
}

/// A difference with its standard error, 95% confidence interval and two-sided
/// p-value (z-test). Figures that are undefined (no variance) are absent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Effect {
    pub difference: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_lower: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_upper: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// Chi-square test of the entity counts per variant against an equal split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SampleRatioMismatch {
    pub counts: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

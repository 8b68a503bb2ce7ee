use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, PositiveDuration};

/// What to measure per entity, and how to summarise it per variant.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "Metric",
    namespaced,
    shortname = "met",
    category = "tally",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.type != 'Average' || (has(self.average) && !has(self.ratio))")
        .message("a metric of type Average needs spec.average and no spec.ratio"),
    validation = kube::core::Rule::new("self.type != 'Ratio' || (has(self.ratio) && !has(self.average))")
        .message("a metric of type Ratio needs spec.ratio and no spec.average")
)]
pub struct MetricSpec {
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    /// For `type: Average`: the mean over entities of one per-entity value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<AverageMetric>,
    /// For `type: Ratio`: sum of a numerator over sum of a denominator, per entity values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioMetric>,
    /// Which facts count, relative to each entity's first exposure. No window: every
    /// fact from the first exposure to the calculation's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// CUPED: adjust for each entity's value before its exposure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_reduction: Option<VarianceReduction>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MetricType {
    Average,
    Ratio,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AverageMetric {
    pub measurement: MetricMeasurement,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RatioMetric {
    pub numerator: MetricMeasurement,
    pub denominator: MetricMeasurement,
}

/// One per-entity value: an aggregation of a fact table's measurement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.aggregation == 'Count' || has(self.measurement)")
        .message("measurement is required unless aggregation is Count (which then counts rows)")
)]
pub struct MetricMeasurement {
    /// The FactTable to read.
    pub fact_table: String,
    /// A measurement name declared by the fact table. Optional for `Count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    pub aggregation: Aggregation,
    /// A SQL predicate on the fact table's rows, e.g. `items >= 3`. It applies before
    /// aggregation, in the pre-exposure window too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Clamps the per-entity value (winsorising).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<Cap>,
    /// Turns the per-entity value into 1 or 0 (a conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    /// Entities with no value count as 0. Defaults to true for Sum, Count and
    /// CountDistinct; for the others such entities are left out (and counted in
    /// `countMissing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_missing_with_zero: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Aggregation {
    Sum,
    Count,
    CountDistinct,
    Mean,
    Max,
    Min,
}

impl Aggregation {
    /// Whether an entity with no value counts as zero by default.
    pub fn missing_is_zero_by_default(self) -> bool {
        matches!(self, Self::Sum | Self::Count | Self::CountDistinct)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("has(self.min) || has(self.max)")
        .message("a cap needs min, max or both"),
    validation = kube::core::Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max")
        .message("cap.min must not exceed cap.max")
)]
pub struct Cap {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    pub operator: ThresholdOperator,
    pub value: f64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ThresholdOperator {
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual,
    Equal,
}

impl ThresholdOperator {
    pub fn sql(self) -> &'static str {
        match self {
            Self::GreaterThan => ">",
            Self::GreaterThanOrEqual => ">=",
            Self::LessThan => "<",
            Self::LessThanOrEqual => "<=",
            Self::Equal => "=",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Facts count from first exposure + offset (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Duration>,
    /// Facts count until first exposure + offset + length. An entity counts only once
    /// its whole window lies before the calculation's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<PositiveDuration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VarianceReduction {
    /// How far before each entity's first exposure its pre-exposure value is measured.
    pub pre_exposure_window: PositiveDuration,
}

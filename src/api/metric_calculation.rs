use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Analysis, CalculationTimes, MetricResults};

/// One calculation of a metric over an experiment's exposures.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "MetricCalculation",
    namespaced,
    status = "MetricCalculationStatus",
    shortname = "mc",
    category = "tally",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Metric","type":"string","jsonPath":".spec.metric"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.endTime > self.startTime")
        .message("endTime must be after startTime"),
    validation = kube::core::Rule::new("!has(self.exposureEndTime) || (self.exposureEndTime > self.startTime && self.exposureEndTime <= self.endTime)")
        .message("exposureEndTime must be after startTime and not after endTime"),
    validation = kube::core::Rule::new("!has(self.exposureGroups) || size(self.exposureGroups) == 0 || (has(self.analysis) && has(self.analysis.control) ? self.analysis.control : 'control') in self.exposureGroups")
        .message("exposureGroups must contain the control variant (analysis.control, default control)")
)]
pub struct MetricCalculationSpec {
    #[serde(flatten)]
    pub calculation: CalculationTemplate,
    /// Exposures from this time count.
    pub start_time: Time,
    /// Facts before this time count; also the end of exposures unless
    /// `exposureEndTime` is set.
    pub end_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure_end_time: Option<Time>,
}

/// What a calculation computes, without its times: shared by one-off calculations and
/// the template of a schedule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CalculationTemplate {
    /// The Metric to compute.
    pub metric: String,
    /// The ExposureTable with the experiment's assignments.
    pub exposure_table: String,
    /// The Warehouse to run on; default: the exposure table's, else embedded DuckDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    /// Also report results per value of these dimensions (at most 8: each adds a
    /// grouping set, and every combination of values a bucket).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub split_dimensions: Vec<SplitDimension>,
    /// Only these variants; default all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub exposure_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSettings>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitDimension {
    /// A dimension name declared by the DimensionTable, or by the exposure table when
    /// no `dimensionTable` is given.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension_table: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSettings {
    /// The control variant; default `control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub control: Option<String>,
}

impl AnalysisSettings {
    pub const DEFAULT_CONTROL: &str = "control";
}

impl CalculationTemplate {
    pub fn control(&self) -> &str {
        self.analysis
            .as_ref()
            .and_then(|a| a.control.as_deref())
            .unwrap_or(AnalysisSettings::DEFAULT_CONTROL)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CalculationState {
    Pending,
    Waiting,
    Running,
    Cancelling,
    Completed,
    Failed,
    Cancelled,
}

impl CalculationState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricCalculationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CalculationState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<CalculationTimes>,
    /// The SQL the calculation compiled to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The Job that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_results: Option<MetricResults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The ScheduledMetricCalculation that made this calculation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_iteration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// The earlier run (or calculation) whose result this one replaces. The spelling
    /// follows the metric-calculation API Tally's status mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseeds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

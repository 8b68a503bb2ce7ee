use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CalculationTemplate, PositiveDuration};

/// A metric calculated again and again over a growing exposure window.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "ScheduledMetricCalculation",
    namespaced,
    status = "ScheduledMetricCalculationStatus",
    shortname = "smc",
    category = "tally",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Metric","type":"string","jsonPath":".spec.metricCalculationSpec.metric"}"#,
    // A timestamp, not an age: kubectl shows a date column's age, which reads like a
    // countdown for a future run and shows an overdue one as recent.
    printcolumn = r#"{"name":"Next Run","type":"string","jsonPath":".status.nextScheduledRunTime"}"#,
    printcolumn = r#"{"name":"Last Run","type":"date","jsonPath":".status.lastScheduledRunTime"}"#,
    printcolumn = r#"{"name":"Executed","type":"integer","jsonPath":".status.executedCalculationsCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("!has(self.scheduleEndTime) || self.scheduleEndTime > self.scheduleStartTime")
        .message("scheduleEndTime must be after scheduleStartTime")
)]
#[x_kube(
    validation = kube::core::Rule::new("!has(self.metricCalculationSpec.exposureGroups) || size(self.metricCalculationSpec.exposureGroups) == 0 || (has(self.metricCalculationSpec.analysis) && has(self.metricCalculationSpec.analysis.control) ? self.metricCalculationSpec.analysis.control : 'control') in self.metricCalculationSpec.exposureGroups")
        .message("metricCalculationSpec.exposureGroups must contain the control variant (analysis.control, default control)")
)]
#[x_kube(
    validation = kube::core::Rule::new("size(self.scheduleIntervals) > 0")
        .message("scheduleIntervals must not be empty: give at least one interval such as 1d")
)]
pub struct ScheduledMetricCalculationSpec {
    /// What every run computes; each run sets its own times.
    pub metric_calculation_spec: CalculationTemplate,
    /// Exposure start of every run.
    pub schedule_start_time: Time,
    /// No run fires after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_end_time: Option<Time>,
    /// Time between runs: run k fires at start + interval[0] + … + interval[k]; the
    /// last interval repeats.
    #[schemars(length(min = 1, max = 100))]
    pub schedule_intervals: Vec<PositiveDuration>,
    /// Completed or cancelled runs to keep (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub calculation_history_limit: Option<i32>,
    /// Failed runs to keep (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_calculation_history_limit: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScheduleState {
    Active,
    Cancelled,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledMetricCalculationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ScheduleState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_calculation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_run_time: Option<Time>,
    /// The fire time of the latest run made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_run_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_exposure_start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_exposure_end_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_calculations_count: Option<i64>,
    /// Exactly one of its fields says what the schedule is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ScheduleActivity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleActivity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<Scheduled>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calculating: Option<Calculating>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<WaitingForData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<ScheduleCancelled>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ScheduleError>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduled {
    pub next_schedule_time: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Calculating {
    pub metric_calculation: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingForData {
    pub table: String,
    pub need_data_until_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_delivered_until_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleCancelled {
    pub cancelled_time: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleError {
    pub error_message: String,
}

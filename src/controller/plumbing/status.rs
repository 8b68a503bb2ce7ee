//! Status writes: a merge patch that replaces the whole status, applied only over the
//! version of the object that was observed.

use kube::{Resource, ResourceExt};
use serde_json::Value;

/// A JSON merge patch (RFC 7386) that turns `old` into `new`: objects are patched
/// field by field, with `null` for what `new` lacks; anything else is replaced.
fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for (key, value) in new {
                let value = match old.get(key) {
                    Some(previous) => merge_diff(previous, value),
                    None => value.clone(),
                };
                patch.insert(key.clone(), value);
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// [`status_patch`] that applies only over the observed version of `object`: a
/// reconcile of a stale copy gets a conflict and runs again on the fresh one.
pub fn status_patch_over<K, S>(object: &K, old: Option<&S>, new: &S) -> Value
where
    K: Resource,
    S: serde::Serialize + schemars::JsonSchema,
{
    let mut patch = status_patch(old, new);
    patch["metadata"] = serde_json::json!({ "resourceVersion": object.resource_version() });
    patch
}

/// A merge patch that replaces the whole status with `new`. Nested objects are diffed
/// against the observed status, and every top-level field of the schema that `new`
/// lacks is nulled too, in case the observed status is stale.
fn status_patch<S: serde::Serialize + schemars::JsonSchema>(old: Option<&S>, new: &S) -> Value {
    let schema = schemars::schema_for!(S);
    let old = old
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or(Value::Null);
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut patch = merge_diff(&old, &new);
    if let (Value::Object(map), Some(properties)) = (
        &mut patch,
        schema.get("properties").and_then(Value::as_object),
    ) {
        for field in properties.keys() {
            map.entry(field.clone()).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": patch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    #[test]
    fn a_status_patch_clears_every_field_the_new_status_lacks() {
        let patch = status_patch(None, &crate::api::MetricCalculationStatus::default());
        let status = patch["status"].as_object().unwrap();
        for field in [
            "state",
            "error",
            "metricResults",
            "analysis",
            "superseeds",
            "completionTime",
        ] {
            assert_eq!(status.get(field), Some(&Value::Null), "{field}");
        }
        assert_eq!(status.len(), 15);
    }

    #[test]
    fn a_status_patch_replaces_nested_objects_instead_of_merging_them() {
        use crate::api::{
            Calculating, ScheduleActivity, Scheduled, ScheduledMetricCalculationStatus,
        };
        let old = ScheduledMetricCalculationStatus {
            status: Some(ScheduleActivity {
                scheduled: Some(Scheduled {
                    next_schedule_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        Timestamp::UNIX_EPOCH,
                    ),
                }),
                ..ScheduleActivity::default()
            }),
            ..ScheduledMetricCalculationStatus::default()
        };
        let new = ScheduledMetricCalculationStatus {
            status: Some(ScheduleActivity {
                calculating: Some(Calculating {
                    metric_calculation: "daily-0-1".into(),
                }),
                ..ScheduleActivity::default()
            }),
            ..ScheduledMetricCalculationStatus::default()
        };
        let patch = status_patch(Some(&old), &new);
        assert_eq!(patch["status"]["status"]["scheduled"], Value::Null);
        assert_eq!(
            patch["status"]["status"]["calculating"]["metricCalculation"],
            "daily-0-1"
        );
        assert_eq!(patch["status"]["latestCalculation"], Value::Null);
    }
}

//! The ScheduledMetricCalculation lifecycle: each reconcile observes the schedule, its
//! run grid (`grid`), the tables its runs read and the runs it made (`observe`), calls
//! the pure [`decide_schedule`] once, then carries the decision out (`act`); a run
//! becomes a MetricCalculation (`run`), which the calculation lifecycle runs like any
//! other.

mod act;
mod decide;
pub mod grid;
mod observe;
mod run;

use std::sync::Arc;

use kube::runtime::controller::Action as KubeRequeue;

pub use decide::{ScheduleDecision, ScheduleObserved, child_name, decide_schedule};

use crate::api::{ScheduleState, ScheduledMetricCalculation};
use crate::controller::{Context, ControllerError};

pub async fn reconcile(
    schedule: Arc<ScheduledMetricCalculation>,
    ctx: Arc<Context>,
) -> Result<KubeRequeue, ControllerError> {
    if schedule.metadata.deletion_timestamp.is_some() {
        // Being deleted: its children go with it (ownerReferences); make no new ones.
        return Ok(KubeRequeue::await_change());
    }
    let observed = observe::observe(&schedule, &ctx).await?;
    let decision = decide_schedule(&observed);
    act::act(&ctx, &schedule, &observed.definition, decision.actions).await?;
    Ok(decision.requeue.at(jiff::Timestamp::now()))
}

/// A cancelled schedule makes no more runs until it is resumed (an annotation on the
/// schedule itself).
pub fn settled(schedule: &ScheduledMetricCalculation) -> bool {
    schedule
        .status
        .as_ref()
        .is_some_and(|s| s.state == Some(ScheduleState::Cancelled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cancelled_schedules_ignore_reference_changes() {
        let schedule = |state| {
            let mut s: ScheduledMetricCalculation = serde_json::from_value(serde_json::json!({
                "apiVersion": "tally.dev/v1alpha1",
                "kind": "ScheduledMetricCalculation",
                "metadata": {"name": "s", "namespace": "ns"},
                "spec": {"metricCalculationSpec": {"metric": "m", "exposureTable": "e"},
                         "scheduleStartTime": "2026-10-15T00:00:00Z",
                         "scheduleIntervals": ["1d"]},
            }))
            .unwrap();
            s.status = Some(crate::api::ScheduledMetricCalculationStatus {
                state,
                ..Default::default()
            });
            s
        };
        assert!(settled(&schedule(Some(ScheduleState::Cancelled))));
        // An active schedule waits for data that a table's status may announce.
        assert!(!settled(&schedule(Some(ScheduleState::Active))));
        assert!(!settled(&schedule(None)));
    }
}

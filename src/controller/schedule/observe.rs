//! What a schedule's reconcile looks at before deciding: the schedule, its run grid,
//! what a run would compute now (a fingerprint of its template and Metric), the
//! delivery of the tables its runs read, and the runs it made.

use jiff::{SignedDuration, Timestamp};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::json;

use super::decide::{Child, DEFAULT_FAILED_HISTORY_LIMIT, DEFAULT_HISTORY_LIMIT, ScheduleObserved};
use super::grid::RunGrid;
use super::run::run_spec;
use crate::api::{
    CANCEL_ANNOTATION, DEFINITION_ANNOTATION, MetricCalculation, RESUME_ANNOTATION,
    RETRIGGER_ANNOTATION, RETRIGGERED_BY_ANNOTATION, SCHEDULE_ITERATION_ANNOTATION, SCHEDULE_LABEL,
    SCHEDULE_RUN_ANNOTATION, ScheduledMetricCalculation,
};
use crate::controller::plumbing::names::{fnv1a, label_value};
use crate::controller::readiness::{TableDelivery, deliveries};
use crate::controller::{Context, ControllerError};
use crate::plan::{self, Catalog};

/// Observes `schedule` for one reconcile.
pub async fn observe(
    schedule: &ScheduledMetricCalculation,
    ctx: &Context,
) -> Result<ScheduleObserved, ControllerError> {
    let namespace = schedule.namespace().ok_or(ControllerError::NoNamespace)?;
    let name = schedule.name_any();
    let now = Timestamp::now();
    let spec = &schedule.spec;
    let intervals: Vec<SignedDuration> = spec
        .schedule_intervals
        .iter()
        .map(|i| i.as_signed())
        .collect();
    let grid = too_short(&intervals, ctx.min_schedule_interval)
        .map_or_else(
            || {
                RunGrid::new(
                    spec.schedule_start_time.0,
                    &intervals,
                    spec.schedule_end_time.as_ref().map(|t| t.0),
                )
                .map_err(|e| e.to_string())
            },
            Err,
        )
        .map_err(|e| format!("ScheduledMetricCalculation/{name}: {e}"));
    let (catalog, resolved) = ctx
        .references
        .resolve(&ctx.client, &namespace, &probe(schedule, &grid))
        .await?;
    let (definition, deliveries) = definition(schedule, resolved, &catalog, now);

    let calculations: Api<MetricCalculation> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = schedule.uid();
    let children: Vec<Child> = calculations
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={}", label_value(&name))))
        .await?
        .items
        .iter()
        .filter(|c| {
            c.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref() && o.controller == Some(true))
        })
        .filter_map(child)
        .collect();

    Ok(ScheduleObserved {
        name: name.clone(),
        generation: schedule.metadata.generation.unwrap_or(1),
        grid,
        history_limit: limit(spec.calculation_history_limit, DEFAULT_HISTORY_LIMIT),
        failed_history_limit: limit(
            spec.failed_calculation_history_limit,
            DEFAULT_FAILED_HISTORY_LIMIT,
        ),
        status: schedule.status.clone().unwrap_or_default(),
        cancel_requested: annotation_is_true(schedule, CANCEL_ANNOTATION),
        resume_requested: annotation_is_true(schedule, RESUME_ANNOTATION),
        retrigger: schedule.annotations().get(RETRIGGER_ANNOTATION).cloned(),
        children,
        definition,
        deliveries,
        created: schedule.metadata.creation_timestamp.as_ref().map(|t| t.0),
        now,
    })
}

fn annotation_is_true(schedule: &ScheduledMetricCalculation, name: &str) -> bool {
    schedule
        .annotations()
        .get(name)
        .is_some_and(|v| v == "true")
}

fn limit(value: Option<i32>, default: usize) -> usize {
    value.map_or(default, |v| usize::try_from(v).unwrap_or(0))
}

/// What a run would compute now, as a fingerprint, with the delivery marks of the
/// tables it reads; or why the template does not resolve.
/// A calculation of the schedule's first run: what resolving its template means.
fn probe(
    schedule: &ScheduledMetricCalculation,
    grid: &Result<RunGrid, String>,
) -> MetricCalculation {
    let start = schedule.spec.schedule_start_time.0;
    let end = grid
        .as_ref()
        .ok()
        .and_then(|g| g.fire_time(0))
        .unwrap_or(start + SignedDuration::from_secs(1));
    MetricCalculation::new(&schedule.name_any(), run_spec(schedule, end))
}

/// What a run computes now (a fingerprint of the template and its Metric) and the
/// deliveries of the tables it reads, from the resolution of the schedule's [`probe`].
fn definition(
    schedule: &ScheduledMetricCalculation,
    resolved: Result<plan::ResolvedCalculation, plan::PlanError>,
    catalog: &Catalog,
    now: Timestamp,
) -> (Result<String, String>, Vec<TableDelivery>) {
    let name = schedule.name_any();
    let template = &schedule.spec.metric_calculation_spec;
    match resolved {
        Ok(resolved) => {
            let metric = catalog.metrics.get(&template.metric);
            let identity = json!([
                template,
                metric.and_then(|m| m.metadata.uid.clone()),
                metric.and_then(|m| m.metadata.generation),
            ]);
            let fingerprint = format!("{:016x}", fnv1a(identity.to_string().as_bytes()));
            (Ok(fingerprint), deliveries(&resolved.tables, catalog, now))
        }
        Err(error) => (
            Err(error
                .from_template(
                    &format!("MetricCalculation/{name}"),
                    &format!("ScheduledMetricCalculation/{name}"),
                )
                .to_string()),
            Vec::new(),
        ),
    }
}

/// A MetricCalculation the schedule made, from what the schedule wrote on it.
pub fn child(calculation: &MetricCalculation) -> Option<Child> {
    let annotations = calculation.annotations();
    Some(Child {
        name: calculation.name_any(),
        iteration: annotations
            .get(SCHEDULE_ITERATION_ANNOTATION)?
            .parse()
            .ok()?,
        run: annotations.get(SCHEDULE_RUN_ANNOTATION)?.parse().ok()?,
        fire_time: calculation.spec.end_time.0,
        state: calculation.status.as_ref().and_then(|s| s.state),
        cancel_requested: annotations
            .get(CANCEL_ANNOTATION)
            .is_some_and(|v| v == "true"),
        definition: annotations.get(DEFINITION_ANNOTATION).cloned(),
        retrigger: annotations.get(RETRIGGERED_BY_ANNOTATION).cloned(),
    })
}

/// Why an interval is below the controller's minimum, if one is: a schedule of
/// milliseconds would make Jobs as fast as the controller can create them.
fn too_short(intervals: &[SignedDuration], minimum: SignedDuration) -> Option<String> {
    let (index, interval) = intervals
        .iter()
        .enumerate()
        .find(|(_, interval)| **interval < minimum)?;
    Some(format!(
        "spec.scheduleIntervals[{index}]: {interval:#} is shorter than the {minimum:#} this \
         controller allows between runs (--min-schedule-interval)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::schedule;

    #[test]
    fn intervals_below_the_controllers_minimum_are_named() {
        let minute = SignedDuration::from_secs(60);
        assert_eq!(too_short(&[SignedDuration::from_hours(24)], minute), None);
        assert_eq!(too_short(&[minute], minute), None);
        let message = too_short(
            &[
                SignedDuration::from_hours(1),
                SignedDuration::from_millis(1),
            ],
            minute,
        )
        .unwrap();
        assert!(
            message.starts_with("spec.scheduleIntervals[1]: "),
            "{message}"
        );
        assert!(message.contains("--min-schedule-interval"), "{message}");
    }

    #[test]
    fn an_unresolvable_template_names_the_schedule_field() {
        let schedule = schedule();
        let grid = RunGrid::new(
            schedule.spec.schedule_start_time.0,
            &[SignedDuration::from_hours(24)],
            None,
        )
        .map_err(|e| e.to_string());
        let catalog = Catalog::default();
        let resolved = plan::resolve(&probe(&schedule, &grid), &catalog);
        let (definition, _) = definition(&schedule, resolved, &catalog, Timestamp::now());
        let message = definition.unwrap_err();
        assert!(
            message.starts_with("ScheduledMetricCalculation/daily: spec.metricCalculationSpec."),
            "{message}"
        );
    }
}

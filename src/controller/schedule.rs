//! Reconciles ScheduledMetricCalculations into MetricCalculations over time.
//!
//! Each reconcile observes the schedule, its children and the tables its runs read,
//! calls the pure [`decide_schedule`], then applies the actions in order. The children
//! run through the MetricCalculation controller like any other calculation.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::controller::Action as Requeue,
};
use serde_json::{Value, json};

use super::names::{fnv1a, label_value};
use super::readiness::deliveries;
use super::schedule_decide::{
    Child, DEFAULT_FAILED_HISTORY_LIMIT, DEFAULT_HISTORY_LIMIT, NewRun, ScheduleAction,
    ScheduleObserved, decide_schedule,
};
use super::{Context, ControllerError, status_patch_over};
use crate::api::{
    CANCEL_ANNOTATION, DEFINITION_ANNOTATION, MetricCalculation, MetricCalculationSpec,
    RESUME_ANNOTATION, RETRIGGER_ANNOTATION, RETRIGGERED_BY_ANNOTATION,
    SCHEDULE_ITERATION_ANNOTATION, SCHEDULE_LABEL, SCHEDULE_RUN_ANNOTATION, SUPERSEEDS_ANNOTATION,
    ScheduledMetricCalculation,
};
use crate::job_contract::owned_by;
use crate::plan::{self, Catalog};
use crate::schedule::RunGrid;

fn annotation_is_true(schedule: &ScheduledMetricCalculation, name: &str) -> bool {
    schedule
        .annotations()
        .get(name)
        .is_some_and(|v| v == "true")
}

fn limit(value: Option<i32>, default: usize) -> usize {
    value.map_or(default, |v| usize::try_from(v).unwrap_or(0))
}

/// The spec of a run that fires at `fire_time`: exposures from the schedule's start
/// until then, facts up to then.
fn run_spec(schedule: &ScheduledMetricCalculation, fire_time: Timestamp) -> MetricCalculationSpec {
    MetricCalculationSpec {
        calculation: schedule.spec.metric_calculation_spec.clone(),
        start_time: schedule.spec.schedule_start_time.clone(),
        end_time: Time(fire_time),
        exposure_end_time: None,
    }
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
) -> (Result<String, String>, Vec<super::readiness::TableDelivery>) {
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
fn child(calculation: &MetricCalculation) -> Option<Child> {
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

/// The child MetricCalculation of a run.
fn child_calculation(
    schedule: &ScheduledMetricCalculation,
    run: &NewRun,
    definition: &str,
) -> Option<MetricCalculation> {
    let owner = schedule.controller_owner_ref(&())?;
    let mut calculation = MetricCalculation::new(&run.name, run_spec(schedule, run.fire_time));
    let mut annotations = BTreeMap::from([
        (
            SCHEDULE_ITERATION_ANNOTATION.to_string(),
            run.iteration.to_string(),
        ),
        (SCHEDULE_RUN_ANNOTATION.to_string(), run.run.to_string()),
        (DEFINITION_ANNOTATION.to_string(), definition.to_string()),
    ]);
    if let Some(superseeds) = &run.superseeds {
        annotations.insert(SUPERSEEDS_ANNOTATION.to_string(), superseeds.clone());
    }
    if let Some(retrigger) = &run.retrigger {
        annotations.insert(RETRIGGERED_BY_ANNOTATION.to_string(), retrigger.clone());
    }
    calculation.metadata.namespace = schedule.namespace();
    calculation.metadata.owner_references = Some(vec![owner]);
    calculation.metadata.labels = Some(BTreeMap::from([(
        SCHEDULE_LABEL.to_string(),
        label_value(&schedule.name_any()),
    )]));
    calculation.metadata.annotations = Some(annotations);
    Some(calculation)
}

/// Treats "already there" (409) or "already gone" (404) as done.
fn tolerate<T>(result: Result<T, kube::Error>, code: u16) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == code => Ok(()),
        Err(e) => Err(e),
    }
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

pub async fn reconcile(
    schedule: Arc<ScheduledMetricCalculation>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let namespace = schedule.namespace().ok_or(ControllerError::NoNamespace)?;
    let name = schedule.name_any();
    if schedule.metadata.deletion_timestamp.is_some() {
        // Being deleted: its children go with it (ownerReferences); make no new ones.
        return Ok(Requeue::await_change());
    }
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
        .resolve(&ctx.client, &namespace, &probe(&schedule, &grid))
        .await?;
    let (definition, deliveries) = definition(&schedule, resolved, &catalog, now);

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

    let observed = ScheduleObserved {
        name: name.clone(),
        generation: schedule.metadata.generation.unwrap_or(1),
        grid,
        history_limit: limit(spec.calculation_history_limit, DEFAULT_HISTORY_LIMIT),
        failed_history_limit: limit(
            spec.failed_calculation_history_limit,
            DEFAULT_FAILED_HISTORY_LIMIT,
        ),
        status: schedule.status.clone().unwrap_or_default(),
        cancel_requested: annotation_is_true(&schedule, CANCEL_ANNOTATION),
        resume_requested: annotation_is_true(&schedule, RESUME_ANNOTATION),
        retrigger: schedule.annotations().get(RETRIGGER_ANNOTATION).cloned(),
        children,
        definition,
        deliveries,
        created: schedule.metadata.creation_timestamp.as_ref().map(|t| t.0),
        now,
    };
    let decision = decide_schedule(&observed);
    let schedules: Api<ScheduledMetricCalculation> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for action in decision.actions {
        match action {
            ScheduleAction::SetStatus(status) => {
                let patch = status_patch_over(&*schedule, schedule.status.as_ref(), &*status);
                schedules
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            ScheduleAction::CreateRun(run) => {
                let Ok(definition) = &observed.definition else {
                    continue;
                };
                let Some(calculation) = child_calculation(&schedule, &run, definition) else {
                    continue;
                };
                match calculations
                    .create(&PostParams::default(), &calculation)
                    .await
                {
                    Ok(_) => {}
                    // Made before a restart and adopted; but a calculation of the same
                    // name that is not this schedule's is not its run.
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let existing = calculations.get_opt(&run.name).await?;
                        match existing {
                            Some(c) if uid.as_deref().is_some_and(|uid| owned_by(&c, uid)) => {}
                            Some(_) => {
                                let note = format!(
                                    "MetricCalculation {} exists and does not belong to this \
                                     schedule: delete or rename it so that run {} can be made",
                                    run.name, run.run
                                );
                                ctx.events
                                    .publish(&*schedule, true, "RunNameTaken", &note)
                                    .await;
                                return Err(ControllerError::NameTaken(note));
                            }
                            // Gone since: try again.
                            None => return Err(kube::Error::Api(e).into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ScheduleAction::MarkSuperseded { name, by } => {
                let patch = json!({ "status": { "supersededBy": by } });
                tolerate(
                    calculations
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await,
                    404,
                )?;
            }
            ScheduleAction::CancelRun(name) => {
                let patch = json!({ "metadata": { "annotations": { CANCEL_ANNOTATION: "true" } } });
                tolerate(
                    calculations
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await,
                    404,
                )?;
            }
            ScheduleAction::DeleteRun(name) => {
                tolerate(calculations.delete(&name, &background).await, 404)?;
            }
            ScheduleAction::RemoveAnnotations(names) => {
                let annotations: serde_json::Map<String, Value> =
                    names.iter().map(|n| (n.to_string(), Value::Null)).collect();
                let patch = json!({ "metadata": { "annotations": annotations } });
                schedules
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            ScheduleAction::Event {
                warning,
                reason,
                note,
            } => {
                ctx.events.publish(&*schedule, warning, reason, &note).await;
            }
        }
    }
    Ok(match decision.wake_at {
        Some(at) => {
            let wait = at.duration_since(Timestamp::now());
            let wait = Duration::try_from(wait).unwrap_or_default();
            // A little late rather than early: a run fires once its time has passed.
            Requeue::requeue(wait + Duration::from_millis(20))
        }
        None => Requeue::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn schedule() -> ScheduledMetricCalculation {
        let mut schedule: ScheduledMetricCalculation = serde_json::from_value(json!({
            "apiVersion": "tally.dev/v1alpha1",
            "kind": "ScheduledMetricCalculation",
            "metadata": {"name": "daily", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "metricCalculationSpec": {"metric": "revenue", "exposureTable": "exposures"},
                "scheduleStartTime": "2026-11-01T00:00:00Z",
                "scheduleIntervals": ["1d"]
            }
        }))
        .unwrap();
        schedule.metadata.generation = Some(1);
        schedule
    }

    #[test]
    fn a_run_becomes_an_owned_labelled_calculation_the_schedule_reads_back() {
        let fire: Timestamp = "2026-11-04T00:00:00Z".parse().unwrap();
        let run = NewRun {
            name: "daily-1-2".into(),
            iteration: 1,
            run: 2,
            fire_time: fire,
            superseeds: Some("daily-0-2".into()),
            retrigger: Some("2026-11-04T01:00:00Z".into()),
        };
        let calculation = child_calculation(&schedule(), &run, "abc").unwrap();
        assert_eq!(calculation.namespace().as_deref(), Some("shop"));
        assert_eq!(calculation.labels()[SCHEDULE_LABEL], "daily");
        let owner = &calculation.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ScheduledMetricCalculation", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            calculation.spec.start_time.0.to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(calculation.spec.end_time.0, fire);
        assert_eq!(
            calculation.annotations()[SUPERSEEDS_ANNOTATION],
            "daily-0-2"
        );
        let child = child(&calculation).unwrap();
        assert_eq!((child.iteration, child.run, child.fire_time), (1, 2, fire));
        assert_eq!(child.definition.as_deref(), Some("abc"));
        assert_eq!(child.retrigger.as_deref(), Some("2026-11-04T01:00:00Z"));
        assert_eq!(child.state, None);
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

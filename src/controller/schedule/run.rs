//! A run of a schedule as the MetricCalculation it becomes.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use super::decide::NewRun;
use crate::api::{
    DEFINITION_ANNOTATION, MetricCalculation, MetricCalculationSpec, RETRIGGERED_BY_ANNOTATION,
    SCHEDULE_ITERATION_ANNOTATION, SCHEDULE_LABEL, SCHEDULE_RUN_ANNOTATION, SUPERSEEDS_ANNOTATION,
    ScheduledMetricCalculation,
};
use crate::controller::plumbing::names::label_value;

/// The spec of a run that fires at `fire_time`: exposures from the schedule's start
/// until then, facts up to then.
pub fn run_spec(
    schedule: &ScheduledMetricCalculation,
    fire_time: Timestamp,
) -> MetricCalculationSpec {
    MetricCalculationSpec {
        calculation: schedule.spec.metric_calculation_spec.clone(),
        start_time: schedule.spec.schedule_start_time.clone(),
        end_time: Time(fire_time),
        exposure_end_time: None,
    }
}

/// The child MetricCalculation of a run.
pub fn child_calculation(
    schedule: &ScheduledMetricCalculation,
    run: &NewRun,
    definition: &str,
) -> Result<MetricCalculation, String> {
    let owner = schedule
        .controller_owner_ref(&())
        .ok_or("the ScheduledMetricCalculation has no uid to own its runs")?;
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
    Ok(calculation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::schedule::observe::child;
    use crate::controller::test_support::schedule;

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
}

//! The decision tests of the MetricCalculation lifecycle.

use super::*;
use crate::api::{Analysis, MetricResults};
use k8s_openapi::api::batch::v1::Job;

/// The actions of the decision, as these tests read them.
fn decide(o: &Observed) -> Vec<Action> {
    super::decide(o).actions
}

fn plan() -> CalculationPlan {
    CalculationPlan::for_tests()
}

fn result() -> CalculationResult {
    CalculationResult {
        times: plan().times.to_status(),
        metric_results: MetricResults::default(),
        analysis: Analysis::default(),
    }
}

fn observed(
    state: Option<CalculationState>,
    observed_generation: Option<i64>,
    job: JobState,
) -> Observed {
    Observed {
        generation: 1,
        status: MetricCalculationStatus {
            state,
            observed_generation,
            sql_job: state
                .filter(|s| *s != CalculationState::Pending)
                .map(|_| "calc-1".to_string()),
            ..MetricCalculationStatus::default()
        },
        cancel_requested: false,
        plan: Ok(plan()),
        waiting: None,
        job_name: "calc-1".into(),
        job,
        job_without_pod: false,
        job_spec: Some(Ok(Box::new(Job::default()))),
        origin: None,
        missing_service_account: None,
        job_refused: None,
        job_create_refused: None,
        created: None,
        now: "2026-11-23T00:00:00Z".parse().unwrap(),
    }
}

/// The state a decision sets, and whether it creates or deletes the Job.
fn summary(actions: &[Action]) -> (Option<CalculationState>, bool, bool) {
    let state = actions.iter().find_map(|a| match a {
        Action::SetStatus(s) => s.state,
        _ => None,
    });
    let created = actions.iter().any(|a| matches!(a, Action::CreateJob(_)));
    let deleted = actions.iter().any(|a| matches!(a, Action::DeleteJob(_)));
    (state, created, deleted)
}

use CalculationState::*;

#[test]
fn lifecycle_table() {
    let missing = PlanError::MissingReference {
        referrer: "MetricCalculation/calc".into(),
        field: "spec.metric".into(),
        kind: "Metric",
        name: "m".into(),
    };
    let invalid = PlanError::InvalidField {
        resource: "FactTable/f".into(),
        field: "spec.entityColumn".into(),
        message: "bad".into(),
    };
    let wait = DataWait {
        table: "FactTable/f".into(),
        need_until: "2026-10-15T00:00:00Z".parse().unwrap(),
        delivered_until: None,
    };
    struct Case {
        name: &'static str,
        observed: Observed,
        expect: (Option<CalculationState>, bool, bool),
    }
    let with = |mut o: Observed, f: &dyn Fn(&mut Observed)| {
        f(&mut o);
        o
    };
    let cases = vec![
        Case {
            name: "new → Job created, Running",
            observed: observed(None, None, JobState::Missing),
            expect: (Some(Running), true, false),
        },
        Case {
            name: "missing reference → Pending",
            observed: with(observed(None, None, JobState::Missing), &|o| {
                o.plan = Err(missing.clone())
            }),
            expect: (Some(Pending), false, false),
        },
        Case {
            name: "invalid spec → Failed",
            observed: with(observed(None, None, JobState::Missing), &|o| {
                o.plan = Err(invalid.clone())
            }),
            expect: (Some(Failed), false, false),
        },
        Case {
            name: "data not delivered → Waiting",
            observed: with(observed(None, None, JobState::Missing), &|o| {
                o.waiting = Some(wait.clone())
            }),
            expect: (Some(Waiting), false, false),
        },
        Case {
            name: "running, Job running → nothing",
            observed: observed(Some(Running), Some(1), JobState::Running),
            expect: (None, false, false),
        },
        Case {
            name: "Job running, status lost → Running again, no new Job",
            observed: observed(None, None, JobState::Running),
            expect: (Some(Running), false, false),
        },
        Case {
            name: "Job succeeded → Completed",
            observed: observed(Some(Running), Some(1), JobState::Succeeded(Ok(result()))),
            expect: (Some(Completed), false, false),
        },
        Case {
            name: "Job succeeded without result → Failed",
            observed: observed(
                Some(Running),
                Some(1),
                JobState::Succeeded(Err("no result".into())),
            ),
            expect: (Some(Failed), false, false),
        },
        Case {
            name: "Job failed → Failed",
            observed: observed(Some(Running), Some(1), JobState::Failed("boom".into())),
            expect: (Some(Failed), false, false),
        },
        Case {
            name: "Job vanished while running → Failed, not rerun",
            observed: observed(Some(Running), Some(1), JobState::Missing),
            expect: (Some(Failed), false, false),
        },
        Case {
            name: "completed, Job gone (TTL) → nothing",
            observed: observed(Some(Completed), Some(1), JobState::Missing),
            expect: (None, false, false),
        },
        Case {
            name: "failed stays failed",
            observed: observed(Some(Failed), Some(1), JobState::Missing),
            expect: (None, false, false),
        },
        Case {
            name: "completed, new generation → new run",
            observed: with(
                observed(Some(Completed), Some(1), JobState::Missing),
                &|o| {
                    o.generation = 2;
                    o.job_name = "calc-2".into();
                },
            ),
            expect: (Some(Running), true, false),
        },
        Case {
            name: "cancel while running → Cancelling, Job deleted",
            observed: with(observed(Some(Running), Some(1), JobState::Running), &|o| {
                o.cancel_requested = true
            }),
            expect: (Some(Cancelling), false, true),
        },
        Case {
            name: "cancelling, Job still there → wait",
            observed: with(
                observed(Some(Cancelling), Some(1), JobState::Running),
                &|o| o.cancel_requested = true,
            ),
            expect: (None, false, false),
        },
        Case {
            name: "cancelling, Job gone → Cancelled",
            observed: with(
                observed(Some(Cancelling), Some(1), JobState::Missing),
                &|o| o.cancel_requested = true,
            ),
            expect: (Some(Cancelled), false, false),
        },
        Case {
            name: "cancel while waiting → Cancelled",
            observed: with(observed(Some(Waiting), Some(1), JobState::Missing), &|o| {
                o.cancel_requested = true;
                o.waiting = Some(wait.clone());
            }),
            expect: (Some(Cancelled), false, false),
        },
        Case {
            name: "cancel of a completed one → noted, state kept",
            observed: with(
                observed(Some(Completed), Some(1), JobState::Missing),
                &|o| o.cancel_requested = true,
            ),
            expect: (Some(Completed), false, false),
        },
        Case {
            name: "cancel after the Job succeeded → Completed, the result kept",
            observed: with(
                observed(Some(Running), Some(1), JobState::Succeeded(Ok(result()))),
                &|o| o.cancel_requested = true,
            ),
            expect: (Some(Completed), false, false),
        },
        Case {
            name: "cancel after the Job failed → Failed, the reason kept",
            observed: with(
                observed(Some(Running), Some(1), JobState::Failed("boom".into())),
                &|o| o.cancel_requested = true,
            ),
            expect: (Some(Failed), false, false),
        },
        Case {
            name: "cancelling, annotation removed, Job gone → Cancelled, not rerun",
            observed: observed(Some(Cancelling), Some(1), JobState::Missing),
            expect: (Some(Cancelled), false, false),
        },
        Case {
            name: "cancelling, annotation removed, Job still there → wait",
            observed: observed(Some(Cancelling), Some(1), JobState::Running),
            expect: (None, false, false),
        },
        Case {
            name: "reference deleted during the run, Job running → nothing",
            observed: with(observed(Some(Running), Some(1), JobState::Running), &|o| {
                o.plan = Err(missing.clone())
            }),
            expect: (None, false, false),
        },
        Case {
            name: "reference deleted during the run, Job succeeded → Completed",
            observed: with(
                observed(Some(Running), Some(1), JobState::Succeeded(Ok(result()))),
                &|o| o.plan = Err(missing.clone()),
            ),
            expect: (Some(Completed), false, false),
        },
        Case {
            name: "spec made invalid during the run, Job running → nothing",
            observed: with(observed(Some(Running), Some(1), JobState::Running), &|o| {
                o.plan = Err(invalid.clone())
            }),
            expect: (None, false, false),
        },
        Case {
            name: "spec edited during the run → the old Job deleted, a new one made",
            observed: with(observed(Some(Running), Some(1), JobState::Missing), &|o| {
                o.generation = 2;
                o.job_name = "calc-2".into();
            }),
            expect: (Some(Running), true, true),
        },
        Case {
            name: "a Job of an earlier object holds the name → Pending, no Job",
            observed: observed(None, None, JobState::Foreign),
            expect: (Some(Pending), false, false),
        },
        Case {
            name: "cancelled stays cancelled",
            observed: with(
                observed(Some(Cancelled), Some(1), JobState::Missing),
                &|o| o.cancel_requested = true,
            ),
            expect: (None, false, false),
        },
    ];
    for case in cases {
        assert_eq!(
            summary(&decide(&case.observed)),
            case.expect,
            "{}",
            case.name
        );
    }
}

#[test]
fn each_condition_that_does_not_hold_gives_a_reason_of_its_own() {
    let reasons = |o: &Observed| -> Vec<(String, String, String)> {
        status_of(&decide(o))
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    };
    let completed = reasons(&observed(
        Some(Running),
        Some(1),
        JobState::Succeeded(Ok(result())),
    ));
    let of = |all: &[(String, String, String)], type_: &str| {
        all.iter()
            .find(|(t, _, _)| t == type_)
            .map(|(_, status, reason)| (status.clone(), reason.clone()))
            .unwrap()
    };
    assert_eq!(of(&completed, "Ready"), ("True".into(), "Completed".into()));
    assert_eq!(
        of(&completed, "Cancelled"),
        ("False".into(), "NotCancelled".into())
    );
    assert_eq!(
        of(&completed, "Running"),
        ("False".into(), "JobFinished".into())
    );
    assert_eq!(
        of(&completed, "Failed"),
        ("False".into(), "NoFailure".into())
    );
    assert_eq!(
        of(&completed, "Waiting"),
        ("False".into(), "DataDelivered".into())
    );

    let mut cancel = observed(Some(Running), Some(1), JobState::Running);
    cancel.cancel_requested = true;
    let cancelling = reasons(&cancel);
    assert_eq!(
        of(&cancelling, "Running"),
        ("True".into(), "CancelRequested".into())
    );
    assert_eq!(
        of(&cancelling, "Cancelled"),
        ("False".into(), "CancelInProgress".into())
    );

    // Only Ready and the conditions that hold carry the transition's reason.
    let failed = reasons(&observed(
        Some(Running),
        Some(1),
        JobState::Failed("boom".into()),
    ));
    let failed_reason = of(&failed, "Failed").1;
    for (type_, status, reason) in &failed {
        if status == "False" && type_ != "Ready" {
            assert_ne!(reason, &failed_reason, "{type_} copies the Failed reason");
        }
    }
}

#[test]
fn a_new_run_keeps_the_old_result_and_records_what_it_supersedes() {
    let mut o = observed(Some(Completed), Some(1), JobState::Missing);
    o.status.metric_results = Some(MetricResults::default());
    o.generation = 2;
    o.job_name = "calc-2".into();
    let actions = decide(&o);
    let Some(Action::SetStatus(status)) =
        actions.iter().find(|a| matches!(a, Action::SetStatus(_)))
    else {
        panic!("no status");
    };
    assert_eq!(status.superseeds.as_deref(), Some("calc-1"));
    assert_eq!(status.sql_job.as_deref(), Some("calc-2"));
    assert!(
        status.metric_results.is_some(),
        "the previous result stays readable"
    );
    assert_eq!(status.observed_generation, Some(2));
}

#[test]
fn decisions_are_idempotent() {
    // Applying a decision's status and deciding again changes nothing.
    for o in [
        observed(None, None, JobState::Missing),
        observed(Some(Running), Some(1), JobState::Succeeded(Ok(result()))),
    ] {
        let mut next = o.clone();
        for action in decide(&o) {
            if let Action::SetStatus(status) = action {
                next.status = *status;
            }
        }
        if next.status.state == Some(Running) {
            next.job = JobState::Running;
        }
        assert!(decide(&next).is_empty(), "{:?}", decide(&next));
    }
    // An ignored cancel is noted once.
    let mut o = observed(Some(Completed), Some(1), JobState::Missing);
    o.cancel_requested = true;
    let Some(Action::SetStatus(status)) = decide(&o).into_iter().next() else {
        panic!()
    };
    o.status = *status;
    assert!(decide(&o).is_empty());
}

fn status_of(actions: &[Action]) -> &MetricCalculationStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::SetStatus(s) => Some(&**s),
            _ => None,
        })
        .expect("a status")
}

#[test]
fn a_missing_worker_service_account_holds_the_calculation_pending_without_a_job() {
    let mut o = observed(None, None, JobState::Missing);
    o.missing_service_account = Some(MissingServiceAccount {
        namespace: "growth".into(),
        name: "tally-worker".into(),
    });
    let actions = decide(&o);
    assert_eq!(summary(&actions), (Some(Pending), false, false));
    let status = status_of(&actions);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.reason == "ServiceAccountMissing")
        .expect("a ServiceAccountMissing condition");
    assert!(
        ready.message.contains("tally-worker")
            && ready.message.contains("namespace growth")
            && ready.message.contains("worker.namespaces"),
        "{}",
        ready.message
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Event {
            warning: true,
            reason: "ServiceAccountMissing",
            ..
        }
    )));
    // Reported once; created once the account exists.
    let mut again = o.clone();
    again.status = status.clone();
    assert!(decide(&again).is_empty());
    again.missing_service_account = None;
    assert_eq!(summary(&decide(&again)), (Some(Running), true, false));
}

#[test]
fn a_reference_missing_for_a_moment_after_creation_is_no_warning() {
    let mut o = observed(None, None, JobState::Missing);
    o.plan = Err(PlanError::MissingReference {
        referrer: "MetricCalculation/calc".into(),
        field: "spec.metric".into(),
        kind: "Metric",
        name: "m".into(),
    });
    o.created = Some(o.now - jiff::SignedDuration::from_secs(2));
    let warnings = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Event { warning: true, .. }))
            .count()
    };
    let actions = decide(&o);
    assert_eq!(summary(&actions), (Some(Pending), false, false));
    assert_eq!(warnings(&actions), 0, "{actions:?}");
    let ready = status_of(&actions)
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "MissingReference");
    // Still missing after the grace: one Warning, then quiet.
    let mut later = o.clone();
    later.status = status_of(&actions).clone();
    later.now = o.now + REFERENCE_GRACE;
    let actions = decide(&later);
    assert_eq!(warnings(&actions), 1, "{actions:?}");
    later.status = status_of(&actions).clone();
    assert!(decide(&later).is_empty());
    // An old calculation whose reference goes missing is warned about at once.
    let mut old = o.clone();
    old.created = Some(o.now - jiff::SignedDuration::from_secs(3600));
    assert_eq!(warnings(&decide(&old)), 1);
}

#[test]
fn job_settings_the_policy_refuses_hold_the_calculation_pending_without_a_job() {
    let mut o = observed(None, None, JobState::Missing);
    o.job_refused =
        Some("Warehouse/wh: spec.job.volumes[0]: volumes of type hostPath are not allowed".into());
    let actions = decide(&o);
    assert_eq!(summary(&actions), (Some(Pending), false, false));
    let status = status_of(&actions);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "JobSettingsRefused");
    assert!(
        ready.message.contains("spec.job.volumes[0]"),
        "{}",
        ready.message
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Event {
            warning: true,
            reason: "JobSettingsRefused",
            ..
        }
    )));
    // Said once: the same decision again changes nothing.
    let mut again = o.clone();
    again.status = status.clone();
    assert!(decide(&again).is_empty());
    // Fixed: the Job is created.
    again.job_refused = None;
    assert!(
        decide(&again)
            .iter()
            .any(|a| matches!(a, Action::CreateJob(_)))
    );
}

fn warned(actions: &[Action], reason: &str) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Event { warning: true, reason: r, .. } if *r == reason))
}

fn condition_reason(status: &MetricCalculationStatus, type_: &str) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[test]
fn a_job_the_api_server_refuses_holds_the_calculation_pending_with_its_message() {
    let mut o = observed(None, None, JobState::Missing);
    o.job_create_refused = Some("jobs \"calc-1\" is forbidden: exceeded quota: no-jobs".into());
    let actions = decide(&o);
    assert_eq!(summary(&actions), (Some(Pending), false, false));
    assert!(warned(&actions, "JobCreateRefused"));
    let status = status_of(&actions);
    assert_eq!(condition_reason(status, "Ready"), "JobCreateRefused");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains("exceeded quota"),
        "{}",
        ready.message
    );
    // Said once.
    let mut again = o.clone();
    again.status = status.clone();
    assert!(decide(&again).is_empty());
    // On the next reconcile the Job is tried again.
    again.job_create_refused = None;
    assert_eq!(summary(&decide(&again)), (Some(Running), true, false));
}

#[test]
fn a_job_whose_pod_cannot_be_created_says_why_until_it_can() {
    let created = observed(None, None, JobState::Missing);
    let running = status_of(&decide(&created)).clone();
    let mut o = observed(
        Some(Running),
        Some(1),
        JobState::PodsNotCreated("pods \"calc-1-x\" is forbidden: exceeded quota".into()),
    );
    o.status = running;
    let actions = decide(&o);
    assert_eq!(summary(&actions), (Some(Running), false, false));
    assert!(warned(&actions, "PodsNotCreated"));
    let status = status_of(&actions);
    assert_eq!(condition_reason(status, "Running"), "PodsNotCreated");
    assert_eq!(status.sql_job.as_deref(), Some("calc-1"));
    // Warned once.
    let mut again = o.clone();
    again.status = status.clone();
    assert!(decide(&again).is_empty());
    // Cancel still deletes the Job.
    let mut cancel = again.clone();
    cancel.cancel_requested = true;
    assert_eq!(summary(&decide(&cancel)), (Some(Cancelling), false, true));
    // Once its Pod is created, it runs as any other.
    again.job = JobState::Running;
    let actions = decide(&again);
    assert_eq!(summary(&actions), (Some(Running), false, false));
    assert_eq!(
        condition_reason(status_of(&actions), "Running"),
        "JobCreated"
    );
}

#[test]
fn a_result_records_the_sql_its_job_ran_not_a_later_plan() {
    let mut o = observed(Some(Running), Some(1), JobState::Succeeded(Ok(result())));
    o.status.sql = Some("SELECT 'what the Job ran'".into());
    let mut edited = plan();
    edited.sql = "SELECT 'after a Metric edit'".into();
    o.plan = Ok(edited);
    let actions = decide(&o);
    assert_eq!(
        status_of(&actions).sql.as_deref(),
        Some("SELECT 'what the Job ran'")
    );
}

#[test]
fn a_spec_edit_during_a_run_deletes_the_job_of_the_old_generation() {
    let mut o = observed(Some(Running), Some(1), JobState::Missing);
    o.generation = 2;
    o.job_name = "calc-2".into();
    let actions = decide(&o);
    assert!(actions.contains(&Action::DeleteJob("calc-1".into())));
    assert_eq!(status_of(&actions).sql_job.as_deref(), Some("calc-2"));
    // The new run records the run it cut short, as it would a finished one.
    assert_eq!(status_of(&actions).superseeds.as_deref(), Some("calc-1"));
    // Cancelling both at once stops both Jobs.
    o.cancel_requested = true;
    o.job = JobState::Running;
    let actions = decide(&o);
    assert!(actions.contains(&Action::DeleteJob("calc-1".into())));
    assert!(actions.contains(&Action::DeleteJob("calc-2".into())));
}

#[test]
fn a_status_restored_from_a_running_job_has_a_start_time() {
    let actions = decide(&observed(None, None, JobState::Running));
    let status = status_of(&actions);
    assert_eq!(status.state, Some(Running));
    assert!(status.start_time.is_some());
    assert_eq!(status.sql_job.as_deref(), Some("calc-1"));
}

#[test]
fn failure_reason_reaches_status() {
    let actions = decide(&observed(
        Some(Running),
        Some(1),
        JobState::Failed("IO Error: no such file".into()),
    ));
    let Some(Action::SetStatus(status)) = actions.first() else {
        panic!()
    };
    assert_eq!(status.error.as_deref(), Some("IO Error: no such file"));
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", "WorkerFailed")
    );
}

#[test]
fn a_schedule_run_records_its_schedule_iteration_and_what_it_supersedes() {
    let mut o = observed(None, None, JobState::Missing);
    o.origin = Some(ScheduleOrigin {
        schedule: "daily".into(),
        iteration: Some(1),
        superseeds: Some("daily-0-3".into()),
    });
    let status = decide(&o)
        .into_iter()
        .find_map(|a| match a {
            Action::SetStatus(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(status.state, Some(Running));
    assert_eq!(status.schedule.as_deref(), Some("daily"));
    assert_eq!(status.schedule_iteration, Some(1));
    assert_eq!(status.superseeds.as_deref(), Some("daily-0-3"));
}

#[test]
fn a_result_without_any_value_completes_with_a_warning_that_says_why() {
    let mut empty = result();
    empty.analysis.sample_ratio_mismatch = Some(crate::api::SampleRatioMismatch {
        counts: [("control".to_string(), 3), ("treatment".to_string(), 4)].into(),
        p_value: None,
    });
    empty.analysis.entities_without_value = 7;
    let actions = decide(&observed(
        Some(Running),
        Some(1),
        JobState::Succeeded(Ok(empty)),
    ));
    let Some(Action::SetStatus(status)) = actions.first() else {
        panic!("{actions:?}");
    };
    assert_eq!(status.state, Some(Completed));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready
            .message
            .contains("none of the 7 exposed entities has a value"),
        "{}",
        ready.message
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Event {
            warning: true,
            reason: "NoMetricValues",
            ..
        }
    )));

    // One entity with a value is a result like any other.
    let mut some = result();
    some.analysis = crate::api::Analysis {
        entities_without_value: 6,
        ..empty_analysis_of(7)
    };
    let actions = decide(&observed(
        Some(Running),
        Some(1),
        JobState::Succeeded(Ok(some)),
    ));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Event { warning: true, .. }))
    );
}

/// An analysis of `exposed` entities, with nothing else.
fn empty_analysis_of(exposed: i64) -> crate::api::Analysis {
    crate::api::Analysis {
        sample_ratio_mismatch: Some(crate::api::SampleRatioMismatch {
            counts: [("control".to_string(), exposed)].into(),
            p_value: None,
        }),
        ..crate::api::Analysis::default()
    }
}

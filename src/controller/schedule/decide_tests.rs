//! The decision tests of the ScheduledMetricCalculation lifecycle.

use super::*;
use crate::api::{CANCEL_ANNOTATION, RESUME_ANNOTATION};
use CalculationState::*;
use jiff::SignedDuration;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A schedule and its children as the API would hold them, driven by the decisions.
struct World {
    o: ScheduleObserved,
    created: Vec<NewRun>,
    events: Vec<&'static str>,
    deleted: Vec<String>,
    cancelled: Vec<String>,
    superseded: Vec<(String, String)>,
}

impl World {
    /// Starts 2026-11-01, one run a day.
    fn new(now: &str) -> Self {
        Self::with_grid(now, &[24], None)
    }

    fn with_grid(now: &str, hours: &[i64], end: Option<&str>) -> Self {
        let intervals: Vec<_> = hours
            .iter()
            .map(|&h| SignedDuration::from_hours(h))
            .collect();
        Self {
            o: ScheduleObserved {
                name: "daily".into(),
                generation: 1,
                grid: Ok(RunGrid::new(t("2026-11-01T00:00:00Z"), &intervals, end.map(t)).unwrap()),
                history_limit: DEFAULT_HISTORY_LIMIT,
                failed_history_limit: DEFAULT_FAILED_HISTORY_LIMIT,
                status: ScheduledMetricCalculationStatus::default(),
                cancel_requested: false,
                resume_requested: false,
                retrigger: None,
                children: Vec::new(),
                definition: Ok("v1".into()),
                deliveries: Vec::new(),
                created: None,
                now: t(now),
            },
            created: Vec::new(),
            events: Vec::new(),
            deleted: Vec::new(),
            cancelled: Vec::new(),
            superseded: Vec::new(),
        }
    }

    /// Decides and applies the actions the way the API would.
    fn step(&mut self) -> ScheduleDecision {
        let decision = decide_schedule(&self.o);
        for action in &decision.actions {
            match action {
                ScheduleAction::SetStatus(status) => self.o.status = (**status).clone(),
                ScheduleAction::CreateRun(run) => {
                    assert!(
                        self.o.children.iter().all(|c| c.name != run.name),
                        "{} created twice",
                        run.name
                    );
                    self.created.push(run.clone());
                    self.o.children.push(Child {
                        name: run.name.clone(),
                        iteration: run.iteration,
                        run: run.run,
                        fire_time: run.fire_time,
                        state: None,
                        cancel_requested: false,
                        definition: self.o.definition.clone().ok(),
                        retrigger: run.retrigger.clone(),
                    });
                }
                ScheduleAction::MarkSuperseded { name, by } => {
                    self.superseded.push((name.clone(), by.clone()))
                }
                ScheduleAction::CancelRun(name) => {
                    self.cancelled.push(name.clone());
                    self.child(name).cancel_requested = true;
                }
                ScheduleAction::DeleteRun(name) => {
                    self.deleted.push(name.clone());
                    self.o.children.retain(|c| &c.name != name);
                }
                ScheduleAction::RemoveAnnotations(names) => {
                    for name in names {
                        match *name {
                            CANCEL_ANNOTATION => self.o.cancel_requested = false,
                            RESUME_ANNOTATION => self.o.resume_requested = false,
                            RETRIGGER_ANNOTATION => self.o.retrigger = None,
                            other => panic!("unexpected annotation {other}"),
                        }
                    }
                }
                ScheduleAction::Event { reason, .. } => self.events.push(reason),
            }
        }
        decision
    }

    /// Steps, then checks that a second step changes nothing (a steady state).
    fn settle(&mut self) -> ScheduleDecision {
        let decision = self.step();
        let again = decide_schedule(&self.o);
        assert_eq!(again.actions, vec![], "not idempotent");
        decision
    }

    fn at(&mut self, now: &str) -> &mut Self {
        self.o.now = t(now);
        self
    }

    fn child(&mut self, name: &str) -> &mut Child {
        self.o.children.iter_mut().find(|c| c.name == name).unwrap()
    }

    fn finish(&mut self, name: &str, state: CalculationState) {
        self.child(name).state = Some(state);
    }

    fn finish_all(&mut self) {
        for child in &mut self.o.children {
            child.state.get_or_insert(Completed);
        }
    }

    fn created_names(&self) -> Vec<&str> {
        self.created.iter().map(|r| r.name.as_str()).collect()
    }

    fn activity(&self) -> ScheduleActivity {
        self.o.status.status.clone().unwrap_or_default()
    }

    fn reason(&self, type_: &str) -> Option<&str> {
        reason_of(&self.o.status.conditions, type_)
    }
}

#[test]
fn runs_fire_in_order_with_cumulative_windows() {
    let mut w = World::new("2026-11-01T12:00:00Z");
    let decision = w.settle();
    assert_eq!(decision.wake_at(), Some(t("2026-11-02T00:00:00Z")));
    assert_eq!(
        w.activity().scheduled.unwrap().next_schedule_time.0,
        t("2026-11-02T00:00:00Z")
    );
    assert_eq!(w.o.status.state, Some(ScheduleState::Active));
    for (now, name, fire) in [
        ("2026-11-02T00:00:01Z", "daily-0-0", "2026-11-02T00:00:00Z"),
        ("2026-11-03T00:00:00Z", "daily-0-1", "2026-11-03T00:00:00Z"),
        ("2026-11-04T06:00:00Z", "daily-0-2", "2026-11-04T00:00:00Z"),
    ] {
        w.at(now).settle();
        let run = w.created.last().unwrap();
        assert_eq!((run.name.as_str(), run.fire_time), (name, t(fire)));
        assert_eq!(w.activity().calculating.unwrap().metric_calculation, name);
        w.finish(name, Completed);
        w.settle();
        assert!(w.activity().scheduled.is_some());
    }
    assert_eq!(w.o.status.executed_calculations_count, Some(3));
    assert_eq!(w.o.status.latest_calculation.as_deref(), Some("daily-0-2"));
    assert_eq!(
        w.o.status.next_exposure_start_time.as_ref().map(|t| t.0),
        Some(t("2026-11-01T00:00:00Z"))
    );
    assert_eq!(
        w.o.status.next_exposure_end_time.as_ref().map(|t| t.0),
        Some(t("2026-11-05T00:00:00Z"))
    );
    assert!(!w.events.contains(&"RunsSkipped"));
}

#[test]
fn a_run_waits_until_its_tables_are_delivered_past_its_fire_time() {
    let mut w = World::new("2026-11-02T01:00:00Z");
    w.o.deliveries = vec![TableDelivery {
        table: "FactTable/purchases".into(),
        delivered_until: Some(t("2026-11-01T20:00:00Z")),
    }];
    let decision = w.settle();
    assert!(w.created.is_empty());
    let waiting = w.activity().waiting.unwrap();
    assert_eq!(waiting.table, "FactTable/purchases");
    assert_eq!(waiting.need_data_until_time.0, t("2026-11-02T00:00:00Z"));
    assert_eq!(
        waiting.data_delivered_until_time.map(|t| t.0),
        Some(t("2026-11-01T20:00:00Z"))
    );
    assert_eq!(w.reason("Waiting"), Some("DataNotDelivered"));
    assert!(decision.wake_at().is_some());
    assert_eq!(w.events, ["Waiting"]);

    w.o.deliveries[0].delivered_until = Some(t("2026-11-02T00:00:00Z"));
    w.settle();
    assert_eq!(w.created_names(), ["daily-0-0"]);
    assert_eq!(w.reason("Waiting"), Some("DataDelivered"));
}

#[test]
fn data_that_lags_by_more_than_an_interval_still_gets_runs() {
    // Hourly runs over a table delivered until now − 2h (an assumed lag).
    let mut w = World::with_grid("2026-11-01T03:30:00Z", &[1], None);
    let lagged = |now: &str| TableDelivery {
        table: "FactTable/purchases".into(),
        delivered_until: Some(t(now) - SignedDuration::from_hours(2)),
    };
    w.o.deliveries = vec![lagged("2026-11-01T03:30:00Z")];
    w.settle();
    // Runs 0 (01:00) and 1 (02:00) were due; 01:00 is delivered, 02:00 not yet.
    assert_eq!(w.created_names(), ["daily-0-0"]);
    for (now, made) in [
        ("2026-11-01T04:30:00Z", "daily-0-1"),
        ("2026-11-01T05:30:00Z", "daily-0-2"),
    ] {
        w.finish_all();
        w.at(now).o.deliveries = vec![lagged(now)];
        w.settle();
        assert_eq!(w.created_names().last(), Some(&made), "at {now}");
    }
    // Before any run's data is in, it waits for the first one due.
    let mut w = World::with_grid("2026-11-01T01:30:00Z", &[1], None);
    w.o.deliveries = vec![lagged("2026-11-01T01:30:00Z")];
    w.settle();
    assert!(w.created.is_empty());
    let waiting = w.activity().waiting.unwrap();
    assert_eq!(waiting.need_data_until_time.0, t("2026-11-01T01:00:00Z"));
}

#[test]
fn at_most_one_child_runs_and_a_late_finish_catches_up_once() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    // Two more runs come due while the first still runs.
    w.at("2026-11-04T01:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0"]);
    assert_eq!(
        w.activity().calculating.unwrap().metric_calculation,
        "daily-0-0"
    );
    w.finish("daily-0-0", Completed);
    w.settle();
    assert_eq!(w.created_names(), ["daily-0-0", "daily-0-2"]);
    assert_eq!(w.reason("RunsSkipped"), Some("CaughtUp"));
}

/// The notes of the events a decision on the world as it stands would publish.
fn notes(w: &World) -> Vec<String> {
    decide_schedule(&w.o)
        .actions
        .into_iter()
        .filter_map(|action| match action {
            ScheduleAction::Event { note, .. } => Some(note),
            _ => None,
        })
        .collect()
}

#[test]
fn runs_due_before_the_schedule_was_created_are_not_reported_skipped() {
    // Created on the 6th at noon with a start on the 1st: runs 0..=4 are due.
    let mut w = World::new("2026-11-06T12:00:00Z");
    w.o.created = Some(t("2026-11-06T12:00:00Z"));
    assert!(
        notes(&w)
            .iter()
            .any(|n| n.contains("covers the 4 run(s) due before it was created")),
        "{:?}",
        notes(&w)
    );
    w.settle();
    assert_eq!(w.created_names(), ["daily-0-4"]);
    assert_eq!(
        w.o.status.last_scheduled_run_time.as_ref().map(|t| t.0),
        Some(t("2026-11-06T00:00:00Z"))
    );
    assert!(!w.events.contains(&"RunsSkipped"), "{:?}", w.events);
    assert_eq!(w.reason("RunsSkipped"), None);

    // Created on the 4th at noon, first seen on the 6th at noon: of runs 0..=3 due
    // before run 4, only run 3 (the 5th) came due while the schedule existed.
    let mut w = World::new("2026-11-06T12:00:00Z");
    w.o.created = Some(t("2026-11-04T12:00:00Z"));
    w.settle();
    assert_eq!(w.created_names(), ["daily-0-4"]);
    let skipped =
        w.o.status
            .conditions
            .iter()
            .find(|c| c.type_ == "RunsSkipped")
            .unwrap();
    assert!(
        skipped.message.starts_with("1 earlier run(s)"),
        "{}",
        skipped.message
    );
}

#[test]
fn downtime_across_several_fire_times_makes_one_catch_up_run() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.finish_all();
    w.settle();
    // The controller was down from the 2nd to the 6th at noon: runs 1..=4 were due.
    w.at("2026-11-06T12:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0", "daily-0-4"]);
    let skipped =
        w.o.status
            .conditions
            .iter()
            .find(|c| c.type_ == "RunsSkipped")
            .unwrap();
    assert_eq!(skipped.status, "True");
    assert!(
        skipped.message.starts_with("3 earlier run(s)"),
        "{}",
        skipped.message
    );
    assert!(w.events.contains(&"RunsSkipped"));
    assert_eq!(
        w.o.status.next_scheduled_run_time.as_ref().map(|t| t.0),
        Some(t("2026-11-07T00:00:00Z"))
    );
    // The next on-time run clears the condition.
    w.finish_all();
    w.at("2026-11-07T00:00:00Z").settle();
    assert_eq!(w.reason("RunsSkipped"), Some("OnTime"));
}

#[test]
fn a_child_created_before_a_lost_status_write_is_adopted_not_duplicated() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.finish_all();
    w.settle();
    let before = w.o.status.clone();
    // Run 1 is created, then the controller dies before writing status.
    w.at("2026-11-03T00:00:00Z");
    let decision = decide_schedule(&w.o);
    let run = decision
        .actions
        .iter()
        .find_map(|a| match a {
            ScheduleAction::CreateRun(run) => Some(run),
            _ => None,
        })
        .unwrap();
    w.o.children.push(Child {
        name: run.name.clone(),
        iteration: run.iteration,
        run: run.run,
        fire_time: run.fire_time,
        state: None,
        cancel_requested: false,
        definition: Some("v1".into()),
        retrigger: None,
    });
    assert_eq!(w.o.status, before);
    w.at("2026-11-03T00:01:00Z").settle();
    assert!(w.created.iter().all(|r| r.name != "daily-0-1"));
    assert_eq!(w.o.status.latest_calculation.as_deref(), Some("daily-0-1"));
    assert_eq!(w.o.status.executed_calculations_count, Some(2));
    assert_eq!(
        w.o.status.next_scheduled_run_time.as_ref().map(|t| t.0),
        Some(t("2026-11-04T00:00:00Z"))
    );
}

#[test]
fn cancel_stops_runs_and_cancels_the_running_child() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.o.cancel_requested = true;
    w.at("2026-11-02T00:00:05Z").settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Cancelled));
    assert_eq!(w.cancelled, ["daily-0-0"]);
    assert_eq!(
        w.activity().cancelled.unwrap().cancelled_time.0,
        t("2026-11-02T00:00:05Z")
    );
    assert_eq!(w.o.status.next_scheduled_run_time, None);
    w.finish("daily-0-0", Cancelled);
    w.at("2026-11-05T00:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0"]);
}

#[test]
fn resume_runs_next_from_now_removes_both_annotations_and_is_idempotent() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.finish_all();
    w.o.cancel_requested = true;
    w.settle();
    // Resumed on the 5th at noon: runs due on the 3rd..5th are not made.
    w.o.resume_requested = true;
    w.at("2026-11-05T12:00:00Z");
    let decision = w.step();
    assert_eq!(w.o.status.state, Some(ScheduleState::Active));
    assert!(!w.o.cancel_requested && !w.o.resume_requested);
    // The status is written over the version the decision saw, so before the
    // annotations are removed.
    let position = |f: fn(&ScheduleAction) -> bool| decision.actions.iter().position(f).unwrap();
    assert!(
        position(|a| matches!(a, ScheduleAction::SetStatus(_)))
            < position(|a| matches!(a, ScheduleAction::RemoveAnnotations(_)))
    );
    assert_eq!(decision.wake_at(), Some(t("2026-11-06T00:00:00Z")));
    assert_eq!(w.created_names(), ["daily-0-0"]);
    // Resuming again (or an annotation the controller has not seen removed yet).
    w.o.resume_requested = true;
    let events = w.events.len();
    w.step();
    assert_eq!(
        w.events.len(),
        events,
        "resuming an active schedule says nothing"
    );
    assert_eq!(w.created_names(), ["daily-0-0"]);
    w.at("2026-11-06T00:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0", "daily-0-4"]);
    assert!(!w.events.contains(&"RunsSkipped"));
}

#[test]
fn removing_the_cancel_annotation_resumes() {
    let mut w = World::new("2026-11-01T12:00:00Z");
    w.settle();
    w.o.cancel_requested = true;
    w.settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Cancelled));
    w.o.cancel_requested = false;
    w.at("2026-11-03T12:00:00Z").settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Active));
    assert_eq!(w.reason("Active"), Some("Resumed"));
    assert!(w.created.is_empty());
    assert_eq!(
        w.o.status.next_scheduled_run_time.as_ref().map(|t| t.0),
        Some(t("2026-11-04T00:00:00Z"))
    );
}

#[test]
fn the_schedule_ends_at_its_end_time_and_cannot_be_resumed() {
    let mut w = World::with_grid("2026-11-02T00:00:00Z", &[24], Some("2026-11-03T06:00:00Z"));
    w.settle();
    w.finish_all();
    w.at("2026-11-03T00:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0", "daily-0-1"]);
    assert_eq!(w.o.status.state, Some(ScheduleState::Active));
    w.finish_all();
    // After the last run, the schedule stays active until its end time.
    let decision = w.at("2026-11-03T00:10:00Z").settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Active));
    assert_eq!(w.reason("Active"), Some("LastRunMade"));
    assert_eq!(w.o.status.next_scheduled_run_time, None);
    assert_eq!(decision.wake_at(), Some(t("2026-11-03T06:00:00Z")));
    w.at("2026-11-03T06:00:00Z").settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Cancelled));
    assert_eq!(w.reason("Active"), Some("ScheduleEnded"));
    assert!(w.activity().cancelled.is_some());
    w.o.resume_requested = true;
    w.at("2026-11-10T00:00:00Z").step();
    assert_eq!(w.o.status.state, Some(ScheduleState::Cancelled));
    assert!(w.events.contains(&"ResumeIgnored"));
    assert!(!w.o.resume_requested);
    assert_eq!(w.created.len(), 2);
    // A later end time (a new generation) brings it back.
    w.o.generation = 2;
    w.o.grid = Ok(RunGrid::new(
        t("2026-11-01T00:00:00Z"),
        &[SignedDuration::from_hours(24)],
        Some(t("2026-12-01T00:00:00Z")),
    )
    .unwrap());
    w.settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Active));
    assert_eq!(w.created_names().last(), Some(&"daily-0-8"));
}

/// A daily schedule ending at 06:00 on its second day, after both of its runs.
fn waiting_for_its_end() -> World {
    let mut w = World::with_grid("2026-11-02T00:00:00Z", &[24], Some("2026-11-03T06:00:00Z"));
    w.settle();
    w.finish_all();
    w.at("2026-11-03T00:00:00Z").settle();
    w.finish_all();
    w.at("2026-11-03T00:10:00Z").settle();
    w
}

#[test]
fn a_schedule_whose_template_broke_after_its_last_run_still_ends_on_time() {
    let mut w = waiting_for_its_end();
    assert_eq!(w.reason("Active"), Some("LastRunMade"));
    w.o.definition = Err("Metric/revenue does not exist".into());
    let decision = w.at("2026-11-03T01:00:00Z").settle();
    assert_eq!(decision.wake_at(), Some(t("2026-11-03T06:00:00Z")));
    w.at("2026-11-03T06:00:00Z").settle();
    assert_eq!(w.o.status.state, Some(ScheduleState::Cancelled));
    assert_eq!(w.reason("Active"), Some("ScheduleEnded"));
}

#[test]
fn deleting_the_last_run_while_the_schedule_waits_for_its_end_does_not_remake_it() {
    let mut w = waiting_for_its_end();
    let executed = w.o.status.executed_calculations_count;
    w.o.children.retain(|c| c.name != "daily-0-1");
    w.at("2026-11-03T01:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0", "daily-0-1"]);
    assert_eq!(w.o.status.executed_calculations_count, executed);
    assert_eq!(w.reason("Active"), Some("LastRunMade"));
}

#[test]
fn new_intervals_give_the_coming_runs_names_of_their_own() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    for day in 2..=6 {
        w.at(&format!("2026-11-{day:02}T00:00:00Z")).settle();
        w.finish_all();
    }
    assert_eq!(w.created.len(), 5);
    // Every two days from now on: run 2 of the new grid fires on the 7th, a name
    // (daily-0-2) the run of the 4th already has.
    w.o.generation = 2;
    w.o.grid = Ok(RunGrid::new(
        t("2026-11-01T00:00:00Z"),
        &[SignedDuration::from_hours(48)],
        None,
    )
    .unwrap());
    w.at("2026-11-06T01:00:00Z").settle();
    for day in [7, 9] {
        w.at(&format!("2026-11-{day:02}T00:00:00Z")).settle();
        w.finish_all();
    }
    let made: Vec<_> = w.created[5..]
        .iter()
        .map(|r| (r.name.as_str(), r.fire_time))
        .collect();
    assert_eq!(
        made,
        [
            ("daily-1-2", t("2026-11-07T00:00:00Z")),
            ("daily-1-3", t("2026-11-09T00:00:00Z")),
        ]
    );
    assert_eq!(w.o.status.latest_calculation.as_deref(), Some("daily-1-3"));
    assert_eq!(w.o.status.executed_calculations_count, Some(7));
}

#[test]
fn children_beyond_the_history_limits_are_deleted_oldest_first() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.o.history_limit = 2;
    w.o.failed_history_limit = 1;
    let outcomes = [Completed, Failed, Completed, Failed, Cancelled, Completed];
    for (day, state) in outcomes.iter().enumerate() {
        w.at(&format!("2026-11-{:02}T00:00:00Z", day + 2)).settle();
        let name = w.created.last().unwrap().name.clone();
        w.finish(&name, *state);
        w.settle();
    }
    let left: Vec<_> = w.o.children.iter().map(|c| c.name.as_str()).collect();
    // Completed/cancelled keep 2 (runs 4 and 5), failed keep 1 (run 3).
    assert_eq!(left, ["daily-0-3", "daily-0-4", "daily-0-5"]);
    // Each was deleted as soon as a newer run of its kind pushed it over the limit.
    assert_eq!(w.deleted, ["daily-0-1", "daily-0-0", "daily-0-2"]);
}

#[test]
fn a_changed_definition_starts_an_iteration_that_supersedes_the_newest_run() {
    let mut w = World::new("2026-11-03T00:00:00Z");
    w.settle();
    w.finish_all();
    w.settle();
    w.o.definition = Ok("v2".into());
    w.at("2026-11-03T08:00:00Z").settle();
    let run = w.created.last().unwrap().clone();
    assert_eq!(run.name, "daily-1-1");
    assert_eq!((run.iteration, run.run), (1, 1));
    assert_eq!(run.fire_time, t("2026-11-03T00:00:00Z"));
    assert_eq!(run.superseeds.as_deref(), Some("daily-0-1"));
    assert_eq!(w.superseded, [("daily-0-1".into(), "daily-1-1".into())]);
    assert_eq!(w.o.status.iteration, Some(1));
    // Later runs belong to the new iteration.
    w.finish_all();
    w.at("2026-11-04T00:00:00Z").settle();
    assert_eq!(w.created_names().last(), Some(&"daily-1-2"));
}

#[test]
fn a_retrigger_recomputes_once_and_its_annotation_is_removed() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.finish_all();
    w.o.retrigger = Some("2026-11-02T03:00:00Z".into());
    w.at("2026-11-02T03:00:00Z").settle();
    assert_eq!(w.created_names(), ["daily-0-0", "daily-1-0"]);
    assert_eq!(w.o.retrigger, None);
    // The annotation reappears as before its removal was seen: nothing more.
    w.o.retrigger = Some("2026-11-02T03:00:00Z".into());
    w.finish_all();
    w.step();
    assert_eq!(w.created.len(), 2);
    assert_eq!(w.o.retrigger, None);
}

#[test]
fn an_unresolvable_template_is_an_error_and_makes_no_run() {
    let mut w = World::new("2026-11-03T00:00:00Z");
    w.o.definition = Err("Metric/revenue does not exist".into());
    w.settle();
    assert!(w.created.is_empty());
    assert_eq!(
        w.activity().error.unwrap().error_message,
        "Metric/revenue does not exist"
    );
    assert_eq!(w.reason("Ready"), Some("InvalidCalculation"));
    assert_eq!(w.events, ["InvalidCalculation"]);
    w.o.definition = Ok("v1".into());
    w.settle();
    assert_eq!(w.created_names(), ["daily-0-1"]);
    assert_eq!(w.reason("Ready"), Some("Resolved"));
}

#[test]
fn a_new_generation_recomputes_the_next_run_from_the_last_one_made() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.finish_all();
    w.settle();
    w.o.generation = 2;
    w.o.grid = Ok(RunGrid::new(
        t("2026-11-01T00:00:00Z"),
        &[
            SignedDuration::from_hours(24),
            SignedDuration::from_hours(6),
        ],
        None,
    )
    .unwrap());
    w.settle();
    assert_eq!(
        w.o.status.next_scheduled_run_time.as_ref().map(|t| t.0),
        Some(t("2026-11-02T06:00:00Z"))
    );
    assert_eq!(w.o.status.observed_generation, Some(2));
}

#[test]
fn child_names_are_deterministic_and_bounded() {
    assert_eq!(child_name("daily", 0, 3), "daily-0-3");
    let long = "s".repeat(260);
    let name = child_name(&long, 2, 41);
    assert!(name.len() <= 253 && name.ends_with("-2-41"));
    assert_eq!(name, child_name(&long, 2, 41));
}

#[test]
fn a_retrigger_of_a_cancelled_schedule_is_refused_and_its_annotation_removed() {
    let mut w = World::new("2026-11-02T00:00:00Z");
    w.settle();
    w.finish_all();
    w.o.cancel_requested = true;
    w.o.retrigger = Some("now".into());
    w.settle();
    assert_eq!(w.o.retrigger, None);
    assert!(w.events.contains(&"RetriggerIgnored"));
    assert_eq!(w.created_names(), ["daily-0-0"]);
}

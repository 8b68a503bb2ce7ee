//! The ScheduledMetricCalculation lifecycle as a pure function: what is observed → what
//! to do, and when to look again.
//!
//! All schedule truth lives in status (`nextScheduledRunTime`, `iteration`,
//! `latestCalculation`, `executedCalculationsCount`) and in the children, whose names
//! are deterministic: a wake-up timer only prompts a reconcile, it never records
//! anything. A child created just before a restart, before its status write, is
//! adopted rather than made again.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::conditions::{condition, reason_of, set_condition};
use super::names;
use super::readiness::{TableDelivery, first_undelivered};
use crate::api::{
    Calculating, CalculationState, RETRIGGER_ANNOTATION, ScheduleActivity, ScheduleCancelled,
    ScheduleError, ScheduleState, Scheduled, ScheduledMetricCalculationStatus, WaitingForData,
};
use crate::schedule::RunGrid;

pub const DEFAULT_HISTORY_LIMIT: usize = 5;
pub const DEFAULT_FAILED_HISTORY_LIMIT: usize = 3;

/// Condition types of a schedule.
const ACTIVE: &str = "Active";
const READY: &str = "Ready";
const WAITING: &str = "Waiting";
const RUNS_SKIPPED: &str = "RunsSkipped";

/// Reasons of the `Active` condition that distinguish how a schedule was cancelled.
const CANCELLED: &str = "Cancelled";
const SCHEDULE_ENDED: &str = "ScheduleEnded";

/// A MetricCalculation the schedule made.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub name: String,
    pub iteration: i64,
    pub run: u64,
    /// The run's fire time: its `endTime`.
    pub fire_time: Timestamp,
    pub state: Option<CalculationState>,
    pub cancel_requested: bool,
    /// Fingerprint of the definition it was made from.
    pub definition: Option<String>,
    /// The `tally.dev/retrigger` value that made it, if a retrigger did.
    pub retrigger: Option<String>,
}

impl Child {
    fn is_finished(&self) -> bool {
        self.state.is_some_and(CalculationState::is_terminal)
    }

    fn order(&self) -> (i64, u64) {
        (self.iteration, self.run)
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleObserved {
    pub name: String,
    pub generation: i64,
    pub grid: Result<RunGrid, String>,
    pub history_limit: usize,
    pub failed_history_limit: usize,
    pub status: ScheduledMetricCalculationStatus,
    pub cancel_requested: bool,
    pub resume_requested: bool,
    pub retrigger: Option<String>,
    pub children: Vec<Child>,
    /// Fingerprint of what a run computes now (template and metric), or why the
    /// template does not resolve.
    pub definition: Result<String, String>,
    /// Delivery marks of the tables a run reads.
    pub deliveries: Vec<TableDelivery>,
    /// When the schedule was created: runs due before then were never missed.
    pub created: Option<Timestamp>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleAction {
    SetStatus(Box<ScheduledMetricCalculationStatus>),
    /// Create the child MetricCalculation of a run.
    CreateRun(NewRun),
    /// Record on a finished child that a newer run replaces it.
    MarkSuperseded {
        name: String,
        by: String,
    },
    /// Ask a running child to cancel (its own controller stops its Job).
    CancelRun(String),
    /// Delete a child beyond the history limits.
    DeleteRun(String),
    /// Remove these annotations from the schedule.
    RemoveAnnotations(Vec<&'static str>),
    Event {
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub name: String,
    pub iteration: i64,
    pub run: u64,
    pub fire_time: Timestamp,
    pub superseeds: Option<String>,
    pub retrigger: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScheduleDecision {
    pub actions: Vec<ScheduleAction>,
    /// Reconcile again at this time even if nothing changes.
    pub wake_at: Option<Timestamp>,
}

/// The deterministic name of a run's MetricCalculation.
pub fn child_name(schedule: &str, iteration: i64, run: u64) -> String {
    names::bounded(schedule, &format!("-{iteration}-{run}"), 253)
}

fn event(reason: &'static str, note: impl Into<String>) -> ScheduleAction {
    ScheduleAction::Event {
        warning: false,
        reason,
        note: note.into(),
    }
}

fn warning(reason: &'static str, note: impl Into<String>) -> ScheduleAction {
    ScheduleAction::Event {
        warning: true,
        reason,
        note: note.into(),
    }
}

/// Builds the decision while tracking the status it moves to.
struct Decider<'a> {
    o: &'a ScheduleObserved,
    status: ScheduledMetricCalculationStatus,
    actions: Vec<ScheduleAction>,
    wake_at: Option<Timestamp>,
}

impl<'a> Decider<'a> {
    fn condition(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            condition(type_, value, reason, message, self.o.generation, self.o.now),
        );
    }

    fn activity(&mut self, activity: ScheduleActivity) {
        self.status.status = Some(activity);
    }

    fn next_run_time(&self) -> Option<Timestamp> {
        self.status.next_scheduled_run_time.as_ref().map(|t| t.0)
    }

    /// Sets the next run and the exposure window it will cover.
    fn set_next(&mut self, grid: &RunGrid, run: Option<u64>) {
        let at = run.and_then(|r| grid.fire_time(r));
        self.status.next_scheduled_run_time = at.map(Time);
        self.status.next_exposure_start_time = at.map(|_| Time(grid.start()));
        self.status.next_exposure_end_time = at.map(Time);
    }

    fn newest(&self) -> Option<&'a Child> {
        self.o.children.iter().max_by_key(|c| c.order())
    }

    fn running(&self) -> Option<&'a Child> {
        self.o.children.iter().find(|c| !c.is_finished())
    }

    fn cancelled_by(&self) -> Option<&str> {
        match self.status.state {
            Some(ScheduleState::Cancelled) => {
                Some(reason_of(&self.status.conditions, ACTIVE).unwrap_or(CANCELLED))
            }
            _ => None,
        }
    }

    fn cancel(&mut self, reason: &'static str, message: &str) {
        self.status.state = Some(ScheduleState::Cancelled);
        self.status.next_scheduled_run_time = None;
        self.status.next_exposure_start_time = None;
        self.status.next_exposure_end_time = None;
        self.activity(ScheduleActivity {
            cancelled: Some(ScheduleCancelled {
                cancelled_time: Time(self.o.now),
            }),
            ..ScheduleActivity::default()
        });
        self.condition(ACTIVE, false, reason, message);
        self.condition(WAITING, false, reason, "");
        self.actions.push(event(reason, message));
    }

    /// Active again, the next run the first after now: runs due while the schedule was
    /// cancelled are not made.
    fn resume(&mut self, grid: &RunGrid) {
        self.status.state = Some(ScheduleState::Active);
        let next = grid.first_after(self.o.now);
        self.set_next(grid, next);
        let message = match self.next_run_time() {
            Some(at) => format!("resumed; the next run fires at {at}"),
            None => "resumed; no run is left before scheduleEndTime".to_string(),
        };
        self.condition(ACTIVE, true, "Resumed", &message);
        self.actions.push(event("Resumed", message));
    }

    /// Records a child the status does not know yet (created just before a restart).
    fn adopt(&mut self, grid: &RunGrid) {
        let Some(newest) = self.newest() else {
            return;
        };
        let known = self.status.latest_calculation.as_deref() == Some(newest.name.as_str());
        let newer_iteration = newest.iteration > self.status.iteration.unwrap_or(0);
        // Without a next run (the last one is made, or the schedule is cancelled) no
        // run is created, so a child the status does not name is an older one whose
        // successor was deleted, not a new one.
        let not_yet_counted = match self.next_run_time() {
            Some(next) => next <= newest.fire_time,
            None => self.status.latest_calculation.is_none(),
        };
        if known || !(newer_iteration || not_yet_counted) {
            return;
        }
        self.status.latest_calculation = Some(newest.name.clone());
        self.status.iteration = Some(newest.iteration.max(self.status.iteration.unwrap_or(0)));
        self.status.executed_calculations_count =
            Some(self.status.executed_calculations_count.unwrap_or(0) + 1);
        if self.status.state != Some(ScheduleState::Cancelled) {
            self.set_next(grid, grid.first_after(newest.fire_time));
        }
    }

    /// A new generation: next run times come from the new spec, counted from the last
    /// run made.
    fn replan(&mut self, grid: &RunGrid) {
        // Runs are named by iteration and run index. When the new grid gives a run
        // index already made another fire time (new intervals or start), the coming
        // runs would take names of runs that covered other windows: a new iteration
        // gives them names of their own.
        let iteration = self.status.iteration.unwrap_or(0);
        let moved = self
            .o
            .children
            .iter()
            .any(|c| c.iteration == iteration && grid.fire_time(c.run) != Some(c.fire_time));
        if moved {
            let newest = self.newest().map_or(0, |c| c.iteration);
            self.status.iteration = Some(iteration.max(newest) + 1);
        }
        let next = match self.newest() {
            Some(newest) => grid.first_after(newest.fire_time),
            None => Some(0),
        };
        if self.status.state == Some(ScheduleState::Cancelled) {
            if self.cancelled_by() == Some(SCHEDULE_ENDED) && next.is_some() {
                // A later end time brings an ended schedule back.
                self.status.state = Some(ScheduleState::Active);
                self.condition(ACTIVE, true, "Scheduled", "scheduleEndTime was extended");
            } else {
                return;
            }
        }
        self.set_next(grid, next);
    }

    fn start_run(&mut self, run: NewRun, note: String) {
        self.status.latest_calculation = Some(run.name.clone());
        self.status.last_scheduled_run_time = Some(Time(run.fire_time));
        self.status.iteration = Some(run.iteration);
        self.status.executed_calculations_count =
            Some(self.status.executed_calculations_count.unwrap_or(0) + 1);
        self.activity(ScheduleActivity {
            calculating: Some(Calculating {
                metric_calculation: run.name.clone(),
            }),
            ..ScheduleActivity::default()
        });
        self.condition(WAITING, false, "DataDelivered", "");
        self.actions.push(event("RunCreated", note));
        let exists = self.o.children.iter().any(|c| c.name == run.name);
        if !exists {
            self.actions.push(ScheduleAction::CreateRun(run));
        }
    }

    /// A changed definition or a retrigger: a new iteration whose first run recomputes
    /// the newest run and supersedes it. Returns whether it started one.
    fn new_iteration(&mut self) -> bool {
        let Ok(definition) = &self.o.definition else {
            return false;
        };
        let retrigger = self.o.retrigger.as_ref();
        let Some(newest) = self.newest() else {
            if retrigger.is_some() {
                self.actions.push(ScheduleAction::RemoveAnnotations(vec![
                    RETRIGGER_ANNOTATION,
                ]));
                self.actions.push(event(
                    "RetriggerIgnored",
                    "no run has been made yet: nothing to recompute",
                ));
            }
            return false;
        };
        let retrigger_done = retrigger.is_some() && newest.retrigger.as_ref() == retrigger;
        if retrigger_done {
            self.actions.push(ScheduleAction::RemoveAnnotations(vec![
                RETRIGGER_ANNOTATION,
            ]));
        }
        let changed = newest.definition.as_ref().is_some_and(|d| d != definition);
        let retriggered = retrigger.is_some() && !retrigger_done;
        if !changed && !retriggered {
            return false;
        }
        let iteration = self.status.iteration.unwrap_or(0).max(newest.iteration) + 1;
        let name = child_name(&self.o.name, iteration, newest.run);
        let why = if retriggered {
            "the tally.dev/retrigger annotation"
        } else {
            "a changed metric definition"
        };
        let note = format!(
            "iteration {iteration} after {why}: {name} recomputes run {} and supersedes {}",
            newest.run, newest.name
        );
        self.actions.push(ScheduleAction::MarkSuperseded {
            name: newest.name.clone(),
            by: name.clone(),
        });
        self.start_run(
            NewRun {
                name,
                iteration,
                run: newest.run,
                fire_time: newest.fire_time,
                superseeds: Some(newest.name.clone()),
                retrigger: retrigger.filter(|_| retriggered).cloned(),
            },
            note,
        );
        if retriggered {
            self.actions.push(ScheduleAction::RemoveAnnotations(vec![
                RETRIGGER_ANNOTATION,
            ]));
        }
        true
    }

    /// The active schedule: end it, make the due run, wait for data, or wait for its
    /// time.
    fn active(&mut self, grid: &RunGrid) {
        // Past its end time with no run left or running, a schedule ends whatever
        // else holds it (a template that no longer resolves, say).
        let next_run = self.next_run_time().and_then(|t| grid.first_at_or_after(t));
        if next_run.is_none()
            && self.running().is_none()
            && let Some(end) = grid.end()
            && self.o.now >= end
        {
            self.cancel(
                SCHEDULE_ENDED,
                &format!("scheduleEndTime {end} has passed; no run is left"),
            );
            return;
        }
        if let Err(message) = &self.o.definition {
            let message = message.clone();
            let changed = reason_of(&self.status.conditions, READY) != Some("InvalidCalculation")
                || self
                    .status
                    .status
                    .as_ref()
                    .and_then(|s| s.error.as_ref())
                    .is_none_or(|e| e.error_message != message);
            self.activity(ScheduleActivity {
                error: Some(ScheduleError {
                    error_message: super::conditions::bounded(&message),
                }),
                ..ScheduleActivity::default()
            });
            self.condition(READY, false, "InvalidCalculation", &message);
            if changed {
                self.actions.push(warning("InvalidCalculation", message));
            }
            // Nothing else wakes a schedule whose template stays broken: it must still
            // end on time.
            self.wake_at = grid.end().filter(|end| *end > self.o.now);
            return;
        }
        self.condition(READY, true, "Resolved", "");

        if let Some(running) = self.running() {
            self.activity(ScheduleActivity {
                calculating: Some(Calculating {
                    metric_calculation: running.name.clone(),
                }),
                ..ScheduleActivity::default()
            });
            return;
        }

        if self.new_iteration() {
            return;
        }

        let Some(next_run) = next_run else {
            match grid.end() {
                // The last run is made; the schedule ends at its end time (checked
                // above), not before: until then a new spec can still extend it
                // without a resume.
                Some(end) => {
                    self.set_next(grid, None);
                    self.activity(ScheduleActivity::default());
                    self.condition(
                        ACTIVE,
                        true,
                        "LastRunMade",
                        &format!("no run is left; the schedule ends at scheduleEndTime {end}"),
                    );
                    self.condition(WAITING, false, "LastRunMade", "");
                    self.wake_at = Some(end);
                }
                None => self.cancel(SCHEDULE_ENDED, "no run is left"),
            }
            return;
        };
        let due = grid.latest_due(self.o.now).filter(|&due| due >= next_run);
        let Some(due) = due else {
            let at = grid.fire_time(next_run);
            self.set_next(grid, Some(next_run));
            if let Some(at) = at {
                self.activity(ScheduleActivity {
                    scheduled: Some(Scheduled {
                        next_schedule_time: Time(at),
                    }),
                    ..ScheduleActivity::default()
                });
                self.condition(WAITING, false, "Scheduled", "");
                self.wake_at = Some(at);
            }
            return;
        };
        // The latest due run whose data is delivered. With data that lags by more than
        // an interval, the latest due run is never delivered when it is due; an earlier
        // one is, and is made rather than waiting forever.
        let deliveries = &self.o.deliveries;
        let delivered = |run: u64| {
            grid.fire_time(run)
                .is_some_and(|at| first_undelivered(deliveries, at).is_none())
        };
        let mark = deliveries.iter().map(|t| t.delivered_until).min().flatten();
        let lagging = mark
            .and_then(|mark| grid.latest_due(mark))
            .filter(|&run| run >= next_run && run < due);
        let ready = [Some(due), lagging, Some(next_run)]
            .into_iter()
            .flatten()
            .find(|&run| delivered(run));
        let Some(due) = ready else {
            let Some(need) = grid.fire_time(next_run) else {
                return;
            };
            let Some(wait) = first_undelivered(deliveries, need) else {
                return;
            };
            let message = wait.message();
            let was_waiting = self
                .status
                .status
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .is_some_and(|w| w.table == wait.table && w.need_data_until_time.0 == need);
            self.activity(ScheduleActivity {
                waiting: Some(WaitingForData {
                    table: wait.table.clone(),
                    need_data_until_time: Time(wait.need_until),
                    data_delivered_until_time: wait.delivered_until.map(Time),
                }),
                ..ScheduleActivity::default()
            });
            self.condition(WAITING, true, "DataNotDelivered", &message);
            if !was_waiting {
                self.actions.push(event("Waiting", message));
            }
            // Table edits wake the schedule; the timer covers delivery by assumed lag.
            self.wake_at = Some(self.o.now + jiff::SignedDuration::from_secs(30));
            return;
        };
        let Some(fire_time) = grid.fire_time(due) else {
            return;
        };

        let iteration = self.status.iteration.unwrap_or(0);
        let name = child_name(&self.o.name, iteration, due);
        // Of the runs due before this one, those due before the schedule existed were
        // never missed: a schedule created after its start begins with the latest due
        // run, which covers them.
        let existed_from = self.o.created.map_or(0, |created| {
            grid.first_at_or_after(created).unwrap_or(u64::MAX)
        });
        let before_creation = existed_from.min(due).saturating_sub(next_run);
        let skipped = due - next_run - before_creation;
        let mut note = format!(
            "run {due} fires at {fire_time}: {name} covers exposure from {} until then",
            grid.start()
        );
        if before_creation > 0 {
            note = format!(
                "{note}; the schedule starts with the latest due run, which covers the \
                 {before_creation} run(s) due before it was created (results are cumulative)"
            );
        }
        if skipped > 0 {
            let message = format!(
                "{skipped} earlier run(s) came due while the schedule could not run; run \
                 {due} covers them (results are cumulative)"
            );
            self.condition(RUNS_SKIPPED, true, "CaughtUp", &message);
            self.actions.push(warning("RunsSkipped", message.clone()));
            note = format!("{note}; {message}");
        } else if reason_of(&self.status.conditions, RUNS_SKIPPED).is_some() {
            self.condition(RUNS_SKIPPED, false, "OnTime", "");
        }
        self.set_next(grid, due.checked_add(1));
        self.start_run(
            NewRun {
                name,
                iteration,
                run: due,
                fire_time,
                superseeds: None,
                retrigger: None,
            },
            note,
        );
    }

    /// A retrigger of a cancelled or ended schedule: said, and its annotation removed.
    fn ignore_retrigger(&mut self) {
        if self.o.retrigger.is_some() {
            self.actions.push(ScheduleAction::RemoveAnnotations(vec![
                RETRIGGER_ANNOTATION,
            ]));
            self.actions.push(warning(
                "RetriggerIgnored",
                "the schedule is cancelled or has ended: resume it (or extend scheduleEndTime) to run it again",
            ));
        }
    }

    /// Children beyond the history limits, oldest first; never the newest or a running
    /// one.
    fn prune(&mut self) {
        let newest = self.newest().map(|c| c.name.clone());
        let latest = self.status.latest_calculation.clone();
        let mut finished: Vec<&Child> = self
            .o
            .children
            .iter()
            .filter(|c| c.is_finished())
            .filter(|c| Some(&c.name) != newest.as_ref() && Some(&c.name) != latest.as_ref())
            .collect();
        finished.sort_by_key(|c| c.order());
        let (failed, kept): (Vec<&Child>, Vec<&Child>) = finished
            .into_iter()
            .partition(|c| c.state == Some(CalculationState::Failed));
        // The newest run counts against the limit of its kind too.
        let mut doomed = Vec::new();
        let newest_kind_failed = self
            .newest()
            .filter(|c| c.is_finished())
            .map(|c| c.state == Some(CalculationState::Failed));
        for (list, limit, newest_counts) in [
            (
                kept,
                self.o.history_limit,
                newest_kind_failed == Some(false),
            ),
            (
                failed,
                self.o.failed_history_limit,
                newest_kind_failed == Some(true),
            ),
        ] {
            let limit = limit.saturating_sub(usize::from(newest_counts));
            let excess = list.len().saturating_sub(limit);
            doomed.extend_from_slice(&list[..excess]);
        }
        doomed.sort_by_key(|c| c.order());
        for child in doomed {
            self.actions
                .push(ScheduleAction::DeleteRun(child.name.clone()));
        }
    }
}

/// What to do about a schedule, given what is observed.
pub fn decide_schedule(o: &ScheduleObserved) -> ScheduleDecision {
    use crate::api::{CANCEL_ANNOTATION, RESUME_ANNOTATION};

    let mut d = Decider {
        o,
        status: o.status.clone(),
        actions: Vec::new(),
        wake_at: None,
    };
    let grid = match &o.grid {
        Ok(grid) => grid.clone(),
        Err(message) => {
            d.status.observed_generation = Some(o.generation);
            d.activity(ScheduleActivity {
                error: Some(ScheduleError {
                    error_message: super::conditions::bounded(message),
                }),
                ..ScheduleActivity::default()
            });
            d.condition(READY, false, "InvalidSchedule", message);
            return finish(d, Some(warning("InvalidSchedule", message.clone())));
        }
    };
    if d.status.state.is_none() {
        d.status.state = Some(ScheduleState::Active);
        d.status.iteration = Some(0);
        d.status.executed_calculations_count = Some(0);
        d.condition(ACTIVE, true, "Scheduled", "");
    }
    d.adopt(&grid);
    if d.status.observed_generation != Some(o.generation) {
        d.replan(&grid);
        d.status.observed_generation = Some(o.generation);
    }

    if o.resume_requested {
        d.actions.push(ScheduleAction::RemoveAnnotations(vec![
            RESUME_ANNOTATION,
            CANCEL_ANNOTATION,
        ]));
        match d.cancelled_by() {
            Some(SCHEDULE_ENDED) if grid.first_after(o.now).is_none() => {
                d.actions.push(event(
                    "ResumeIgnored",
                    "the schedule has ended: extend scheduleEndTime to run it again",
                ));
            }
            Some(_) => d.resume(&grid),
            None => {}
        }
    } else if o.cancel_requested {
        if d.status.state != Some(ScheduleState::Cancelled) {
            d.cancel(CANCELLED, "cancelled by the tally.dev/cancel annotation");
        }
        if let Some(running) = d.running().filter(|c| !c.cancel_requested) {
            d.actions
                .push(ScheduleAction::CancelRun(running.name.clone()));
        }
        d.ignore_retrigger();
        d.prune();
        return finish(d, None);
    } else if d.cancelled_by() == Some(CANCELLED) {
        // The cancel annotation was removed (the GitOps way to resume).
        d.resume(&grid);
    }

    if d.status.state == Some(ScheduleState::Active) {
        d.active(&grid);
    } else {
        d.ignore_retrigger();
    }
    d.prune();
    finish(d, None)
}

/// The status is written after the children: a child is created before the status
/// that records it, so a restart in between finds the child and adopts it instead of
/// losing the run. Annotations are removed after the status, which is written only
/// over the version this decision saw: removing them first would make that write a
/// conflict. A restart between the two sees the annotation again, and acting on it a
/// second time changes nothing.
fn finish(mut d: Decider<'_>, extra: Option<ScheduleAction>) -> ScheduleDecision {
    let (removals, mut actions): (Vec<_>, Vec<_>) = std::mem::take(&mut d.actions)
        .into_iter()
        .partition(|a| matches!(a, ScheduleAction::RemoveAnnotations(_)));
    if d.status != d.o.status {
        actions.extend(extra);
        actions.push(ScheduleAction::SetStatus(Box::new(d.status.clone())));
    }
    actions.extend(removals);
    ScheduleDecision {
        actions,
        wake_at: d.wake_at,
    }
}

#[cfg(test)]
mod tests {
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
                    grid: Ok(
                        RunGrid::new(t("2026-11-01T00:00:00Z"), &intervals, end.map(t)).unwrap(),
                    ),
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
        assert_eq!(decision.wake_at, Some(t("2026-11-02T00:00:00Z")));
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
        assert!(decision.wake_at.is_some());
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
        let position =
            |f: fn(&ScheduleAction) -> bool| decision.actions.iter().position(f).unwrap();
        assert!(
            position(|a| matches!(a, ScheduleAction::SetStatus(_)))
                < position(|a| matches!(a, ScheduleAction::RemoveAnnotations(_)))
        );
        assert_eq!(decision.wake_at, Some(t("2026-11-06T00:00:00Z")));
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
        assert_eq!(decision.wake_at, Some(t("2026-11-03T06:00:00Z")));
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
        assert_eq!(decision.wake_at, Some(t("2026-11-03T06:00:00Z")));
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
}

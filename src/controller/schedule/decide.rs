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

use super::grid::RunGrid;
use crate::api::{
    Calculating, CalculationState, RETRIGGER_ANNOTATION, ScheduleActivity, ScheduleCancelled,
    ScheduleError, ScheduleState, Scheduled, ScheduledMetricCalculationStatus, WaitingForData,
};
use crate::controller::decision::{Decision, Requeue};
use crate::controller::plumbing::act::{self, event, warning};
use crate::controller::plumbing::conditions::{self, condition, reason_of, set_condition};
use crate::controller::plumbing::names;
use crate::controller::readiness::{TableDelivery, first_undelivered};

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

/// A schedule's decision: its actions, and the time to look again at (the next run).
pub type ScheduleDecision = Decision<ScheduleAction>;

/// What a run's name, taken when the schedule came to create the run, means.
#[derive(Debug, Clone, PartialEq)]
pub enum TakenName {
    /// The schedule's own run, made before a restart lost its status write: adopted.
    Adopted,
    /// Another object's: the run cannot be made until it is deleted or renamed.
    Taken(String),
    /// Gone since: try again.
    Gone,
}

/// What the calculation found under the name of `run` means; `owned` says whether it
/// is the schedule's (`None`: none is there any more).
pub fn taken_name(run: &NewRun, owned: Option<bool>) -> TakenName {
    match owned {
        Some(true) => TakenName::Adopted,
        Some(false) => TakenName::Taken(format!(
            "MetricCalculation {} exists and does not belong to this schedule: delete or \
             rename it so that run {} can be made",
            run.name, run.run
        )),
        None => TakenName::Gone,
    }
}

/// The deterministic name of a run's MetricCalculation.
pub fn child_name(schedule: &str, iteration: i64, run: u64) -> String {
    names::bounded(schedule, &format!("-{iteration}-{run}"), 253)
}

act::shared_actions!(ScheduleAction, ScheduledMetricCalculationStatus);

/// Builds the decision while tracking the status it moves to.
struct Decider<'a> {
    observed: &'a ScheduleObserved,
    status: ScheduledMetricCalculationStatus,
    actions: Vec<ScheduleAction>,
    wake_at: Option<Timestamp>,
}

impl<'a> Decider<'a> {
    fn condition(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            condition(
                type_,
                value,
                reason,
                message,
                self.observed.generation,
                self.observed.now,
            ),
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
        self.observed.children.iter().max_by_key(|c| c.order())
    }

    fn running(&self) -> Option<&'a Child> {
        self.observed.children.iter().find(|c| !c.is_finished())
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
                cancelled_time: Time(self.observed.now),
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
        let next = grid.first_after(self.observed.now);
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
            .observed
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
        let exists = self.observed.children.iter().any(|c| c.name == run.name);
        if !exists {
            self.actions.push(ScheduleAction::CreateRun(run));
        }
    }

    /// A changed definition or a retrigger: a new iteration whose first run recomputes
    /// the newest run and supersedes it. Returns whether it started one.
    fn new_iteration(&mut self) -> bool {
        let Ok(definition) = &self.observed.definition else {
            return false;
        };
        let retrigger = self.observed.retrigger.as_ref();
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
        let name = child_name(&self.observed.name, iteration, newest.run);
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
            && self.observed.now >= end
        {
            self.cancel(
                SCHEDULE_ENDED,
                &format!("scheduleEndTime {end} has passed; no run is left"),
            );
            return;
        }
        if let Err(message) = &self.observed.definition {
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
                    error_message: conditions::bounded(&message),
                }),
                ..ScheduleActivity::default()
            });
            self.condition(READY, false, "InvalidCalculation", &message);
            if changed {
                self.actions.push(warning("InvalidCalculation", message));
            }
            // Nothing else wakes a schedule whose template stays broken: it must still
            // end on time.
            self.wake_at = grid.end().filter(|end| *end > self.observed.now);
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
        let due = grid
            .latest_due(self.observed.now)
            .filter(|&due| due >= next_run);
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
        let deliveries = &self.observed.deliveries;
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
            self.wake_at = Some(self.observed.now + jiff::SignedDuration::from_secs(30));
            return;
        };
        let Some(fire_time) = grid.fire_time(due) else {
            return;
        };

        let iteration = self.status.iteration.unwrap_or(0);
        let name = child_name(&self.observed.name, iteration, due);
        // Of the runs due before this one, those due before the schedule existed were
        // never missed: a schedule created after its start begins with the latest due
        // run, which covers them.
        let existed_from = self.observed.created.map_or(0, |created| {
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
        if self.observed.retrigger.is_some() {
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
            .observed
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
                self.observed.history_limit,
                newest_kind_failed == Some(false),
            ),
            (
                failed,
                self.observed.failed_history_limit,
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
pub fn decide_schedule(observed: &ScheduleObserved) -> ScheduleDecision {
    use crate::api::{CANCEL_ANNOTATION, RESUME_ANNOTATION};

    let mut d = Decider {
        observed,
        status: observed.status.clone(),
        actions: Vec::new(),
        wake_at: None,
    };
    let grid = match &observed.grid {
        Ok(grid) => grid.clone(),
        Err(message) => {
            d.status.observed_generation = Some(observed.generation);
            d.activity(ScheduleActivity {
                error: Some(ScheduleError {
                    error_message: conditions::bounded(message),
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
    if d.status.observed_generation != Some(observed.generation) {
        d.replan(&grid);
        d.status.observed_generation = Some(observed.generation);
    }

    if observed.resume_requested {
        d.actions.push(ScheduleAction::RemoveAnnotations(vec![
            RESUME_ANNOTATION,
            CANCEL_ANNOTATION,
        ]));
        match d.cancelled_by() {
            Some(SCHEDULE_ENDED) if grid.first_after(observed.now).is_none() => {
                d.actions.push(event(
                    "ResumeIgnored",
                    "the schedule has ended: extend scheduleEndTime to run it again",
                ));
            }
            Some(_) => d.resume(&grid),
            None => {}
        }
    } else if observed.cancel_requested {
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
    if d.status != d.observed.status {
        actions.extend(extra);
        actions.push(ScheduleAction::SetStatus(Box::new(d.status.clone())));
    }
    actions.extend(removals);
    Decision {
        actions,
        requeue: d.wake_at.map_or(Requeue::OnChange, Requeue::At),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

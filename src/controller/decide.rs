//! The MetricCalculation lifecycle as a pure function: what is observed → what to do.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{self, set_condition};
use super::readiness::DataWait;

use crate::api::{CalculationState, MetricCalculationStatus};
use crate::job_contract::{CalculationResult, complete};
use crate::plan::{CalculationPlan, PlanError};

/// What the calculation's Job looks like now.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// No Job of this name exists.
    Missing,
    Running,
    /// It exists, but its Pod cannot be created (a quota, an admission webhook, Pod
    /// Security): the message of the Job controller's `FailedCreate` Event.
    PodsNotCreated(String),
    /// Completed; the result ConfigMap's content, or why it could not be read.
    Succeeded(Result<CalculationResult, String>),
    /// Failed after its retries; the worker's termination message.
    Failed(String),
    /// A Job of this name exists but another object owns it: an earlier calculation of
    /// the same name, deleted while its Job was kept.
    Foreign,
}

/// The schedule that made a calculation, from the calculation's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleOrigin {
    pub schedule: String,
    pub iteration: Option<i64>,
    pub superseeds: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Observed {
    pub generation: i64,
    pub status: MetricCalculationStatus,
    pub cancel_requested: bool,
    /// The plan for the current generation, or why there is none.
    pub plan: Result<CalculationPlan, PlanError>,
    pub waiting: Option<DataWait>,
    /// The name of the Job for the current generation, and its state.
    pub job_name: String,
    pub job: JobState,
    pub origin: Option<ScheduleOrigin>,
    /// The ServiceAccount the Job would run as, when it does not exist in the
    /// calculation's namespace (looked up only before a Job is created).
    pub missing_service_account: Option<MissingServiceAccount>,
    /// Why the controller's Job policy refuses the Warehouse's Job settings.
    pub job_refused: Option<String>,
    /// Why the API server refused to create the Job (a 4xx other than a conflict:
    /// a quota, an admission webhook, an invalid volume), after trying.
    pub job_create_refused: Option<String>,
    /// When the calculation was created.
    pub created: Option<Timestamp>,
    pub now: Timestamp,
}

/// How long a new calculation waits for what it refers to before a missing reference
/// is a Warning: `kubectl apply -f` of a directory creates the calculation and its
/// Metric in any order, and one that appears a moment later is no problem.
pub const REFERENCE_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct MissingServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Replace the status with this one.
    SetStatus(Box<MetricCalculationStatus>),
    /// Create the Job for the current generation from this plan.
    CreateJob(Box<CalculationPlan>),
    /// Delete this Job (background propagation: its Pods get SIGTERM).
    DeleteJob(String),
    Event {
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, o: &Observed) -> Condition {
    conditions::condition(type_, status, reason, message, o.generation, o.now)
}

/// The status with a new state and the conditions that describe it.
fn transition(
    o: &Observed,
    state: CalculationState,
    reason: &str,
    message: &str,
) -> MetricCalculationStatus {
    let mut status = o.status.clone();
    status.state = Some(state);
    status.observed_generation = Some(o.generation);
    if let Some(origin) = &o.origin {
        status.schedule = Some(origin.schedule.clone());
        status.schedule_iteration = origin.iteration;
        if status.superseeds.is_none() {
            status.superseeds = origin.superseeds.clone();
        }
    }
    let (ready, running, waiting, failed, cancelled) = match state {
        CalculationState::Completed => (true, false, false, false, false),
        CalculationState::Running | CalculationState::Cancelling => {
            (false, true, false, false, false)
        }
        CalculationState::Waiting => (false, false, true, false, false),
        CalculationState::Failed => (false, false, false, true, false),
        CalculationState::Cancelled => (false, false, false, false, true),
        CalculationState::Pending => (false, false, false, false, false),
    };
    for (type_, value) in [
        ("Ready", ready),
        ("Running", running),
        ("Waiting", waiting),
        ("Failed", failed),
        ("Cancelled", cancelled),
    ] {
        // A condition that holds, and Ready, say why with the transition's reason; one
        // that does not hold says why not in its own terms.
        let (reason, message) = if value || type_ == "Ready" {
            (reason, message)
        } else {
            (not_holding_reason(type_, state), "")
        };
        set_condition(
            &mut status.conditions,
            condition(type_, value, reason, message, o),
        );
    }
    status
}

/// Why the condition `type_` (other than Ready) does not hold in `state`.
fn not_holding_reason(type_: &str, state: CalculationState) -> &'static str {
    use CalculationState::*;
    match (type_, state) {
        ("Running", Pending | Waiting) => "NotStarted",
        ("Running", Completed | Failed) => "JobFinished",
        ("Running", _) => "Stopped",
        ("Waiting", Pending) => "NotResolved",
        ("Waiting", _) => "DataDelivered",
        ("Failed", _) => "NoFailure",
        ("Cancelled", Cancelling) => "CancelInProgress",
        ("Cancelled", _) => "NotCancelled",
        _ => "NotApplicable",
    }
}

/// The status of a calculation whose Job runs the plan (when it is known).
fn running(o: &Observed, plan: Option<&CalculationPlan>) -> MetricCalculationStatus {
    let mut status = transition(
        o,
        CalculationState::Running,
        "JobCreated",
        &format!("Job {} runs the calculation", o.job_name),
    );
    if let Some(plan) = plan {
        status.sql = Some(plan.sql.clone());
        status.times = Some(plan.times.to_status());
    }
    status.sql_job = Some(o.job_name.clone());
    status
}

/// The reason of a calculation whose Job exists without its Pod.
const PODS_NOT_CREATED: &str = "PodsNotCreated";

/// The reason of the calculation's `Running` condition, when it holds.
fn running_reason(o: &Observed) -> Option<&str> {
    o.status
        .conditions
        .iter()
        .find(|c| c.type_ == "Running" && c.status == "True")
        .map(|c| c.reason.as_str())
}

fn event(reason: &'static str, note: impl Into<String>) -> Action {
    Action::Event {
        warning: false,
        reason,
        note: note.into(),
    }
}

fn warning(reason: &'static str, note: impl Into<String>) -> Action {
    Action::Event {
        warning: true,
        reason,
        note: note.into(),
    }
}

fn set(status: MetricCalculationStatus) -> Action {
    Action::SetStatus(Box::new(status))
}

/// The Job of an earlier generation that may still run: a spec edit or a cancel must
/// stop it, or two queries of one calculation would run at once.
fn stale_job(o: &Observed) -> Option<&str> {
    let state = o.status.state?;
    let job = o.status.sql_job.as_deref()?;
    let active = matches!(
        state,
        CalculationState::Running | CalculationState::Cancelling
    );
    (active && job != o.job_name).then_some(job)
}

/// The SQL the finished Job ran: the status recorded it when it created the Job, and
/// the current plan may have changed since (a Metric edited during the run).
fn sql_of_job(o: &Observed) -> Option<String> {
    let recorded = o.status.sql_job.as_deref() == Some(o.job_name.as_str());
    match (&o.status.sql, &o.plan) {
        (Some(sql), _) if recorded => Some(sql.clone()),
        (_, Ok(plan)) => Some(plan.sql.clone()),
        (sql, Err(_)) => sql.clone(),
    }
}

/// What to do about a calculation, given what is observed.
pub fn decide(o: &Observed) -> Vec<Action> {
    let state = o.status.state.unwrap_or(CalculationState::Pending);
    let current = o.status.observed_generation == Some(o.generation);

    if state.is_terminal() && current {
        // Cancel of a finished calculation is a no-op, said once (a cancelled one was
        // finished by that very annotation).
        let noted = o
            .status
            .conditions
            .iter()
            .any(|c| c.reason == "CancelIgnored");
        if o.cancel_requested && !noted && state != CalculationState::Cancelled {
            let mut status = o.status.clone();
            set_condition(
                &mut status.conditions,
                condition(
                    "CancelRequested",
                    false,
                    "CancelIgnored",
                    "the calculation had already finished",
                    o,
                ),
            );
            return vec![
                set(status),
                event(
                    "CancelIgnored",
                    format!("the calculation is already {state:?}; nothing to cancel"),
                ),
            ];
        }
        return Vec::new();
    }

    let mut actions = Vec::new();
    if let Some(stale) = stale_job(o) {
        actions.push(Action::DeleteJob(stale.to_string()));
        actions.push(event(
            "Superseded",
            format!("deleting Job {stale}: it ran an earlier generation of the spec"),
        ));
    }

    // A Job that finished before the cancel was acted on is recorded as it ended: its
    // result is real, and cancelling a finished run is a no-op. Once Cancelling, the
    // calculation ends Cancelled even if the annotation is taken away meanwhile.
    let job_finished = matches!(o.job, JobState::Succeeded(_) | JobState::Failed(_));
    if (o.cancel_requested || state == CalculationState::Cancelling) && !job_finished {
        match (&o.job, state) {
            (JobState::Running | JobState::PodsNotCreated(_), CalculationState::Cancelling) => {}
            (JobState::Running | JobState::PodsNotCreated(_), _) => actions.extend([
                Action::DeleteJob(o.job_name.clone()),
                set(transition(
                    o,
                    CalculationState::Cancelling,
                    "CancelRequested",
                    "deleting the calculation's Job",
                )),
                event("Cancelling", "cancel requested: deleting the Job"),
            ]),
            _ => {
                let mut status = transition(
                    o,
                    CalculationState::Cancelled,
                    "Cancelled",
                    "cancelled by the tally.dev/cancel annotation",
                );
                status.completion_time = Some(Time(o.now));
                actions.extend([
                    set(status),
                    event("Cancelled", "the calculation was cancelled"),
                ]);
            }
        }
        return actions;
    }

    // A new generation: a new run that supersedes the old one, finished or cut short
    // (its Job deleted above). A finished run's results stay readable until the new
    // run completes.
    let mut base = o.status.clone();
    if !current
        && o.status
            .sql_job
            .as_deref()
            .is_some_and(|job| job != o.job_name)
    {
        base.superseeds = o.status.sql_job.clone();
    }
    if state.is_terminal() && !current {
        base.state = Some(CalculationState::Pending);
        base.error = None;
    }
    let o = &Observed {
        status: base,
        ..o.clone()
    };

    // While this generation's Job exists, only the Job decides: a Metric or table
    // edited, deleted or broken during the run does not abandon it.
    match &o.job {
        JobState::Succeeded(Ok(result)) => {
            let mut status = transition(
                o,
                CalculationState::Completed,
                "Completed",
                "the calculation completed",
            );
            complete(&mut status, sql_of_job(o), result.clone(), o.now);
            status.error = None;
            actions.extend([set(status), event("Completed", "the calculation completed")]);
            return actions;
        }
        JobState::Succeeded(Err(reason)) | JobState::Failed(reason) => {
            let message = if reason.is_empty() {
                "the worker failed without a message".to_string()
            } else {
                reason.clone()
            };
            let mut status = transition(o, CalculationState::Failed, "WorkerFailed", &message);
            status.error = Some(conditions::bounded(&message));
            status.completion_time = Some(Time(o.now));
            actions.extend([set(status), warning("Failed", message)]);
            return actions;
        }
        JobState::Running
            if state == CalculationState::Running
                && o.status.sql_job.as_deref() == Some(o.job_name.as_str()) =>
        {
            // Its Pod could not be created before and now could: say it runs again.
            if running_reason(o) == Some(PODS_NOT_CREATED) {
                let mut status = running(o, None);
                status.start_time.get_or_insert(Time(o.now));
                actions.extend([
                    set(status),
                    event("Running", format!("the Job {} has its Pod now", o.job_name)),
                ]);
            }
            return actions;
        }
        JobState::PodsNotCreated(reason) => {
            // The Job stays: the Job controller retries, and it runs once the cause is
            // gone (a quota raised). Until then the calculation says why it does not.
            let message = format!("the Job {} cannot create its Pod: {reason}", o.job_name);
            let mut status = transition(o, CalculationState::Running, PODS_NOT_CREATED, &message);
            status.sql_job = Some(o.job_name.clone());
            status.start_time.get_or_insert(Time(o.now));
            if status != o.status {
                // Warned once, when it first happens; the message may change later.
                if running_reason(o) != Some(PODS_NOT_CREATED) {
                    actions.push(warning(PODS_NOT_CREATED, message));
                }
                actions.push(set(status));
            }
            return actions;
        }
        JobState::Running => {
            // The Job exists but status does not say so (a write lost before a restart).
            let mut status = running(o, o.plan.as_ref().ok());
            status.start_time.get_or_insert(Time(o.now));
            actions.push(set(status));
            return actions;
        }
        JobState::Foreign => {
            let message = format!(
                "the Job {} belongs to another object (an earlier MetricCalculation of the \
                 same name?); delete that Job to run this calculation",
                o.job_name
            );
            let status = transition(o, CalculationState::Pending, "JobNameTaken", &message);
            if status != o.status {
                actions.extend([set(status), warning("JobNameTaken", message)]);
            }
            return actions;
        }
        JobState::Missing => {}
    }

    let plan = match &o.plan {
        Ok(plan) => plan,
        Err(error @ PlanError::MissingReference { .. }) => {
            let young = o
                .created
                .is_some_and(|created| o.now < created + REFERENCE_GRACE);
            let message = if young {
                format!(
                    "{error} (waiting up to {}s for it to be applied)",
                    REFERENCE_GRACE.as_secs()
                )
            } else {
                error.to_string()
            };
            let status = transition(o, CalculationState::Pending, error.reason(), &message);
            if status != o.status {
                actions.push(set(status));
                // Said as a Warning once the grace has passed (the message changes then).
                if !young {
                    actions.push(warning("MissingReference", error.to_string()));
                }
            }
            return actions;
        }
        Err(error) => {
            let mut status = transition(
                o,
                CalculationState::Failed,
                error.reason(),
                &error.to_string(),
            );
            status.error = Some(conditions::bounded(&error.to_string()));
            status.completion_time = Some(Time(o.now));
            actions.extend([set(status), warning("InvalidSpec", error.to_string())]);
            return actions;
        }
    };

    if o.status.sql_job.as_deref() == Some(o.job_name.as_str())
        && o.status.state == Some(CalculationState::Running)
    {
        // The Job was created and is gone without a result: never rerun silently.
        let message = format!("the Job {} disappeared before it finished", o.job_name);
        let mut status = transition(o, CalculationState::Failed, "JobLost", &message);
        status.error = Some(conditions::bounded(&message));
        status.completion_time = Some(Time(o.now));
        actions.extend([set(status), warning("JobLost", message)]);
        return actions;
    }
    if let Some(wait) = &o.waiting {
        let message = wait.message();
        let status = transition(o, CalculationState::Waiting, "DataNotDelivered", &message);
        if status != o.status {
            actions.extend([set(status), event("Waiting", message)]);
        }
        return actions;
    }
    if let Some(violation) = &o.job_refused {
        // The Warehouse must change (its change re-reconciles), or the policy.
        let message = format!("no Job is created: {violation}");
        let status = transition(o, CalculationState::Pending, "JobSettingsRefused", &message);
        if status != o.status {
            actions.extend([set(status), warning("JobSettingsRefused", message)]);
        }
        return actions;
    }
    if let Some(refusal) = &o.job_create_refused {
        // Retried on the Pending requeue: a quota may free up, a webhook may change.
        let message = format!(
            "the API server refused to create the Job {}: {refusal}",
            o.job_name
        );
        let status = transition(o, CalculationState::Pending, "JobCreateRefused", &message);
        if status != o.status {
            actions.extend([set(status), warning("JobCreateRefused", message)]);
        }
        return actions;
    }
    if let Some(account) = &o.missing_service_account {
        // Its Pods could not be created: the Job would sit until its deadline.
        let message = format!(
            "calculation Jobs run as the ServiceAccount {name}, which does not exist in \
             namespace {namespace}: add {namespace} to the chart's worker.namespaces (or \
             create the account with the worker's permissions), or set the Warehouse's \
             job.serviceAccountName to an account of {namespace}",
            name = account.name,
            namespace = account.namespace,
        );
        let status = transition(
            o,
            CalculationState::Pending,
            "ServiceAccountMissing",
            &message,
        );
        if status != o.status {
            actions.extend([set(status), warning("ServiceAccountMissing", message)]);
        }
        return actions;
    }
    let mut status = running(o, Some(plan));
    status.start_time = Some(Time(o.now));
    status.completion_time = None;
    actions.extend([
        Action::CreateJob(Box::new(plan.clone())),
        set(status),
        event("Running", format!("created Job {}", o.job_name)),
    ]);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Analysis, MetricResults};

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
        o.job_refused = Some(
            "Warehouse/wh: spec.job.volumes[0]: volumes of type hostPath are not allowed".into(),
        );
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
}

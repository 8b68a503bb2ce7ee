//! The MetricCalculation lifecycle as a pure function: what is observed → what to do,
//! and when to look again. It imports no API client: its tests are most of the
//! controller's.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::controller::decision::{Decision, Requeue};
use crate::controller::plumbing::act::{self, event, warning};
use crate::controller::plumbing::conditions::{self, set_condition};
use crate::controller::readiness::DataWait;

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
    /// Whether the Job exists without (ever) having had a Pod.
    pub job_without_pod: bool,
    /// The Job to create, or why it could not be built; observed only when a Job may
    /// be created.
    pub job_spec: Option<Result<Box<Job>, String>>,
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
    /// Create this Job, for the current generation.
    CreateJob(Box<Job>),
    /// Delete this Job (background propagation: its Pods get SIGTERM).
    DeleteJob(String),
    Event {
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed: &Observed,
) -> Condition {
    conditions::condition(
        type_,
        status,
        reason,
        message,
        observed.generation,
        observed.now,
    )
}

/// The status with a new state and the conditions that describe it.
fn transition(
    observed: &Observed,
    state: CalculationState,
    reason: &str,
    message: &str,
) -> MetricCalculationStatus {
    let mut status = observed.status.clone();
    status.state = Some(state);
    status.observed_generation = Some(observed.generation);
    if let Some(origin) = &observed.origin {
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
            condition(type_, value, reason, message, observed),
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
fn running(observed: &Observed, plan: Option<&CalculationPlan>) -> MetricCalculationStatus {
    let mut status = transition(
        observed,
        CalculationState::Running,
        "JobCreated",
        &format!("Job {} runs the calculation", observed.job_name),
    );
    if let Some(plan) = plan {
        status.sql = Some(plan.sql.clone());
        status.times = Some(plan.times.to_status());
    }
    status.sql_job = Some(observed.job_name.clone());
    status
}

/// The reason of a calculation whose Job exists without its Pod.
const PODS_NOT_CREATED: &str = "PodsNotCreated";

/// The reason of the calculation's `Running` condition, when it holds.
fn running_reason(observed: &Observed) -> Option<&str> {
    observed
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Running" && c.status == "True")
        .map(|c| c.reason.as_str())
}

act::shared_actions!(Action, MetricCalculationStatus);

fn set(status: MetricCalculationStatus) -> Action {
    Action::SetStatus(Box::new(status))
}

/// The Job of an earlier generation that may still run: a spec edit or a cancel must
/// stop it, or two queries of one calculation would run at once.
fn stale_job(observed: &Observed) -> Option<&str> {
    let state = observed.status.state?;
    let job = observed.status.sql_job.as_deref()?;
    let active = matches!(
        state,
        CalculationState::Running | CalculationState::Cancelling
    );
    (active && job != observed.job_name).then_some(job)
}

/// The SQL the finished Job ran: the status recorded it when it created the Job, and
/// the current plan may have changed since (a Metric edited during the run).
fn sql_of_job(observed: &Observed) -> Option<String> {
    let recorded = observed.status.sql_job.as_deref() == Some(observed.job_name.as_str());
    match (&observed.status.sql, &observed.plan) {
        (Some(sql), _) if recorded => Some(sql.clone()),
        (_, Ok(plan)) => Some(plan.sql.clone()),
        (sql, Err(_)) => sql.clone(),
    }
}

/// What to do about a calculation, given what is observed, and when to look again.
pub fn decide(observed: &Observed) -> Decision<Action> {
    let actions = actions(observed);
    let requeue = requeue(observed, &actions);
    Decision { actions, requeue }
}

/// When to look again if nothing changes. Watches bring Job and reference changes.
/// Data readiness by assumed lag needs a timer, and so does a Pending calculation: the
/// caches may learn of a reference after the change that triggered this reconcile,
/// and a Job in the way of its name is not watched. A Job without its Pod changes not
/// at all while the Pod cannot be created: look again soon.
fn requeue(observed: &Observed, actions: &[Action]) -> Requeue {
    let state = actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::SetStatus(status) => Some(status.state),
            _ => None,
        })
        .unwrap_or(observed.status.state);
    match state {
        Some(CalculationState::Waiting | CalculationState::Pending) => {
            Requeue::After(Duration::from_secs(30))
        }
        Some(CalculationState::Running) if observed.job_without_pod => {
            Requeue::After(Duration::from_secs(15))
        }
        _ => Requeue::OnChange,
    }
}

/// The actions of [`decide`].
fn actions(observed: &Observed) -> Vec<Action> {
    let state = observed.status.state.unwrap_or(CalculationState::Pending);
    let current = observed.status.observed_generation == Some(observed.generation);

    if state.is_terminal() && current {
        // Cancel of a finished calculation is a no-op, said once (a cancelled one was
        // finished by that very annotation).
        let noted = observed
            .status
            .conditions
            .iter()
            .any(|c| c.reason == "CancelIgnored");
        if observed.cancel_requested && !noted && state != CalculationState::Cancelled {
            let mut status = observed.status.clone();
            set_condition(
                &mut status.conditions,
                condition(
                    "CancelRequested",
                    false,
                    "CancelIgnored",
                    "the calculation had already finished",
                    observed,
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
    if let Some(stale) = stale_job(observed) {
        actions.push(Action::DeleteJob(stale.to_string()));
        actions.push(event(
            "Superseded",
            format!("deleting Job {stale}: it ran an earlier generation of the spec"),
        ));
    }

    // A Job that finished before the cancel was acted on is recorded as it ended: its
    // result is real, and cancelling a finished run is a no-op. Once Cancelling, the
    // calculation ends Cancelled even if the annotation is taken away meanwhile.
    let job_finished = matches!(observed.job, JobState::Succeeded(_) | JobState::Failed(_));
    if (observed.cancel_requested || state == CalculationState::Cancelling) && !job_finished {
        match (&observed.job, state) {
            (JobState::Running | JobState::PodsNotCreated(_), CalculationState::Cancelling) => {}
            (JobState::Running | JobState::PodsNotCreated(_), _) => actions.extend([
                Action::DeleteJob(observed.job_name.clone()),
                set(transition(
                    observed,
                    CalculationState::Cancelling,
                    "CancelRequested",
                    "deleting the calculation's Job",
                )),
                event("Cancelling", "cancel requested: deleting the Job"),
            ]),
            _ => {
                let mut status = transition(
                    observed,
                    CalculationState::Cancelled,
                    "Cancelled",
                    "cancelled by the tally.dev/cancel annotation",
                );
                status.completion_time = Some(Time(observed.now));
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
    let mut base = observed.status.clone();
    if !current
        && observed
            .status
            .sql_job
            .as_deref()
            .is_some_and(|job| job != observed.job_name)
    {
        base.superseeds = observed.status.sql_job.clone();
    }
    if state.is_terminal() && !current {
        base.state = Some(CalculationState::Pending);
        base.error = None;
    }
    let observed = &Observed {
        status: base,
        ..observed.clone()
    };

    // While this generation's Job exists, only the Job decides: a Metric or table
    // edited, deleted or broken during the run does not abandon it.
    match &observed.job {
        JobState::Succeeded(Ok(result)) => {
            // Zeros because nothing matched are said so, not passed off as a result.
            let empty = result.analysis.no_values_warning();
            let message = match &empty {
                Some(warning) => format!("the calculation completed, but {warning}"),
                None => "the calculation completed".to_string(),
            };
            let mut status =
                transition(observed, CalculationState::Completed, "Completed", &message);
            complete(
                &mut status,
                sql_of_job(observed),
                result.clone(),
                observed.now,
            );
            status.error = None;
            actions.extend([set(status), event("Completed", message)]);
            actions.extend(empty.map(|warning| act::warning("NoMetricValues", warning)));
            return actions;
        }
        JobState::Succeeded(Err(reason)) | JobState::Failed(reason) => {
            let message = if reason.is_empty() {
                "the worker failed without a message".to_string()
            } else {
                reason.clone()
            };
            let mut status =
                transition(observed, CalculationState::Failed, "WorkerFailed", &message);
            status.error = Some(conditions::bounded(&message));
            status.completion_time = Some(Time(observed.now));
            actions.extend([set(status), warning("Failed", message)]);
            return actions;
        }
        JobState::Running
            if state == CalculationState::Running
                && observed.status.sql_job.as_deref() == Some(observed.job_name.as_str()) =>
        {
            // Its Pod could not be created before and now could: say it runs again.
            if running_reason(observed) == Some(PODS_NOT_CREATED) {
                let mut status = running(observed, None);
                status.start_time.get_or_insert(Time(observed.now));
                actions.extend([
                    set(status),
                    event(
                        "Running",
                        format!("the Job {} has its Pod now", observed.job_name),
                    ),
                ]);
            }
            return actions;
        }
        JobState::PodsNotCreated(reason) => {
            // The Job stays: the Job controller retries, and it runs once the cause is
            // gone (a quota raised). Until then the calculation says why it does not.
            let message = format!(
                "the Job {} cannot create its Pod: {reason}",
                observed.job_name
            );
            let mut status = transition(
                observed,
                CalculationState::Running,
                PODS_NOT_CREATED,
                &message,
            );
            status.sql_job = Some(observed.job_name.clone());
            status.start_time.get_or_insert(Time(observed.now));
            if status != observed.status {
                // Warned once, when it first happens; the message may change later.
                if running_reason(observed) != Some(PODS_NOT_CREATED) {
                    actions.push(warning(PODS_NOT_CREATED, message));
                }
                actions.push(set(status));
            }
            return actions;
        }
        JobState::Running => {
            // The Job exists but status does not say so (a write lost before a restart).
            let mut status = running(observed, observed.plan.as_ref().ok());
            status.start_time.get_or_insert(Time(observed.now));
            actions.push(set(status));
            return actions;
        }
        JobState::Foreign => {
            let message = format!(
                "the Job {} belongs to another object (an earlier MetricCalculation of the \
                 same name?); delete that Job to run this calculation",
                observed.job_name
            );
            let status = transition(
                observed,
                CalculationState::Pending,
                "JobNameTaken",
                &message,
            );
            if status != observed.status {
                actions.extend([set(status), warning("JobNameTaken", message)]);
            }
            return actions;
        }
        JobState::Missing => {}
    }

    let plan = match &observed.plan {
        Ok(plan) => plan,
        Err(error @ PlanError::MissingReference { .. }) => {
            let young = observed
                .created
                .is_some_and(|created| observed.now < created + REFERENCE_GRACE);
            let message = if young {
                format!(
                    "{error} (waiting up to {}s for it to be applied)",
                    REFERENCE_GRACE.as_secs()
                )
            } else {
                error.to_string()
            };
            let status = transition(
                observed,
                CalculationState::Pending,
                error.reason(),
                &message,
            );
            if status != observed.status {
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
                observed,
                CalculationState::Failed,
                error.reason(),
                &error.to_string(),
            );
            status.error = Some(conditions::bounded(&error.to_string()));
            status.completion_time = Some(Time(observed.now));
            actions.extend([set(status), warning("InvalidSpec", error.to_string())]);
            return actions;
        }
    };

    if observed.status.sql_job.as_deref() == Some(observed.job_name.as_str())
        && observed.status.state == Some(CalculationState::Running)
    {
        // The Job was created and is gone without a result: never rerun silently.
        let message = format!(
            "the Job {} disappeared before it finished",
            observed.job_name
        );
        let mut status = transition(observed, CalculationState::Failed, "JobLost", &message);
        status.error = Some(conditions::bounded(&message));
        status.completion_time = Some(Time(observed.now));
        actions.extend([set(status), warning("JobLost", message)]);
        return actions;
    }
    if let Some(wait) = &observed.waiting {
        let message = wait.message();
        let status = transition(
            observed,
            CalculationState::Waiting,
            "DataNotDelivered",
            &message,
        );
        if status != observed.status {
            actions.extend([set(status), event("Waiting", message)]);
        }
        return actions;
    }
    if let Some(violation) = &observed.job_refused {
        // The Warehouse must change (its change re-reconciles), or the policy.
        let message = format!("no Job is created: {violation}");
        let status = transition(
            observed,
            CalculationState::Pending,
            "JobSettingsRefused",
            &message,
        );
        if status != observed.status {
            actions.extend([set(status), warning("JobSettingsRefused", message)]);
        }
        return actions;
    }
    if let Some(refusal) = &observed.job_create_refused {
        // Retried on the Pending requeue: a quota may free up, a webhook may change.
        let message = format!(
            "the API server refused to create the Job {}: {refusal}",
            observed.job_name
        );
        let status = transition(
            observed,
            CalculationState::Pending,
            "JobCreateRefused",
            &message,
        );
        if status != observed.status {
            actions.extend([set(status), warning("JobCreateRefused", message)]);
        }
        return actions;
    }
    if let Some(account) = &observed.missing_service_account {
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
            observed,
            CalculationState::Pending,
            "ServiceAccountMissing",
            &message,
        );
        if status != observed.status {
            actions.extend([set(status), warning("ServiceAccountMissing", message)]);
        }
        return actions;
    }
    let job = match &observed.job_spec {
        Some(Ok(job)) => job.clone(),
        Some(Err(reason)) => return job_not_built(observed, actions, reason),
        None => return job_not_built(observed, actions, "no Job was made for it"),
    };
    let mut status = running(observed, Some(plan));
    status.start_time = Some(Time(observed.now));
    status.completion_time = None;
    actions.extend([
        Action::CreateJob(job),
        set(status),
        event("Running", format!("created Job {}", observed.job_name)),
    ]);
    actions
}

/// A calculation whose Job cannot be built: it fails, saying why, instead of waiting
/// for a Job that never comes.
fn job_not_built(observed: &Observed, mut actions: Vec<Action>, reason: &str) -> Vec<Action> {
    let message = format!("the Job {} could not be built: {reason}", observed.job_name);
    let mut status = transition(observed, CalculationState::Failed, "JobNotBuilt", &message);
    status.error = Some(conditions::bounded(&message));
    status.completion_time = Some(Time(observed.now));
    actions.extend([set(status), warning("JobNotBuilt", message)]);
    actions
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

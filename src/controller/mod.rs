//! `tally controller`: reconciles MetricCalculations into Jobs and results, and
//! ScheduledMetricCalculations into MetricCalculations over time.
//!
//! This module holds the start-up only. Each lifecycle has its room, `calculation/`
//! and `schedule/`, with the same steps: observe → decide (pure, in `decide.rs`, with
//! its tests beside it) → act. What both share of Kubernetes (watches and caches, the
//! act executor, status patches, Events, leader election, telemetry) is in
//! `plumbing/`; `readiness` judges data delivery for both. The controller reaches the
//! worker only through `job_contract`: it imports neither the engine nor the worker.

pub mod calculation;
mod decision;
pub mod plumbing;
mod readiness;
pub mod schedule;
#[cfg(test)]
mod test_support;

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::batch::v1::Job;
use kube::Client;

pub use calculation::job::{
    CALCULATION_LABEL, DEFAULT_CPU_REQUEST, DEFAULT_MEMORY_LIMIT, DEFAULT_MEMORY_REQUEST,
    JobDefaults, build_job, job_name, resource_requirements,
};
pub use calculation::job_policy::{DEFAULT_VOLUME_TYPES, JobPolicy};
pub use calculation::{Action, JobState, MissingServiceAccount, Observed, ScheduleOrigin, decide};
pub use decision::{Decision, Requeue};
pub use plumbing::references::Scope;
pub use plumbing::stop::Stop;
pub use plumbing::{leader, telemetry};
pub use readiness::DataWait;

use crate::api::{MetricCalculation, SCHEDULE_LABEL, ScheduledMetricCalculation};
use plumbing::backoff::Backoff;
use plumbing::driver::drive;
use plumbing::events::EventPublisher;
use plumbing::references::{References, controller_of};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
    /// An object the controller must create exists and belongs to another owner.
    #[error("{0}")]
    NameTaken(String),
    /// A schedule's run could not be made into a MetricCalculation.
    #[error("{0}")]
    RunNotBuilt(String),
}

pub struct Context {
    pub client: Client,
    pub events: EventPublisher,
    pub defaults: JobDefaults,
    /// The shortest interval a schedule may ask for between runs.
    pub min_schedule_interval: jiff::SignedDuration,
    references: References,
    backoff: Backoff,
    metrics: Arc<telemetry::Metrics>,
    job_refusals: calculation::JobRefusals,
}

/// Runs the controllers while this process leads `election`, until `stop` (then the
/// Lease is released for the next leader) or until leadership is lost (an error: the
/// process must exit, so that a new candidate starts from a clean state).
pub async fn run_elected(
    client: Client,
    defaults: JobDefaults,
    limits: Limits,
    scopes: Vec<Scope>,
    election: leader::Election,
    stop: Stop,
    metrics: Arc<telemetry::Metrics>,
) -> Result<(), leader::LeaderError> {
    let mut elector = leader::Elector::new(client.clone(), election);
    tokio::select! {
        () = elector.acquire() => {}
        () = stop.clone().requested() => {
            tracing::info!("stopped before becoming the leader");
            // An attempt cut short may have taken the Lease.
            elector.release().await;
            return Ok(());
        }
    }
    tracing::info!(
        identity = %elector.election().identity,
        lease = %elector.election().lease,
        "became the leader"
    );
    metrics.set_leader(true);
    let outcome = tokio::select! {
        // Leadership is checked first: a process resuming from a freeze past its
        // renew deadline stops before reconciling anything more.
        biased;
        lost = elector.keep() => Err(lost),
        () = run(client, defaults, limits, scopes, stop, metrics.clone()) => Ok(()),
    };
    metrics.set_leader(false);
    if outcome.is_ok() {
        elector.release().await;
    }
    outcome
}

/// What the controller allows itself and its users at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Objects of each kind reconciled at once.
    pub concurrency: u16,
    /// The shortest interval a schedule may ask for between runs.
    pub min_schedule_interval: jiff::SignedDuration,
}

/// Runs the calculation and schedule controllers of each scope until `stop`.
pub async fn run(
    client: Client,
    defaults: JobDefaults,
    limits: Limits,
    scopes: Vec<Scope>,
    stop: Stop,
    metrics: Arc<telemetry::Metrics>,
) {
    metrics.set_leader(true);
    futures::future::join_all(scopes.into_iter().map(|scope| {
        run_in(
            client.clone(),
            defaults.clone(),
            limits,
            scope,
            stop.clone(),
            metrics.clone(),
        )
    }))
    .await;
}

/// The controllers of one scope.
async fn run_in(
    client: Client,
    defaults: JobDefaults,
    limits: Limits,
    scope: Scope,
    stop: Stop,
    metrics: Arc<telemetry::Metrics>,
) {
    let references = References::start(&client, &scope);
    tracing::info!(
        ?scope,
        "waiting for the caches of Metrics, tables and Warehouses"
    );
    // A stop requested while the caches fill (say, the CRDs are not installed yet)
    // ends the controller too.
    tokio::select! {
        ready = references.wait_until_ready() => {
            if let Err(error) = ready {
                tracing::error!(%error, "a cache closed before it was filled");
                return;
            }
        }
        () = stop.clone().requested() => {
            tracing::info!("stopped before the caches were filled");
            return;
        }
    }
    let context = Arc::new(Context {
        client: client.clone(),
        events: EventPublisher::new(
            client.clone(),
            "tally-controller",
            std::env::var("POD_NAME").ok(),
        ),
        defaults,
        min_schedule_interval: limits.min_schedule_interval,
        references,
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
        metrics,
        job_refusals: calculation::JobRefusals::default(),
    });
    let calculations = drive(
        controller_of::<MetricCalculation, Job>(
            &client,
            &scope,
            CALCULATION_LABEL,
            limits.concurrency,
            calculation::settled,
        ),
        calculation::reconcile,
        context.clone(),
        stop.clone(),
    );
    let schedules = drive(
        controller_of::<ScheduledMetricCalculation, MetricCalculation>(
            &client,
            &scope,
            SCHEDULE_LABEL,
            limits.concurrency,
            schedule::settled,
        ),
        schedule::reconcile,
        context,
        stop,
    );
    futures::join!(calculations, schedules);
}

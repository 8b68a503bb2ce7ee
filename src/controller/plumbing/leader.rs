//! Leader election over a `coordination.k8s.io` Lease, so that several controller
//! replicas can run and exactly one reconciles.
//!
//! The protocol is the one of Kubernetes' own controllers: the leader renews the
//! Lease's `renewTime`; a candidate takes the Lease over when its record has not
//! changed for `leaseDurationSeconds`, or when the leader released it. Expiry is
//! measured on the candidate's own clock, from when it first saw the current record,
//! so clock skew between nodes cannot make two leaders. Every write carries the
//! observed `resourceVersion`: of two candidates, one wins and the other gets a
//! conflict. A leader that cannot renew within its renew deadline stops reconciling
//! and the process exits, before any candidate may take over.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio::time::Instant;

/// How a controller takes part in leader election.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease: String,
    pub namespace: String,
    /// Unique per process: two processes of one Pod must not both hold the Lease.
    pub identity: String,
    /// How long a Lease record stays valid without being renewed.
    pub lease_duration: Duration,
}

impl Election {
    /// The leader gives up when it could not renew for this long; it is shorter than
    /// the lease duration, so the leader stops before a candidate can take over.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.mul_f64(2.0 / 3.0)
    }

    /// How often the leader renews and a candidate retries.
    pub fn retry_period(&self) -> Duration {
        self.lease_duration.div_f64(7.5)
    }
}

/// A process identity that stays unique when the Pod's container restarts: the
/// Pod name (or host name) and this process's id and start time.
pub fn identity(base: &str) -> String {
    let started = Timestamp::now().as_nanosecond();
    format!("{base}_{}_{:x}", std::process::id(), started as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election Lease {namespace}/{lease}: {source}")]
    Kube {
        namespace: String,
        lease: String,
        source: kube::Error,
    },
    #[error(
        "lost the leader election Lease {namespace}/{lease}: {reason}; stopping so that only one controller reconciles"
    )]
    Lost {
        namespace: String,
        lease: String,
        reason: String,
    },
}

/// What a candidate or leader does next with the Lease it observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it, held by us.
    Create,
    /// The Lease is free (released or expired): take it, one more transition.
    Take,
    /// We hold it: renew it.
    Renew,
    /// Another holds it and it is still valid.
    Wait,
}

/// The holder of a Lease record, if any (a released Lease has none).
fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Decides the next step from the observed Lease (`None` when it does not exist) and
/// how long its current record has been observed unchanged.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match holder(spec) {
        Some(h) if h == me => Step::Renew,
        None => Step::Take,
        Some(_) if unchanged_for >= valid_for(spec) => Step::Take,
        Some(_) => Step::Wait,
    }
}

/// How long a record stays valid: its own `leaseDurationSeconds`, at least a second.
fn valid_for(spec: &LeaseSpec) -> Duration {
    let seconds = spec.lease_duration_seconds.unwrap_or(1).max(1);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
}

/// The record a step writes; `None` for [`Step::Wait`].
pub fn record(
    step: &Step,
    observed: Option<&LeaseSpec>,
    election: &Election,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let duration = i32::try_from(election.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let transitions = observed.and_then(|s| s.lease_transitions).unwrap_or(0);
    let fresh = |transitions| LeaseSpec {
        holder_identity: Some(election.identity.clone()),
        lease_duration_seconds: Some(duration),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match step {
        Step::Create => Some(fresh(0)),
        Step::Take => Some(fresh(transitions.saturating_add(1))),
        Step::Renew => Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(duration),
            ..observed.cloned().unwrap_or_else(|| fresh(transitions))
        }),
        Step::Wait => None,
    }
}

/// The record a leader leaves when it stops: no holder, so a candidate takes over at
/// once instead of waiting for the lease to expire.
pub fn released(observed: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..observed.clone()
    }
}

/// The Lease as this process last saw it, and since when (on its own clock).
struct Observation {
    lease: Option<Lease>,
    since: Instant,
}

impl Observation {
    /// Records `lease`, restarting the clock when its record changed.
    fn update(&mut self, lease: Option<Lease>) {
        if lease.as_ref().and_then(|l| l.spec.as_ref())
            != self.lease.as_ref().and_then(|l| l.spec.as_ref())
        {
            self.since = Instant::now();
        }
        self.lease = lease;
    }

    fn spec(&self) -> Option<&LeaseSpec> {
        self.lease.as_ref().and_then(|l| l.spec.as_ref())
    }
}

/// Takes part in the election of `election` with `client`.
pub struct Elector {
    api: Api<Lease>,
    election: Election,
    observed: Observation,
}

/// Whether an attempt left this process the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    Following,
}

impl Elector {
    pub fn new(client: Client, election: Election) -> Self {
        Self {
            api: Api::namespaced(client, &election.namespace),
            election,
            observed: Observation {
                lease: None,
                since: Instant::now(),
            },
        }
    }

    pub fn election(&self) -> &Election {
        &self.election
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            namespace: self.election.namespace.clone(),
            lease: self.election.lease.clone(),
            source,
        }
    }

    /// Observes the Lease and acquires or renews it if it may. A conflict (another
    /// candidate wrote first) leaves this process following.
    pub async fn attempt(&mut self) -> Result<Attempt, LeaderError> {
        let current = self
            .api
            .get_opt(&self.election.lease)
            .await
            .map_err(|e| self.error(e))?;
        self.observed.update(current);
        let step = decide(
            self.observed.spec(),
            &self.election.identity,
            self.observed.since.elapsed(),
        );
        let Some(spec) = record(
            &step,
            self.observed.spec(),
            &self.election,
            Timestamp::now(),
        ) else {
            return Ok(Attempt::Following);
        };
        // Whether to create or replace follows what exists, not the step: a Lease
        // without a spec exists, and is taken over by replacing it.
        let written = match &self.observed.lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.election.lease.clone()),
                        namespace: Some(self.election.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(observed) => {
                let mut lease = observed.clone();
                lease.spec = Some(spec);
                self.api
                    .replace(&self.election.lease, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.observed.update(Some(lease));
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Waits until this process leads. An attempt that hangs is given up after the
    /// renew deadline and tried again.
    pub async fn acquire(&mut self) {
        let mut announced = false;
        loop {
            let attempt =
                tokio::time::timeout(self.election.renew_deadline(), self.attempt()).await;
            match attempt {
                Ok(Ok(Attempt::Leading)) => return,
                Ok(Ok(Attempt::Following)) => {
                    if !announced {
                        tracing::info!(
                            lease = %self.election.lease,
                            namespace = %self.election.namespace,
                            holder = self.observed.spec().and_then(holder).unwrap_or(""),
                            "waiting to become the leader"
                        );
                        announced = true;
                    }
                }
                // The API server may be briefly unreachable: keep trying.
                Ok(Err(error)) => tracing::warn!(%error, "leader election"),
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            tokio::time::sleep(self.election.retry_period()).await;
        }
    }

    /// Renews the Lease every retry period; returns once leadership is lost: another
    /// process holds the Lease, or no renewal succeeded within the renew deadline.
    /// A renewal counts from when it was sent, and a request still unanswered at the
    /// deadline is abandoned: the leader stops before any candidate may take over,
    /// however slow the API server.
    pub async fn keep(&mut self) -> LeaderError {
        let deadline = self.election.renew_deadline();
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.election.retry_period()).await;
            let sent = Instant::now();
            match tokio::time::timeout_at(renewed + deadline, self.attempt()).await {
                Ok(Ok(Attempt::Leading)) => renewed = sent,
                Ok(Ok(Attempt::Following)) => {
                    if let Some(other) = self.observed.spec().and_then(holder)
                        && other != self.election.identity
                    {
                        return self.lost(format!("{other} holds it"));
                    }
                }
                Ok(Err(error)) => tracing::warn!(%error, "renewing the leader election Lease"),
                Err(_) => {}
            }
            if renewed.elapsed() >= deadline {
                return self.lost(format!("not renewed for {deadline:?}"));
            }
        }
    }

    fn lost(&self, reason: String) -> LeaderError {
        LeaderError::Lost {
            namespace: self.election.namespace.clone(),
            lease: self.election.lease.clone(),
            reason,
        }
    }

    /// Gives the Lease up if this process holds it, so that a candidate takes over at
    /// once. It reads the Lease afresh: a renewal dropped mid-flight may have changed
    /// it. Best effort and bounded: a failure only delays the next leader.
    pub async fn release(&mut self) {
        let released = tokio::time::timeout(self.election.renew_deadline(), async {
            for _ in 0..3 {
                let current = self.api.get_opt(&self.election.lease).await?;
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                let Some(spec) = lease.spec.as_ref() else {
                    return Ok(false);
                };
                if holder(spec) != Some(self.election.identity.as_str()) {
                    return Ok(false);
                }
                lease.spec = Some(released(spec, Timestamp::now()));
                match self
                    .api
                    .replace(&lease.name_any(), &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => return Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(error) => return Err(error),
                }
            }
            Ok(false)
        })
        .await;
        match released {
            Ok(Ok(true)) => {
                tracing::info!(lease = %self.election.lease, "released the leader election Lease")
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "releasing the leader election Lease"),
            Err(_) => tracing::warn!("releasing the leader election Lease: no answer in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election() -> Election {
        Election {
            lease: "tally-controller".into(),
            namespace: "tally-system".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
        }
    }

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    const FRESH: Duration = Duration::from_secs(1);
    const STALE: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "me", FRESH), Step::Create);
        let spec = record(&Step::Create, None, &election(), Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }

    #[test]
    fn another_holders_lease_is_left_alone_until_it_went_unrenewed_for_its_duration() {
        let other = held_by("other");
        assert_eq!(decide(Some(&other), "me", FRESH), Step::Wait);
        assert_eq!(
            decide(Some(&other), "me", Duration::from_millis(14_999)),
            Step::Wait
        );
        assert_eq!(decide(Some(&other), "me", STALE), Step::Take);
        assert_eq!(
            record(
                &Step::Wait,
                Some(&other),
                &election(),
                Timestamp::UNIX_EPOCH
            ),
            None
        );
    }

    #[test]
    fn the_lease_duration_of_the_record_counts_not_the_candidates() {
        let long = LeaseSpec {
            lease_duration_seconds: Some(60),
            ..held_by("other")
        };
        assert_eq!(decide(Some(&long), "me", STALE), Step::Wait);
        assert_eq!(
            decide(Some(&long), "me", Duration::from_secs(60)),
            Step::Take
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let now = Timestamp::from_second(1_000).unwrap();
        let free = released(&held_by("other"), now);
        assert_eq!(free.holder_identity, None);
        assert_eq!(decide(Some(&free), "me", Duration::ZERO), Step::Take);
        let empty = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("other")
        };
        assert_eq!(decide(Some(&empty), "me", Duration::ZERO), Step::Take);
    }

    #[test]
    fn taking_over_counts_a_transition_and_restarts_acquire_time() {
        let now = Timestamp::from_second(1_000).unwrap();
        let taken = record(&Step::Take, Some(&held_by("other")), &election(), now).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time() {
        let mine = held_by("me");
        assert_eq!(decide(Some(&mine), "me", STALE), Step::Renew);
        let now = Timestamp::from_second(1_000).unwrap();
        let renewed = record(&Step::Renew, Some(&mine), &election(), now).unwrap();
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(3));
    }

    #[test]
    fn the_leader_gives_up_before_a_candidate_may_take_over() {
        let e = election();
        assert!(e.renew_deadline() < e.lease_duration);
        assert!(e.retry_period() * 3 < e.renew_deadline());
    }

    #[test]
    fn an_identity_names_its_pod_and_process() {
        let id = identity("tally-controller-7d9f");
        assert!(
            id.starts_with(&format!("tally-controller-7d9f_{}_", std::process::id())),
            "{id}"
        );
    }
}

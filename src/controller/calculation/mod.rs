//! The MetricCalculation lifecycle. Each reconcile observes the calculation, what it
//! refers to, its Job and the Job's result (`observe`), calls the pure [`decide`] once,
//! then carries the decision out (`act`). The Job is built in `job`, within the bounds
//! of `job_policy`. Status is written right after a Job is created, and a finished
//! calculation is never run again unless its spec changes (a new generation).
//!
//! This room reaches the worker only through `job_contract`: it imports neither the
//! engine nor the worker.

mod act;
mod decide;
pub mod job;
pub mod job_policy;
mod observe;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action as KubeRequeue;

pub use act::JobRefusals;
pub use decide::{Action, JobState, MissingServiceAccount, Observed, ScheduleOrigin, decide};

use crate::api::{CalculationState, MetricCalculation};
use crate::controller::plumbing::act::Flow;
use crate::controller::{Context, ControllerError};

pub async fn reconcile(
    calculation: Arc<MetricCalculation>,
    ctx: Arc<Context>,
) -> Result<KubeRequeue, ControllerError> {
    let observed = observe::observe(&calculation, &ctx).await?;
    let decision = decide(&observed);
    Ok(
        match act::act(&ctx, &calculation, decision.actions).await? {
            Flow::Continue => decision.requeue.at(observed.now),
            // The API server refused the Job: decide again with that observed.
            Flow::Stop => KubeRequeue::requeue(Duration::ZERO),
        },
    )
}

/// A calculation that finished its current generation: what it refers to no longer
/// matters to it.
pub fn settled(calculation: &MetricCalculation) -> bool {
    calculation.status.as_ref().is_some_and(|s| {
        s.state.is_some_and(CalculationState::is_terminal)
            && s.observed_generation == calculation.metadata.generation
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_current_generations_ignore_reference_changes() {
        let calculation = |state, observed_generation, generation| {
            let mut c: MetricCalculation = serde_json::from_value(serde_json::json!({
                "apiVersion": "tally.dev/v1alpha1",
                "kind": "MetricCalculation",
                "metadata": {"name": "c", "namespace": "ns", "generation": generation},
                "spec": {"metric": "m", "exposureTable": "e",
                         "startTime": "2026-10-15T00:00:00Z", "endTime": "2026-11-05T00:00:00Z"},
            }))
            .unwrap();
            c.status = Some(crate::api::MetricCalculationStatus {
                state,
                observed_generation,
                ..Default::default()
            });
            c
        };
        use CalculationState::*;
        assert!(settled(&calculation(Some(Completed), Some(1), 1)));
        assert!(settled(&calculation(Some(Failed), Some(2), 2)));
        assert!(settled(&calculation(Some(Cancelled), Some(1), 1)));
        // A spec edit not yet acted on, and every unfinished state, still listen.
        assert!(!settled(&calculation(Some(Completed), Some(1), 2)));
        for state in [
            None,
            Some(Pending),
            Some(Waiting),
            Some(Running),
            Some(Cancelling),
        ] {
            assert!(!settled(&calculation(state, Some(1), 1)), "{state:?}");
        }
    }

    #[tokio::test]
    async fn a_job_that_cannot_be_built_fails_the_calculation_saying_why() {
        use crate::controller::test_support::{Exchange, context, example, scripted, status_body};
        use serde_json::json;

        let (catalog, mut calculation) = example();
        // Without a uid nothing can own the Job.
        calculation.metadata.namespace = Some("default".into());
        calculation.metadata.uid = None;
        calculation.metadata.generation = Some(1);
        let name = kube::ResourceExt::name_any(&calculation);
        let job = job::job_name(&name, 1);
        let (client, verifier) = scripted(vec![
            Exchange::new(
                "GET",
                format!("/apis/batch/v1/namespaces/default/jobs/{job}"),
                404,
                status_body(404, "NotFound", "not found"),
            ),
            Exchange::new(
                "PATCH",
                format!(
                    "/apis/tally.dev/v1alpha1/namespaces/default/metriccalculations/{name}/status"
                ),
                200,
                json!(calculation),
            ),
            Exchange::new(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/default/events",
                201,
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                    "metadata": {"name": "e", "namespace": "default"},
                    "eventTime": "2026-12-05T00:00:00.000000Z"}),
            ),
        ]);
        let ctx = Arc::new(context(client, &catalog));
        reconcile(Arc::new(calculation), ctx).await.unwrap();
        let bodies = verifier.await.unwrap();
        let status = &bodies[1]["status"];
        assert_eq!(status["state"], "Failed");
        let error = status["error"].as_str().unwrap();
        assert!(
            error.contains("could not be built") && error.contains("uid"),
            "{error}"
        );
        assert_eq!(bodies[2]["reason"], "JobNotBuilt");
        assert_eq!(bodies[2]["type"], "Warning");
    }
}

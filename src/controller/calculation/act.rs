//! Carries out a calculation's decision: its own actions (create or delete its Job)
//! here, the shared ones through the executor.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams, PropagationPolicy},
};

use super::decide::Action;
use crate::api::MetricCalculation;
use crate::controller::plumbing::act::{Flow, shared};
use crate::controller::{Context, ControllerError};

/// Job creations the API server refused (a 4xx other than a conflict or throttling),
/// by calculation uid and generation, kept until the next reconcile observes them:
/// only the act that met a refusal knows of it.
#[derive(Debug, Default)]
pub struct JobRefusals(Mutex<HashMap<(String, i64), String>>);

impl JobRefusals {
    fn record(&self, uid: &str, generation: i64, message: String) {
        self.lock().insert((uid.to_string(), generation), message);
    }

    /// The refusal recorded for this generation of the calculation, forgotten as it
    /// is read: the next attempt tries again.
    pub fn take(&self, uid: &str, generation: i64) -> Option<String> {
        self.lock().remove(&(uid.to_string(), generation))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Carries out `actions` in order; [`Flow::Stop`] when the API server refused the Job,
/// which the next reconcile observes.
pub async fn act(
    ctx: &Context,
    calculation: &MetricCalculation,
    actions: Vec<Action>,
) -> Result<Flow, ControllerError> {
    let namespace = calculation
        .namespace()
        .ok_or(ControllerError::NoNamespace)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    for action in actions {
        let Some(action) = shared(ctx, calculation, action).await? else {
            continue;
        };
        let flow = match action {
            Action::CreateJob(job) => create_job(ctx, calculation, &jobs, &job).await?,
            Action::DeleteJob(name) => delete_job(&jobs, &name).await?,
            // Carried out as shared actions.
            Action::SetStatus(_) | Action::Event { .. } => Flow::Continue,
        };
        if flow == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

async fn create_job(
    ctx: &Context,
    calculation: &MetricCalculation,
    jobs: &Api<Job>,
    job: &Job,
) -> Result<Flow, ControllerError> {
    match jobs.create(&PostParams::default(), job).await {
        Ok(_) => Ok(Flow::Continue),
        // Made by an earlier reconcile whose status write was lost: it is this one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Flow::Continue),
        // A quota, an admission webhook, an invalid volume: the rest of the decision
        // assumed a Job. Throttling (429) is retried as an error.
        Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => {
            if let Some(uid) = calculation.uid() {
                let generation = calculation.metadata.generation.unwrap_or(1);
                ctx.job_refusals.record(&uid, generation, e.message);
            }
            Ok(Flow::Stop)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the Job `name` with its Pods (which get SIGTERM); one already gone is done.
async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<Flow, ControllerError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs.delete(name, &params).await {
        Ok(_) => Ok(Flow::Continue),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Flow::Continue),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::{CalculationState, JobSettings, MetricCalculationStatus};
    use crate::controller::JobDefaults;
    use crate::controller::calculation::job::build_job;
    use crate::controller::test_support::{Exchange, context, example, scripted, status_body};
    use crate::plan::{CalculationPlan, Catalog};

    /// The example's first calculation as the API server serves it.
    fn calculation() -> MetricCalculation {
        let (_, mut calculation) = example();
        calculation.metadata.namespace = Some("default".into());
        calculation.metadata.uid = Some("calc-uid".into());
        calculation.metadata.generation = Some(1);
        calculation.metadata.resource_version = Some("7".into());
        calculation
    }

    fn job() -> Job {
        build_job(
            &calculation(),
            &CalculationPlan::for_tests(),
            &JobSettings::default(),
            &JobDefaults::default(),
        )
        .unwrap()
    }

    /// What `decide` says when it creates the Job.
    fn create_then_record() -> Vec<Action> {
        vec![
            Action::CreateJob(Box::new(job())),
            Action::SetStatus(Box::new(MetricCalculationStatus {
                state: Some(CalculationState::Running),
                sql_job: job().metadata.name,
                ..MetricCalculationStatus::default()
            })),
            Action::Event {
                warning: false,
                reason: "Running",
                note: "created Job".into(),
            },
        ]
    }

    fn jobs_path() -> &'static str {
        "/apis/batch/v1/namespaces/default/jobs"
    }

    fn status_path() -> String {
        format!(
            "/apis/tally.dev/v1alpha1/namespaces/default/metriccalculations/{}/status",
            calculation().name_any()
        )
    }

    fn events_path() -> &'static str {
        "/apis/events.k8s.io/v1/namespaces/default/events"
    }

    fn event_body() -> Value {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "eventTime": "2026-12-05T00:00:00.000000Z"})
    }

    #[tokio::test]
    async fn the_job_is_created_then_the_status_over_the_version_observed_then_the_event() {
        let (client, verifier) = scripted(vec![
            Exchange::new("POST", jobs_path(), 201, json!(job())),
            Exchange::new("PATCH", status_path(), 200, json!(calculation())),
            Exchange::new("POST", events_path(), 201, event_body()),
        ]);
        let ctx = context(client, &Catalog::default());
        let flow = act(&ctx, &calculation(), create_then_record())
            .await
            .unwrap();
        assert_eq!(flow, Flow::Continue);
        let bodies = verifier.await.unwrap();
        assert_eq!(bodies[0]["metadata"]["name"], json!(job().metadata.name));
        assert_eq!(
            bodies[0]["metadata"]["ownerReferences"][0]["uid"],
            "calc-uid"
        );
        assert_eq!(bodies[1]["metadata"]["resourceVersion"], "7");
        assert_eq!(bodies[1]["status"]["state"], "Running");
        assert_eq!(bodies[2]["reason"], "Running");
    }

    #[tokio::test]
    async fn a_status_write_over_a_stale_version_fails_the_reconcile_before_the_event() {
        let (client, verifier) = scripted(vec![
            Exchange::new("POST", jobs_path(), 201, json!(job())),
            Exchange::new(
                "PATCH",
                status_path(),
                409,
                status_body(409, "Conflict", "the object has been modified"),
            ),
        ]);
        let ctx = context(client, &Catalog::default());
        let error = act(&ctx, &calculation(), create_then_record())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ControllerError::Kube(kube::Error::Api(e)) if e.code == 409),
            "{error:?}"
        );
        // The event waits for the reconcile of the fresh copy.
        assert_eq!(verifier.await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_job_that_already_exists_is_this_generations_and_the_status_follows() {
        let (client, verifier) = scripted(vec![
            Exchange::new(
                "POST",
                jobs_path(),
                409,
                status_body(409, "AlreadyExists", "jobs.batch already exists"),
            ),
            Exchange::new("PATCH", status_path(), 200, json!(calculation())),
            Exchange::new("POST", events_path(), 201, event_body()),
        ]);
        let ctx = context(client, &Catalog::default());
        let flow = act(&ctx, &calculation(), create_then_record())
            .await
            .unwrap();
        assert_eq!(flow, Flow::Continue);
        assert_eq!(verifier.await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_refused_job_stops_the_decision_and_is_observed_next_time() {
        let (client, verifier) = scripted(vec![Exchange::new(
            "POST",
            jobs_path(),
            403,
            status_body(403, "Forbidden", "exceeded quota: jobs"),
        )]);
        let ctx = context(client, &Catalog::default());
        let flow = act(&ctx, &calculation(), create_then_record())
            .await
            .unwrap();
        // No status says Running for a Job that does not exist.
        assert_eq!(flow, Flow::Stop);
        assert_eq!(verifier.await.unwrap().len(), 1);
        assert_eq!(
            ctx.job_refusals.take("calc-uid", 1).as_deref(),
            Some("exceeded quota: jobs")
        );
        assert_eq!(ctx.job_refusals.take("calc-uid", 1), None);
    }
}

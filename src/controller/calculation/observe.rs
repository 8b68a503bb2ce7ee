//! What a calculation's reconcile looks at before deciding: the calculation, what it
//! refers to (from the caches), its data's delivery, its Job, the Job's result or
//! failure, and, when a Job may be created, the Job to create and the account it
//! would run as. Everything is observed before `decide`, which runs once.

use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, ServiceAccount},
};
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::decide::{JobState, MissingServiceAccount, Observed, ScheduleOrigin};
use super::job::{self, build_job, job_name};
use crate::api::{
    CANCEL_ANNOTATION, JobSettings, MetricCalculation, SCHEDULE_ITERATION_ANNOTATION,
    SUPERSEEDS_ANNOTATION,
};
use crate::controller::readiness;
use crate::controller::{Context, ControllerError};
use crate::job_contract::{
    self, CalculationResult, failure_config_map_name, owned_by, result_config_map_name,
};
use crate::plan::{self, Catalog};

/// Observes `calculation` for one reconcile.
pub async fn observe(
    calculation: &MetricCalculation,
    ctx: &Context,
) -> Result<Observed, ControllerError> {
    let namespace = calculation
        .namespace()
        .ok_or(ControllerError::NoNamespace)?;
    let name = calculation.name_any();
    let generation = calculation.metadata.generation.unwrap_or(1);
    let now = Timestamp::now();
    let (catalog, resolved) = ctx
        .references
        .resolve(&ctx.client, &namespace, calculation)
        .await?;
    let waiting = resolved.as_ref().ok().and_then(|r| {
        readiness::first_undelivered(
            &readiness::deliveries(&r.tables, &catalog, now),
            r.times.fact_end,
        )
    });
    let plan = resolved.map(|r| plan::compile(&r));
    let (warehouse_name, warehouse) = plan_warehouse(calculation, &catalog);
    let job_refused = plan.as_ref().ok().and_then(|plan| {
        ctx.defaults
            .policy
            .check(
                &warehouse,
                &ctx.defaults.image,
                ctx.defaults.service_account_name.as_deref(),
                &plan.engine.duckdb.data_directories,
            )
            .err()
            .map(|violation| match &warehouse_name {
                Some(name) => format!("Warehouse/{name}: {violation}"),
                None => violation.to_string(),
            })
    });
    let job_name = job_name(&name, generation);
    let uid = calculation.uid();
    let status = calculation.status.clone().unwrap_or_default();
    let created = status.sql_job.as_deref() == Some(job_name.as_str());
    let (job, without_pod) =
        job_state(&ctx.client, &namespace, &job_name, uid.as_deref(), created).await?;
    let cancel_requested = calculation
        .annotations()
        .get(CANCEL_ANNOTATION)
        .is_some_and(|v| v == "true");
    // The Job to create and the account it runs as are looked at only when a Job may
    // be created: most reconciles create none.
    let mut job_spec = None;
    let mut missing_service_account = None;
    if let Ok(plan) = &plan
        && may_create_job(super::settled(calculation), cancel_requested, &job)
    {
        job_spec = Some(build_job(calculation, plan, &warehouse, &ctx.defaults).map(Box::new));
        if let Some(account) = job::service_account(&warehouse, &ctx.defaults) {
            missing_service_account =
                service_account_missing(&ctx.client, &namespace, account).await;
        }
    }
    Ok(Observed {
        generation,
        status,
        cancel_requested,
        plan,
        waiting,
        job_name,
        job,
        job_without_pod: without_pod,
        job_spec,
        origin: schedule_origin(calculation),
        missing_service_account,
        job_refused,
        job_create_refused: uid
            .as_deref()
            .and_then(|uid| ctx.job_refusals.take(uid, generation)),
        created: calculation
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0),
        now,
    })
}

/// Whether a reconcile may create the calculation's Job: it has none, this generation
/// has not finished (`settled`), and no cancel is asked for.
fn may_create_job(settled: bool, cancel_requested: bool, job: &JobState) -> bool {
    *job == JobState::Missing && !settled && !cancel_requested
}

/// The ServiceAccount `name` when it does not exist in `namespace`.
async fn service_account_missing(
    client: &Client,
    namespace: &str,
    name: String,
) -> Option<MissingServiceAccount> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match accounts.get_opt(&name).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(MissingServiceAccount {
            namespace: namespace.to_string(),
            name,
        }),
        // The check is a courtesy: without the right to make it (RBAC kept from an
        // older chart), the Job is created as before.
        Err(error) => {
            tracing::warn!(
                %error,
                service_account = %name,
                "could not check the worker's ServiceAccount; creating the Job anyway"
            );
            None
        }
    }
}

/// The ConfigMap `name` if it exists and is owned by the object with uid `owner`: one
/// of the same name may be left by an earlier Job of the name, or made by anyone who
/// may create ConfigMaps.
async fn owned_config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: &str,
) -> Result<Option<ConfigMap>, kube::Error> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .filter(|config_map| owned_by(config_map, owner)))
}

/// The worker's result in the ConfigMap of the Job `job`, if that ConfigMap exists
/// and is owned by the object with uid `owner` (the Job, or once the Job is gone, the
/// calculation, which the worker makes an owner too).
async fn job_result(
    client: &Client,
    namespace: &str,
    job: &str,
    owner: &str,
) -> Result<Option<Result<CalculationResult, String>>, kube::Error> {
    Ok(
        owned_config_map(client, namespace, &result_config_map_name(job), owner)
            .await?
            .map(|config_map| job_contract::read_result(config_map, job)),
    )
}

/// The state of the Job `name` that the calculation with `owner` uid created, and
/// whether it is a Job still without a Pod; `created` says whether the calculation's
/// status records creating it.
async fn job_state(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: Option<&str>,
    created: bool,
) -> Result<(JobState, bool), kube::Error> {
    let Some(job) = Api::<Job>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok((
            state_of_job(client, namespace, name, owner, created, None).await?,
            false,
        ));
    };
    let state = state_of_job(client, namespace, name, owner, created, Some(&job)).await?;
    if state != JobState::Running || has_pods(&job) {
        return Ok((state, false));
    }
    // A Job whose Pod cannot be created changes not at all: only its Events say why.
    let failure = match job.metadata.uid.as_deref() {
        Some(uid) => pod_create_failure(client, namespace, name, uid).await,
        None => None,
    };
    Ok((
        failure.map_or(JobState::Running, JobState::PodsNotCreated),
        true,
    ))
}

/// Whether the Job has (or had) a Pod.
fn has_pods(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| {
        [s.active, s.ready, s.succeeded, s.failed, s.terminating]
            .iter()
            .any(|count| count.unwrap_or(0) > 0)
    })
}

/// The message of the newest `FailedCreate` Event of the Job with `uid`: why the Job
/// controller cannot create its Pod. `None` when there is none, or the Events cannot be
/// read (then the calculation just stays Running, as before this check).
async fn pod_create_failure(
    client: &Client,
    namespace: &str,
    job: &str,
    uid: &str,
) -> Option<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "involvedObject.kind=Job,involvedObject.name={job},involvedObject.uid={uid},reason=FailedCreate"
    );
    match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list
            .items
            .into_iter()
            .max_by_key(|e| {
                (e.last_timestamp.as_ref().map(|t| t.0)).or(e.event_time.as_ref().map(|t| t.0))
            })
            .and_then(|e| e.message),
        Err(error) => {
            tracing::warn!(%error, job, "could not read the Job's Events");
            None
        }
    }
}

/// The [`JobState`] of `job`, the Job `name` (`None`: there is none).
async fn state_of_job(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: Option<&str>,
    created: bool,
    job: Option<&Job>,
) -> Result<JobState, kube::Error> {
    let Some(job) = job else {
        // A Job deleted (by its TTL) before its outcome was read leaves the result,
        // which the calculation owns too.
        if created
            && let Some(owner) = owner
            && let Some(result) = job_result(client, namespace, name, owner).await?
        {
            return Ok(JobState::Succeeded(result));
        }
        return Ok(JobState::Missing);
    };
    // A Job of an earlier object of the same name must not be read as this one's run.
    if let Some(owner) = owner
        && !owned_by(job, owner)
    {
        return Ok(JobState::Foreign);
    }
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |type_: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    if is("Complete") {
        // Only a result this very Job owns: a ConfigMap of the same name may be left by
        // an earlier Job of the name, or made by anyone who may create ConfigMaps.
        let result = match job.metadata.uid.as_deref() {
            Some(job_uid) => job_result(client, namespace, name, job_uid).await?,
            None => None,
        }
        .unwrap_or_else(|| {
            Err(format!(
                "the Job {name} completed without writing its result ConfigMap \
                 {} (or one this Job does not own is in its place)",
                result_config_map_name(name)
            ))
        });
        return Ok(JobState::Succeeded(result));
    }
    if is("Failed") {
        // Why the worker failed, as it reported it; a worker that could not (killed,
        // or the API server out of reach) leaves the Job's own reason.
        let reported = match job.metadata.uid.as_deref() {
            Some(job_uid) => {
                owned_config_map(client, namespace, &failure_config_map_name(name), job_uid).await?
            }
            None => None,
        };
        let message = reported
            .and_then(job_contract::read_failure)
            .unwrap_or_else(|| {
                let reason = conditions
                    .iter()
                    .find(|c| c.type_ == "Failed")
                    .and_then(|c| c.reason.clone());
                format!(
                    "the Job failed ({})",
                    reason.unwrap_or_else(|| "no reason given".into())
                )
            });
        return Ok(JobState::Failed(message));
    }
    Ok(JobState::Running)
}

/// The schedule that made the calculation: its controlling owner, and what the
/// schedule wrote in the annotations.
fn schedule_origin(calculation: &MetricCalculation) -> Option<ScheduleOrigin> {
    let owner = calculation
        .owner_references()
        .iter()
        .find(|o| o.kind == "ScheduledMetricCalculation" && o.controller == Some(true))?;
    let annotations = calculation.annotations();
    Some(ScheduleOrigin {
        schedule: owner.name.clone(),
        iteration: annotations
            .get(SCHEDULE_ITERATION_ANNOTATION)
            .and_then(|v| v.parse().ok()),
        superseeds: annotations.get(SUPERSEEDS_ANNOTATION).cloned(),
    })
}

/// The name and Job settings of the calculation's Warehouse, if it names one.
pub fn plan_warehouse(
    calculation: &MetricCalculation,
    catalog: &Catalog,
) -> (Option<String>, JobSettings) {
    let template = &calculation.spec.calculation;
    let name = template.warehouse.clone().or_else(|| {
        catalog
            .exposure_tables
            .get(&template.exposure_table)
            .and_then(|t| t.spec.warehouse.clone())
    });
    let settings = name
        .as_ref()
        .and_then(|n| catalog.warehouses.get(n))
        .and_then(|w| w.spec.job.clone())
        .unwrap_or_default();
    (name, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::api_server;
    use serde_json::Value;

    /// A Complete Job `calc-1` of the calculation `calc-uid`, and its result ConfigMap
    /// owned by `owners`.
    fn completed_job_and_result(owners: &[&str]) -> std::collections::BTreeMap<String, Value> {
        let result = crate::job_contract::CalculationResult {
            times: crate::plan::CalculationPlan::for_tests().times.to_status(),
            metric_results: crate::api::MetricResults::default(),
            analysis: crate::api::Analysis::default(),
        };
        let job = serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "calc-1", "namespace": "default", "uid": "job-uid",
                "ownerReferences": [{"apiVersion": "tally.dev/v1alpha1", "kind": "MetricCalculation",
                    "name": "calc", "uid": "calc-uid", "controller": true}]},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]},
        });
        let config_map = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "calc-1-result", "namespace": "default",
                "ownerReferences": owners.iter().map(|uid| serde_json::json!({
                    "apiVersion": "v1", "kind": "Thing", "name": "x", "uid": uid})).collect::<Vec<_>>()},
            "data": {crate::job_contract::RESULT_KEY: serde_json::to_string(&result).unwrap()},
        });
        [
            (
                "/apis/batch/v1/namespaces/default/jobs/calc-1".to_string(),
                job,
            ),
            (
                "/api/v1/namespaces/default/configmaps/calc-1-result".to_string(),
                config_map,
            ),
        ]
        .into()
    }

    #[tokio::test]
    async fn only_a_result_the_job_owns_is_read() {
        let (client, _) = api_server(completed_job_and_result(&["job-uid", "calc-uid"]));
        let (state, _) = job_state(&client, "default", "calc-1", Some("calc-uid"), true)
            .await
            .unwrap();
        assert!(matches!(state, JobState::Succeeded(Ok(_))), "{state:?}");

        // Made by someone else in the namespace, naming the calculation as its owner.
        let (client, _) = api_server(completed_job_and_result(&["calc-uid"]));
        let (state, _) = job_state(&client, "default", "calc-1", Some("calc-uid"), true)
            .await
            .unwrap();
        let JobState::Succeeded(Err(message)) = state else {
            panic!("a result the Job does not own was read: {state:?}");
        };
        assert!(message.contains("does not own"), "{message}");
    }
}

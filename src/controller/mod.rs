//! `tally controller`: reconciles MetricCalculations into Jobs and results.
//!
//! Each reconcile observes (the calculation, what it refers to, its Job and result),
//! calls the pure [`decide`], then applies the actions. Status is written right after
//! a Job is created, and a finished calculation is never run again unless its spec
//! changes (a new generation).

mod backoff;
mod conditions;
mod decide;
mod events;
mod job;
mod job_policy;
pub mod leader;
mod names;
mod readiness;
mod schedule;
mod schedule_decide;
pub mod telemetry;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, ServiceAccount},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action as Requeue,
        reflector::{self, ObjectRef, Store, reflector},
        watcher::{self, watcher},
    },
};
use serde_json::Value;

pub use decide::{Action, JobState, MissingServiceAccount, Observed, ScheduleOrigin, decide};
pub use readiness::DataWait;

use backoff::Backoff;
use events::EventPublisher;
pub use job::{
    CALCULATION_LABEL, DEFAULT_CPU_REQUEST, DEFAULT_MEMORY_LIMIT, DEFAULT_MEMORY_REQUEST,
    JobDefaults, build_job, job_name, resource_requirements,
};
pub use job_policy::{DEFAULT_VOLUME_TYPES, JobPolicy};

use crate::api::{
    CANCEL_ANNOTATION, CalculationState, DimensionTable, ExposureTable, FactTable, JobSettings,
    Metric, MetricCalculation, SCHEDULE_ITERATION_ANNOTATION, SCHEDULE_LABEL,
    SUPERSEEDS_ANNOTATION, ScheduleState, ScheduledMetricCalculation, Warehouse,
};
use crate::job_contract::{
    self, CalculationResult, failure_config_map_name, owned_by, result_config_map_name,
};
use crate::plan::{self, Catalog};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
    /// An object the controller must create exists and belongs to another owner.
    #[error("{0}")]
    NameTaken(String),
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
}

/// Caches of everything a calculation can refer to, filled by watches: a reconcile
/// builds its namespace's catalog from them instead of listing five kinds.
#[derive(Clone)]
pub struct References {
    warehouses: Store<Warehouse>,
    exposure_tables: Store<ExposureTable>,
    fact_tables: Store<FactTable>,
    dimension_tables: Store<DimensionTable>,
    metrics: Store<Metric>,
}

/// What a watch needs of the kinds Tally watches (all namespaced).
trait Watched:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Where a controller loop watches: every namespace, or one of those `--namespaces`
/// lists (each gets a loop of its own, so that RBAC may grant it per namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    /// The scopes of `--namespaces`: each one listed, or every namespace when none is.
    pub fn of(namespaces: &[String]) -> Vec<Scope> {
        if namespaces.is_empty() {
            vec![Scope::All]
        } else {
            namespaces.iter().cloned().map(Scope::Namespace).collect()
        }
    }

    fn api<K: Watched>(&self, client: &Client) -> Api<K> {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }
}

/// A cache of every object of kind `K` in `scope`, filled by a watch driven on its
/// own task.
fn reflected<K: Watched>(client: &Client, scope: &Scope) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(scope.api::<K>(client), watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(stream.for_each(|event| async move {
        if let Err(error) = event {
            tracing::debug!(%error, "reference watch error; retrying");
        }
    }));
    store
}

impl References {
    /// Starts the watches that fill the caches (each on its own task).
    fn start(client: &Client, scope: &Scope) -> Self {
        Self {
            warehouses: reflected(client, scope),
            exposure_tables: reflected(client, scope),
            fact_tables: reflected(client, scope),
            dimension_tables: reflected(client, scope),
            metrics: reflected(client, scope),
        }
    }

    /// Waits until every cache holds its first full list: before, a reference could
    /// look missing when it is not. One waiter at a time, before any reconcile.
    async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.warehouses.wait_until_ready().await?;
        self.exposure_tables.wait_until_ready().await?;
        self.fact_tables.wait_until_ready().await?;
        self.dimension_tables.wait_until_ready().await?;
        self.metrics.wait_until_ready().await
    }

    /// The namespace's catalog, from the caches.
    fn catalog(&self, namespace: &str) -> Catalog {
        // The cache's own objects, shared: a namespace's tables may hold large sources.
        fn of<K: Resource<DynamicType = ()> + Clone>(
            store: &Store<K>,
            namespace: &str,
        ) -> impl Iterator<Item = Arc<K>> {
            store
                .state()
                .into_iter()
                .filter(move |o| o.meta().namespace.as_deref() == Some(namespace))
        }
        let mut catalog = Catalog::default();
        of(&self.warehouses, namespace).for_each(|r| catalog.add_shared(r));
        of(&self.exposure_tables, namespace).for_each(|r| catalog.add_shared(r));
        of(&self.fact_tables, namespace).for_each(|r| catalog.add_shared(r));
        of(&self.dimension_tables, namespace).for_each(|r| catalog.add_shared(r));
        of(&self.metrics, namespace).for_each(|r| catalog.add_shared(r));
        catalog
    }

    /// The namespace's catalog, with every reference of `calculation` that the caches
    /// lack fetched from the API server, and `calculation` resolved against it. The
    /// watch that triggers a reconcile on a new Metric, table or Warehouse is not the
    /// watch that fills the caches, so the reconcile it triggers may run before the
    /// cache has the object: without the fetch, the calculation would report it
    /// missing until its next timed look.
    async fn resolve(
        &self,
        client: &Client,
        namespace: &str,
        calculation: &MetricCalculation,
    ) -> Result<(Catalog, Result<plan::ResolvedCalculation, plan::PlanError>), kube::Error> {
        let mut catalog = self.catalog(namespace);
        let mut fetched = std::collections::BTreeSet::new();
        loop {
            let resolved = plan::resolve(calculation, &catalog);
            if let Err(plan::PlanError::MissingReference { kind, name, .. }) = &resolved
                && fetched.insert((*kind, name.clone()))
                && fetch_reference(client, namespace, kind, name, &mut catalog).await?
            {
                continue;
            }
            return Ok((catalog, resolved));
        }
    }
}

/// Adds the object `kind`/`name` to `catalog` if the API server has it; whether it did.
async fn fetch_reference(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    catalog: &mut Catalog,
) -> Result<bool, kube::Error> {
    async fn get<K>(client: &Client, namespace: &str, name: &str) -> Result<Option<K>, kube::Error>
    where
        K: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::<K>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
    }
    Ok(match kind {
        "Warehouse" => get(client, namespace, name)
            .await?
            .map(|r| catalog.add_warehouse(r)),
        "ExposureTable" => get(client, namespace, name)
            .await?
            .map(|r| catalog.add_exposure_table(r)),
        "FactTable" => get(client, namespace, name)
            .await?
            .map(|r| catalog.add_fact_table(r)),
        "DimensionTable" => get(client, namespace, name)
            .await?
            .map(|r| catalog.add_dimension_table(r)),
        "Metric" => get(client, namespace, name)
            .await?
            .map(|r| catalog.add_metric(r)),
        _ => None,
    }
    .is_some())
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

/// A JSON merge patch (RFC 7386) that turns `old` into `new`: objects are patched
/// field by field, with `null` for what `new` lacks; anything else is replaced.
fn merge_diff(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for (key, value) in new {
                let value = match old.get(key) {
                    Some(previous) => merge_diff(previous, value),
                    None => value.clone(),
                };
                patch.insert(key.clone(), value);
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// [`status_patch`] that applies only over the observed version of `object`: a
/// reconcile of a stale copy gets a conflict and runs again on the fresh one.
fn status_patch_over<K, S>(object: &K, old: Option<&S>, new: &S) -> Value
where
    K: Resource,
    S: serde::Serialize + schemars::JsonSchema,
{
    let mut patch = status_patch(old, new);
    patch["metadata"] = serde_json::json!({ "resourceVersion": object.resource_version() });
    patch
}

/// A merge patch that replaces the whole status with `new`. Nested objects are diffed
/// against the observed status, and every top-level field of the schema that `new`
/// lacks is nulled too, in case the observed status is stale.
fn status_patch<S: serde::Serialize + schemars::JsonSchema>(old: Option<&S>, new: &S) -> Value {
    let schema = schemars::schema_for!(S);
    let old = old
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or(Value::Null);
    let new = serde_json::to_value(new).unwrap_or(Value::Null);
    let mut patch = merge_diff(&old, &new);
    if let (Value::Object(map), Some(properties)) = (
        &mut patch,
        schema.get("properties").and_then(Value::as_object),
    ) {
        for field in properties.keys() {
            map.entry(field.clone()).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": patch })
}

async fn reconcile(
    calculation: Arc<MetricCalculation>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let namespace = calculation
        .namespace()
        .ok_or(ControllerError::NoNamespace)?;
    let name = calculation.name_any();
    let generation = calculation.metadata.generation.unwrap_or(1);
    let now = Timestamp::now();
    let (catalog, resolved) = ctx
        .references
        .resolve(&ctx.client, &namespace, &calculation)
        .await?;
    let waiting = resolved.as_ref().ok().and_then(|r| {
        readiness::first_undelivered(
            &readiness::deliveries(&r.tables, &catalog, now),
            r.times.fact_end,
        )
    });
    let plan = resolved.map(|r| plan::compile(&r));
    let (warehouse_name, warehouse) = plan_warehouse(&calculation, &catalog);
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
    let observed = Observed {
        generation,
        status,
        cancel_requested: calculation
            .annotations()
            .get(CANCEL_ANNOTATION)
            .is_some_and(|v| v == "true"),
        plan,
        waiting,
        job_name: job_name.clone(),
        job,
        origin: schedule_origin(&calculation),
        missing_service_account: None,
        job_refused,
        job_create_refused: None,
        created: calculation
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0),
        now,
    };
    let mut actions = decide(&observed);
    // The account is looked up only when a Job is to be created: most reconciles
    // create none.
    if actions.iter().any(|a| matches!(a, Action::CreateJob(_)))
        && let Some(name) = job::service_account(&warehouse, &ctx.defaults)
    {
        let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
        match accounts.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                actions = decide(&Observed {
                    missing_service_account: Some(MissingServiceAccount {
                        namespace: namespace.clone(),
                        name,
                    }),
                    ..observed.clone()
                });
            }
            // The check is a courtesy: without the right to make it (RBAC kept from an
            // older chart), the Job is created as before.
            Err(error) => tracing::warn!(
                %error,
                service_account = %name,
                "could not check the worker's ServiceAccount; creating the Job anyway"
            ),
        }
    }
    let mut state = observed.status.state;
    if let Some(refusal) = act(&ctx, &calculation, &warehouse, actions, &mut state).await? {
        // The API server refused the Job: the decision with that known replaces the
        // rest of the first (it said Running).
        let refused = decide(&Observed {
            job_create_refused: Some(refusal),
            ..observed.clone()
        });
        act(&ctx, &calculation, &warehouse, refused, &mut state).await?;
    }
    // Watches bring Job and reference changes. Data readiness by assumed lag needs a
    // timer, and so does a Pending calculation: the caches may learn of a reference
    // after the change that triggered this reconcile, and a Job in the way of its name
    // is not watched.
    // A Job without its Pod changes not at all while the Pod cannot be created: look
    // again soon.
    Ok(
        if matches!(
            state,
            Some(CalculationState::Waiting | CalculationState::Pending)
        ) {
            Requeue::requeue(Duration::from_secs(30))
        } else if without_pod && state == Some(CalculationState::Running) {
            Requeue::requeue(Duration::from_secs(15))
        } else {
            Requeue::await_change()
        },
    )
}

/// Carries out a calculation's actions in order, recording the state set in `state`.
/// Stops at a Job creation the API server refuses with a 4xx other than a conflict
/// (already there) or throttling (retried), and returns its message.
async fn act(
    ctx: &Context,
    calculation: &Arc<MetricCalculation>,
    warehouse: &JobSettings,
    actions: Vec<Action>,
    state: &mut Option<CalculationState>,
) -> Result<Option<String>, ControllerError> {
    let namespace = calculation
        .namespace()
        .ok_or(ControllerError::NoNamespace)?;
    let name = calculation.name_any();
    let calculations: Api<MetricCalculation> = Api::namespaced(ctx.client.clone(), &namespace);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    for action in actions {
        match action {
            Action::CreateJob(plan) => {
                let Some(job) = build_job(calculation, &plan, warehouse, &ctx.defaults) else {
                    continue;
                };
                match jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => {
                        return Ok(Some(e.message));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Action::DeleteJob(job_name) => {
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match jobs.delete(&job_name, &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Action::SetStatus(status) => {
                *state = status.state;
                let patch =
                    status_patch_over(&**calculation, calculation.status.as_ref(), &*status);
                calculations
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            Action::Event {
                warning,
                reason,
                note,
            } => {
                ctx.events
                    .publish(&**calculation, warning, reason, &note)
                    .await;
            }
        }
    }
    Ok(None)
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
fn plan_warehouse(
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

/// Logs a failed reconcile and retries it with per-object exponential backoff.
fn error_policy<K: Resource>(
    object: Arc<K>,
    error: &ControllerError,
    ctx: Arc<Context>,
) -> Requeue {
    let key = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let delay = ctx.backoff.next_delay(&key);
    match error {
        // A write over a stale copy: expected now and then, retried on the fresh one.
        ControllerError::Kube(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(object = %key, %error, retry_in = ?delay, "conflict; retrying")
        }
        _ => tracing::warn!(object = %key, %error, retry_in = ?delay, "reconcile failed; retrying"),
    }
    Requeue::requeue(delay)
}

/// Runs a reconcile and forgets the object's failures when it succeeds.
async fn with_backoff<K, F>(
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> F,
) -> Result<Requeue, ControllerError>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Requeue, ControllerError>>,
{
    let key = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let started = std::time::Instant::now();
    let result = reconcile(object, ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    ctx.metrics
        .reconciled(&K::kind(&()), result.is_ok(), started.elapsed());
    result
}

/// Adds watches on everything a calculation can refer to: a change to one
/// re-reconciles the objects of its namespace (resolution decides which are
/// affected) that are not `settled`: a finished calculation only runs again when its
/// own spec changes, and there may be thousands of them in a namespace with schedules.
fn watch_references<K: Watched>(
    controller: Controller<K>,
    client: &Client,
    scope: &Scope,
    settled: fn(&K) -> bool,
) -> Controller<K> {
    let store = controller.store();
    let same_namespace = move |namespace: Option<String>| {
        store
            .state()
            .into_iter()
            .filter(|c| c.namespace() == namespace && !settled(c))
            .map(|c| ObjectRef::from_obj(&*c))
            .collect::<Vec<_>>()
    };
    let mut controller = controller;
    macro_rules! watch {
        ($kind:ty) => {{
            let mapper = same_namespace.clone();
            controller = controller.watches(
                scope.api::<$kind>(client),
                watcher::Config::default(),
                move |r: $kind| mapper(r.namespace()),
            );
        }};
    }
    watch!(Warehouse);
    watch!(ExposureTable);
    watch!(FactTable);
    watch!(DimensionTable);
    watch!(Metric);
    controller
}

/// SIGTERM or SIGINT, heard by one listener for the life of the process: a signal
/// between two phases (waiting to lead, filling caches, reconciling) is never lost.
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// Starts listening; call once, as the controller starts.
    pub fn on_signal() -> Self {
        let (requested, listener) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_requested().await;
            let _ = requested.send(true);
        });
        Self(listener)
    }

    /// Resolves once a stop was requested.
    pub async fn requested(self) {
        let mut listener = self.0;
        // An error means the listener task is gone, which only a stop does.
        let _ = listener.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A controller of `K` that owns the `Child` objects labelled `child_label` and
/// watches everything a calculation can refer to.
fn controller_of<K: Watched, Child: Watched>(
    client: &Client,
    scope: &Scope,
    child_label: &str,
    concurrency: u16,
    settled: fn(&K) -> bool,
) -> Controller<K> {
    let controller = Controller::new(scope.api::<K>(client), watcher::Config::default())
        .owns(
            scope.api::<Child>(client),
            watcher::Config::default().labels(child_label),
        )
        // At most `concurrency` reconciles at once: unbounded, a burst of thousands of
        // new objects holds a request, its buffers and a resolved catalog for each.
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    watch_references(controller, client, scope, settled)
}

/// A calculation that finished its current generation: what it refers to no longer
/// matters to it.
fn calculation_settled(calculation: &MetricCalculation) -> bool {
    calculation.status.as_ref().is_some_and(|s| {
        s.state.is_some_and(CalculationState::is_terminal)
            && s.observed_generation == calculation.metadata.generation
    })
}

/// A cancelled schedule makes no more runs until it is resumed (an annotation on the
/// schedule itself).
fn schedule_settled(schedule: &ScheduledMetricCalculation) -> bool {
    schedule
        .status
        .as_ref()
        .is_some_and(|s| s.state == Some(ScheduleState::Cancelled))
}

/// Runs `controller` until `stop`, each reconcile under the per-object backoff.
async fn drive<K, F>(
    controller: Controller<K>,
    reconcile: fn(Arc<K>, Arc<Context>) -> F,
    context: Arc<Context>,
    stop: Stop,
) where
    K: Watched,
    F: std::future::Future<Output = Result<Requeue, ControllerError>> + Send + 'static,
{
    controller
        .graceful_shutdown_on(stop.requested())
        .run(
            move |object, ctx| with_backoff(object, ctx, reconcile),
            error_policy,
            context,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(kind = K::kind(&()).as_ref(), %error, "reconcile error");
            }
        })
        .await;
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
    });
    let calculations = drive(
        controller_of::<MetricCalculation, Job>(
            &client,
            &scope,
            CALCULATION_LABEL,
            limits.concurrency,
            calculation_settled,
        ),
        reconcile,
        context.clone(),
        stop.clone(),
    );
    let schedules = drive(
        controller_of::<ScheduledMetricCalculation, MetricCalculation>(
            &client,
            &scope,
            SCHEDULE_LABEL,
            limits.concurrency,
            schedule_settled,
        ),
        schedule::reconcile,
        context,
        stop,
    );
    futures::join!(calculations, schedules);
}

#[cfg(test)]
mod tests {
    use super::*;

    use kube::runtime::watcher::Event;

    /// A cache holding `objects`, as if its watch had delivered them.
    fn cache<K: Watched>(objects: impl IntoIterator<Item = K>) -> Store<K> {
        let (store, mut writer) = reflector::store();
        for object in objects {
            writer.apply_watcher_event(&Event::Apply(object));
        }
        store
    }

    /// A client whose API server answers GETs of the objects in `served` (by path)
    /// and 404 otherwise, and the paths it was asked for.
    fn api_server(
        served: std::collections::BTreeMap<String, Value>,
    ) -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = asked.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let path = request.uri().path().to_string();
                record.lock().unwrap().push(path.clone());
                let (code, body) = match served.get(&path) {
                    Some(object) => (200, object.clone()),
                    None => (
                        404,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": format!("{path} not found")}),
                    ),
                };
                respond.send_response(
                    http::Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), asked)
    }

    /// The example's resources, namespace `default`.
    fn example() -> (Catalog, MetricCalculation) {
        let manifests = crate::manifest::load(&[std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/checkout-experiment"
        ))])
        .unwrap();
        let calculation = manifests.calculations[0].1.clone();
        let mut catalog = manifests.catalog("default").unwrap().clone();
        // A cluster's Warehouse declares where its data is; `tally run` infers it.
        let data = std::mem::take(&mut catalog.local_data_directories);
        for warehouse in catalog.warehouses.values_mut() {
            Arc::make_mut(warehouse)
                .spec
                .duckdb
                .get_or_insert_with(Default::default)
                .data_directories = data.clone();
        }
        (catalog, calculation)
    }

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

    #[tokio::test]
    async fn a_reference_the_cache_has_not_seen_yet_is_fetched_and_resolves() {
        let (catalog, calculation) = example();
        let warehouse = (**catalog.warehouses.values().next().unwrap()).clone();
        let references = References {
            // The Warehouse's watch event triggered this reconcile; its cache lags.
            warehouses: cache([]),
            exposure_tables: cache(catalog.exposure_tables.values().map(|r| (**r).clone())),
            fact_tables: cache(catalog.fact_tables.values().map(|r| (**r).clone())),
            dimension_tables: cache(catalog.dimension_tables.values().map(|r| (**r).clone())),
            metrics: cache(catalog.metrics.values().map(|r| (**r).clone())),
        };
        let path = format!(
            "/apis/tally.dev/v1alpha1/namespaces/default/warehouses/{}",
            warehouse.name_any()
        );
        assert!(matches!(
            plan::resolve(&calculation, &references.catalog("default")),
            Err(plan::PlanError::MissingReference {
                kind: "Warehouse",
                ..
            })
        ));
        let (client, asked) =
            api_server([(path.clone(), serde_json::to_value(&warehouse).unwrap())].into());
        let (complete, resolved) = references
            .resolve(&client, "default", &calculation)
            .await
            .unwrap();
        assert!(resolved.is_ok());
        assert!(plan::resolve(&calculation, &complete).is_ok());
        assert_eq!(*asked.lock().unwrap(), [path]);
    }

    #[tokio::test]
    async fn a_reference_that_does_not_exist_is_asked_for_once_and_stays_missing() {
        let (catalog, calculation) = example();
        let references = References {
            warehouses: cache(catalog.warehouses.values().map(|r| (**r).clone())),
            exposure_tables: cache(catalog.exposure_tables.values().map(|r| (**r).clone())),
            fact_tables: cache(catalog.fact_tables.values().map(|r| (**r).clone())),
            dimension_tables: cache(catalog.dimension_tables.values().map(|r| (**r).clone())),
            metrics: cache([]),
        };
        let (client, asked) = api_server([].into());
        let (_, partial) = references
            .resolve(&client, "default", &calculation)
            .await
            .unwrap();
        assert!(matches!(
            partial,
            Err(plan::PlanError::MissingReference { kind: "Metric", .. })
        ));
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    #[test]
    fn only_cancelled_schedules_ignore_reference_changes() {
        let schedule = |state| {
            let mut s: ScheduledMetricCalculation = serde_json::from_value(serde_json::json!({
                "apiVersion": "tally.dev/v1alpha1",
                "kind": "ScheduledMetricCalculation",
                "metadata": {"name": "s", "namespace": "ns"},
                "spec": {"metricCalculationSpec": {"metric": "m", "exposureTable": "e"},
                         "scheduleStartTime": "2026-10-15T00:00:00Z",
                         "scheduleIntervals": ["1d"]},
            }))
            .unwrap();
            s.status = Some(crate::api::ScheduledMetricCalculationStatus {
                state,
                ..Default::default()
            });
            s
        };
        assert!(schedule_settled(&schedule(Some(ScheduleState::Cancelled))));
        // An active schedule waits for data that a table's status may announce.
        assert!(!schedule_settled(&schedule(Some(ScheduleState::Active))));
        assert!(!schedule_settled(&schedule(None)));
    }

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
        assert!(calculation_settled(&calculation(
            Some(Completed),
            Some(1),
            1
        )));
        assert!(calculation_settled(&calculation(Some(Failed), Some(2), 2)));
        assert!(calculation_settled(&calculation(
            Some(Cancelled),
            Some(1),
            1
        )));
        // A spec edit not yet acted on, and every unfinished state, still listen.
        assert!(!calculation_settled(&calculation(
            Some(Completed),
            Some(1),
            2
        )));
        for state in [
            None,
            Some(Pending),
            Some(Waiting),
            Some(Running),
            Some(Cancelling),
        ] {
            assert!(
                !calculation_settled(&calculation(state, Some(1), 1)),
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_status_patch_clears_every_field_the_new_status_lacks() {
        let patch = status_patch(None, &crate::api::MetricCalculationStatus::default());
        let status = patch["status"].as_object().unwrap();
        for field in [
            "state",
            "error",
            "metricResults",
            "analysis",
            "superseeds",
            "completionTime",
        ] {
            assert_eq!(status.get(field), Some(&Value::Null), "{field}");
        }
        assert_eq!(status.len(), 15);
    }

    #[test]
    fn a_status_patch_replaces_nested_objects_instead_of_merging_them() {
        use crate::api::{
            Calculating, ScheduleActivity, Scheduled, ScheduledMetricCalculationStatus,
        };
        let old = ScheduledMetricCalculationStatus {
            status: Some(ScheduleActivity {
                scheduled: Some(Scheduled {
                    next_schedule_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        Timestamp::UNIX_EPOCH,
                    ),
                }),
                ..ScheduleActivity::default()
            }),
            ..ScheduledMetricCalculationStatus::default()
        };
        let new = ScheduledMetricCalculationStatus {
            status: Some(ScheduleActivity {
                calculating: Some(Calculating {
                    metric_calculation: "daily-0-1".into(),
                }),
                ..ScheduleActivity::default()
            }),
            ..ScheduledMetricCalculationStatus::default()
        };
        let patch = status_patch(Some(&old), &new);
        assert_eq!(patch["status"]["status"]["scheduled"], Value::Null);
        assert_eq!(
            patch["status"]["status"]["calculating"]["metricCalculation"],
            "daily-0-1"
        );
        assert_eq!(patch["status"]["latestCalculation"], Value::Null);
    }

    #[test]
    fn namespaces_listed_are_watched_each_on_its_own_and_none_means_all() {
        assert_eq!(Scope::of(&[]), [Scope::All]);
        assert_eq!(
            Scope::of(&["analytics".into(), "growth".into()]),
            [
                Scope::Namespace("analytics".into()),
                Scope::Namespace("growth".into())
            ]
        );
    }
}

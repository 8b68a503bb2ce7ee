//! The Job that runs a calculation (DESIGN §4), built purely from the calculation,
//! its plan, its Warehouse's Job settings and the controller's defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{
        Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
        PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
    },
    core::v1::{
        Capabilities, ConfigMapKeySelector, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceFieldSelector,
        ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
        VolumeMount,
    },
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::api::{JobSettings, KeyReference, MetricCalculation};
use crate::job_contract::{
    CPU_LIMIT_ENV, JOB_NAME_ENV, MEMORY_LIMIT_ENV, NAMESPACE_ENV, PERMANENT_FAILURE_EXIT_CODE,
    PLAN_ENV, POSTGRES_CA_ENV as CA_ENV, POSTGRES_PASSWORD_ENV as PASSWORD_ENV,
};
use crate::plan::CalculationPlan;

pub const CALCULATION_LABEL: &str = "tally.dev/calculation";

/// Defaults for every calculation Job, overridable per Warehouse.
#[derive(Debug, Clone)]
pub struct JobDefaults {
    pub image: String,
    pub service_account_name: Option<String>,
    /// What a Warehouse's `job` settings may ask for.
    pub policy: super::job_policy::JobPolicy,
    pub backoff_limit: i32,
    pub active_deadline_seconds: i64,
    pub ttl_seconds_after_finished: i32,
    /// The worker container's requests and limits unless the Warehouse sets
    /// `job.resources`: without a limit DuckDB sizes itself to the whole node.
    pub resources: ResourceRequirements,
}

/// `--worker-*-request`/`--worker-*-limit` defaults (the chart's `worker.resources`).
pub const DEFAULT_CPU_REQUEST: &str = "250m";
pub const DEFAULT_MEMORY_REQUEST: &str = "512Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "2Gi";

/// Requests and limits from quantities; an empty one is left out.
pub fn resource_requirements(
    cpu_request: &str,
    memory_request: &str,
    cpu_limit: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let quantities = |pairs: [(&str, &str); 2]| {
        let map: BTreeMap<String, Quantity> = pairs
            .iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(name, value)| (name.to_string(), Quantity(value.trim().to_string())))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: quantities([("cpu", cpu_request), ("memory", memory_request)]),
        limits: quantities([("cpu", cpu_limit), ("memory", memory_limit)]),
        ..ResourceRequirements::default()
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            image: concat!("ghcr.io/tally-dev/tally:", env!("CARGO_PKG_VERSION")).to_string(),
            service_account_name: None,
            policy: super::job_policy::JobPolicy::default(),
            backoff_limit: 2,
            active_deadline_seconds: 6 * 3600,
            ttl_seconds_after_finished: 7 * 24 * 3600,
            resources: resource_requirements(
                DEFAULT_CPU_REQUEST,
                DEFAULT_MEMORY_REQUEST,
                "",
                DEFAULT_MEMORY_LIMIT,
            ),
        }
    }
}

/// An environment variable holding one of the worker container's limits (the
/// downward API gives the node's allocatable amount when there is no limit).
fn limit_env(name: &str, resource: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(WORKER_CONTAINER.into()),
                resource: resource.into(),
                ..ResourceFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The deterministic Job name of a calculation's generation (at most 63 characters).
pub fn job_name(calculation: &str, generation: i64) -> String {
    crate::controller::plumbing::names::bounded(calculation, &format!("-{generation}"), 63)
}

/// The ServiceAccount a calculation Job runs as: its Warehouse's, else the
/// controller's default; `None` is the namespace's `default` account.
pub fn service_account(settings: &JobSettings, defaults: &JobDefaults) -> Option<String> {
    settings
        .service_account_name
        .clone()
        .or_else(|| defaults.service_account_name.clone())
}

/// The emptyDir every calculation Job gets for DuckDB's spill files.
const SCRATCH_VOLUME: &str = "tally-scratch";
const SCRATCH_MOUNT: &str = "/var/tmp/tally";
const WORKER_CONTAINER: &str = "worker";

/// Retries only what a retry can fix: a worker that exits with its permanent-failure
/// code fails the Job at once, and a Pod evicted or preempted (a disruption, not the
/// calculation's fault) does not count against `backoffLimit`.
fn pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(WORKER_CONTAINER.into()),
                    operator: "In".into(),
                    values: vec![i32::from(PERMANENT_FAILURE_EXIT_CODE)],
                }),
                on_pod_conditions: None,
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
            },
        ],
    }
}

fn from_secret(name: &str, key: &KeyReference) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: key.name.clone(),
                key: key.key.clone(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A warehouse's password and CA reach the worker by reference: Kubernetes sets
/// them from the Secret (or ConfigMap) as environment variables, so their values are
/// in no Job spec, plan or status, and the worker needs no right to read Secrets.
/// The plan names the variable the password is in.
fn credentials(plan: &mut CalculationPlan) -> Vec<EnvVar> {
    let Some(postgres) = plan.engine.postgres.as_mut() else {
        return Vec::new();
    };
    // `passwordEnv` is `tally run`'s; in a Job, only the Secret counts.
    postgres.password_env = Some(PASSWORD_ENV.to_string());
    let mut env = Vec::new();
    if let Some(secret) = &postgres.password_secret_ref {
        env.push(from_secret(PASSWORD_ENV, secret));
    }
    if let Some(ca) = &postgres.ca_certificate {
        if let Some(secret) = &ca.secret_key_ref {
            env.push(from_secret(CA_ENV, secret));
        } else if let Some(config_map) = &ca.config_map_key_ref {
            env.push(EnvVar {
                name: CA_ENV.into(),
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: config_map.name.clone(),
                        key: config_map.key.clone(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    env
}

/// The Job that runs `plan` for `calculation`, or why there can be none.
pub fn build_job(
    calculation: &MetricCalculation,
    plan: &CalculationPlan,
    settings: &JobSettings,
    defaults: &JobDefaults,
) -> Result<Job, String> {
    let owner = calculation
        .controller_owner_ref(&())
        .ok_or("the MetricCalculation has no uid to own its Job")?;
    let name = job_name(
        &calculation.name_any(),
        calculation.metadata.generation.unwrap_or(1),
    );
    let labels = BTreeMap::from([(
        CALCULATION_LABEL.to_string(),
        crate::controller::plumbing::names::label_value(&calculation.name_any()),
    )]);
    // The root filesystem is read-only: DuckDB spills to the scratch volume unless
    // the Warehouse names another place. A Warehouse volume of the scratch volume's
    // name or mounted at its path stands in for it (two would make the Job invalid).
    let scratch = !settings.volumes.iter().any(|v| v.name == SCRATCH_VOLUME)
        && !settings
            .volume_mounts
            .iter()
            .any(|m| m.name == SCRATCH_VOLUME || m.mount_path == SCRATCH_MOUNT);
    let mut plan = plan.clone();
    plan.engine
        .duckdb
        .temp_directory
        .get_or_insert_with(|| SCRATCH_MOUNT.to_string());
    let credentials = credentials(&mut plan);
    let plan_json =
        serde_json::to_string(&plan).map_err(|e| format!("the plan could not be encoded: {e}"))?;
    let mut env = vec![
        EnvVar {
            name: PLAN_ENV.into(),
            value: Some(plan_json),
            ..EnvVar::default()
        },
        EnvVar {
            name: JOB_NAME_ENV.into(),
            value: Some(name.clone()),
            ..EnvVar::default()
        },
        EnvVar {
            name: NAMESPACE_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        limit_env(MEMORY_LIMIT_ENV, "limits.memory"),
        limit_env(CPU_LIMIT_ENV, "limits.cpu"),
    ];
    env.extend(credentials);
    let container = Container {
        name: WORKER_CONTAINER.into(),
        image: Some(
            settings
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        args: Some(vec!["worker".into()]),
        env: Some(env),
        resources: Some(
            settings
                .resources
                .clone()
                .unwrap_or_else(|| defaults.resources.clone()),
        ),
        volume_mounts: Some(
            settings
                .volume_mounts
                .iter()
                .cloned()
                .chain(scratch.then(|| VolumeMount {
                    name: SCRATCH_VOLUME.into(),
                    mount_path: SCRATCH_MOUNT.into(),
                    ..VolumeMount::default()
                }))
                .collect(),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: calculation.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(settings.backoff_limit.unwrap_or(defaults.backoff_limit)),
            pod_failure_policy: Some(pod_failure_policy()),
            active_deadline_seconds: Some(
                settings
                    .active_deadline_seconds
                    .unwrap_or(defaults.active_deadline_seconds),
            ),
            ttl_seconds_after_finished: Some(
                settings
                    .ttl_seconds_after_finished
                    .unwrap_or(defaults.ttl_seconds_after_finished),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: service_account(settings, defaults),
                    containers: vec![container],
                    volumes: Some(
                        settings
                            .volumes
                            .iter()
                            .cloned()
                            .chain(scratch.then(|| Volume {
                                name: SCRATCH_VOLUME.into(),
                                empty_dir: Some(EmptyDirVolumeSource::default()),
                                ..Volume::default()
                            }))
                            .collect(),
                    ),
                    node_selector: (!settings.node_selector.is_empty())
                        .then(|| settings.node_selector.clone()),
                    tolerations: (!settings.tolerations.is_empty())
                        .then(|| settings.tolerations.clone()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calculation() -> MetricCalculation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tally.dev/v1alpha1",
            "kind": "MetricCalculation",
            "metadata": {"name": "calc", "namespace": "ns", "uid": "u-1", "generation": 2},
            "spec": {"metric": "m", "exposureTable": "e",
                     "startTime": "2026-10-15T00:00:00Z", "endTime": "2026-11-05T00:00:00Z"},
        }))
        .unwrap()
    }

    fn plan() -> CalculationPlan {
        CalculationPlan::for_tests()
    }

    fn worker_container(job: &Job) -> &Container {
        &job.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn plan_of(job: &Job) -> CalculationPlan {
        let env = worker_container(job).env.as_ref().unwrap();
        let plan = env.iter().find(|e| e.name == PLAN_ENV).unwrap();
        serde_json::from_str(plan.value.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn duckdb_spills_to_a_scratch_volume_beside_the_warehouse_volumes() {
        let settings: JobSettings = serde_json::from_value(serde_json::json!({
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "lake"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}],
        }))
        .unwrap();
        let job = build_job(&calculation(), &plan(), &settings, &JobDefaults::default()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("calc-2"));
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let volumes: Vec<&str> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data", SCRATCH_VOLUME]);
        let scratch = &pod.volumes.as_ref().unwrap()[1];
        assert!(scratch.empty_dir.is_some());
        let mounts: Vec<(&str, &str)> = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(mounts, [("data", "/data"), (SCRATCH_VOLUME, SCRATCH_MOUNT)]);
        assert_eq!(
            plan_of(&job).engine.duckdb.temp_directory.as_deref(),
            Some(SCRATCH_MOUNT)
        );
        // A Warehouse volume at the scratch path replaces the scratch volume.
        let own_mount: JobSettings = serde_json::from_value(serde_json::json!({
            "volumes": [{"name": "fast-disk", "hostPath": {"path": "/mnt/nvme"}}],
            "volumeMounts": [{"name": "fast-disk", "mountPath": SCRATCH_MOUNT}],
        }))
        .unwrap();
        let job = build_job(&calculation(), &plan(), &own_mount, &JobDefaults::default()).unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.volumes.as_ref().unwrap().len(), 1);
        assert_eq!(pod.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
        // A Warehouse's own temp directory is kept.
        let mut own = plan();
        own.engine.duckdb.temp_directory = Some("/data/spill".into());
        let job = build_job(&calculation(), &own, &settings, &JobDefaults::default()).unwrap();
        assert_eq!(
            plan_of(&job).engine.duckdb.temp_directory.as_deref(),
            Some("/data/spill")
        );
    }

    #[test]
    fn a_postgres_password_reaches_the_worker_only_as_a_secret_reference() {
        let mut plan = plan();
        plan.engine.engine = crate::api::Engine::Postgres;
        plan.engine.postgres = Some(
            serde_json::from_value(serde_json::json!({
                "host": "db.internal", "database": "analytics", "user": "tally",
                "passwordSecretRef": {"name": "warehouse-credentials", "key": "password"},
                "passwordEnv": "MY_LOCAL_PASSWORD",
                "sslMode": "verify-full",
                "caCertificate": {"configMapKeyRef": {"name": "db-ca", "key": "ca.crt"}},
            }))
            .unwrap(),
        );
        let job = build_job(
            &calculation(),
            &plan,
            &JobSettings::default(),
            &JobDefaults::default(),
        )
        .unwrap();
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        let password = env.iter().find(|e| e.name == PASSWORD_ENV).unwrap();
        assert_eq!(password.value, None);
        let secret = password
            .value_from
            .as_ref()
            .and_then(|from| from.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("warehouse-credentials", "password")
        );
        let ca = env.iter().find(|e| e.name == CA_ENV).unwrap();
        let config_map = ca
            .value_from
            .as_ref()
            .and_then(|from| from.config_map_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (config_map.name.as_str(), config_map.key.as_str()),
            ("db-ca", "ca.crt")
        );
        // The plan names where the password is, and holds no value of it.
        let carried = plan_of(&job);
        let postgres = carried.engine.postgres.as_ref().unwrap();
        assert_eq!(postgres.password_env.as_deref(), Some(PASSWORD_ENV));
        // Every literal value in the Job: none is a credential, only references.
        for e in env {
            if let Some(value) = &e.value {
                assert!(!value.contains("MY_LOCAL_PASSWORD"), "{}: {value}", e.name);
            }
        }
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.secret.is_none())
        );
    }

    #[test]
    fn a_permanent_worker_failure_fails_the_job_at_once_and_a_disruption_is_not_counted() {
        let job = build_job(
            &calculation(),
            &plan(),
            &JobSettings::default(),
            &JobDefaults::default(),
        )
        .unwrap();
        let spec = job.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        // podFailurePolicy needs restartPolicy Never, and names the worker container.
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let rules = &spec.pod_failure_policy.as_ref().unwrap().rules;
        let fail = rules.iter().find(|r| r.action == "FailJob").unwrap();
        let codes = fail.on_exit_codes.as_ref().unwrap();
        assert_eq!(
            codes.container_name.as_deref(),
            Some(pod.containers[0].name.as_str())
        );
        assert_eq!(codes.operator, "In");
        assert_eq!(codes.values, [i32::from(PERMANENT_FAILURE_EXIT_CODE)]);
        let ignore = rules.iter().find(|r| r.action == "Ignore").unwrap();
        assert_eq!(
            ignore.on_pod_conditions.as_ref().unwrap()[0].type_,
            "DisruptionTarget"
        );
    }

    #[test]
    fn a_worker_gets_default_requests_and_a_memory_limit_and_reads_its_limits() {
        let job = build_job(
            &calculation(),
            &plan(),
            &JobSettings::default(),
            &JobDefaults::default(),
        )
        .unwrap();
        let container = worker_container(&job);
        let resources = container.resources.as_ref().unwrap();
        let get = |map: &Option<BTreeMap<String, Quantity>>, key: &str| {
            map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone())
        };
        assert_eq!(
            get(&resources.requests, "cpu").as_deref(),
            Some(DEFAULT_CPU_REQUEST)
        );
        assert_eq!(
            get(&resources.requests, "memory").as_deref(),
            Some(DEFAULT_MEMORY_REQUEST)
        );
        assert_eq!(
            get(&resources.limits, "memory").as_deref(),
            Some(DEFAULT_MEMORY_LIMIT)
        );
        assert_eq!(get(&resources.limits, "cpu"), None);
        // The worker learns its limits from the downward API.
        let env = container.env.as_ref().unwrap();
        for (name, resource) in [
            (MEMORY_LIMIT_ENV, "limits.memory"),
            (CPU_LIMIT_ENV, "limits.cpu"),
        ] {
            let field = env
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref()?.resource_field_ref.as_ref())
                .unwrap_or_else(|| panic!("no {name}"));
            assert_eq!(field.resource, resource);
            assert_eq!(
                field.container_name.as_deref(),
                Some(container.name.as_str())
            );
        }
        // A Warehouse's own resources replace the defaults.
        let own: JobSettings = serde_json::from_value(serde_json::json!({
            "resources": {"limits": {"cpu": "4", "memory": "16Gi"}},
        }))
        .unwrap();
        let job = build_job(&calculation(), &plan(), &own, &JobDefaults::default()).unwrap();
        let container = worker_container(&job);
        let resources = container.resources.as_ref().unwrap();
        assert_eq!(get(&resources.limits, "memory").as_deref(), Some("16Gi"));
        assert_eq!(get(&resources.requests, "cpu"), None);
    }

    #[test]
    fn resource_requirements_leave_out_empty_quantities() {
        let resources = resource_requirements("1", "", "", "");
        assert_eq!(
            resources.requests.unwrap().keys().collect::<Vec<_>>(),
            ["cpu"]
        );
        assert!(resources.limits.is_none());
    }
}

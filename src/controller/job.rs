//! The Job that runs a calculation (DESIGN §4), built purely from the calculation,
//! its plan, its Warehouse's Job settings and the controller's defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        Capabilities, Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSecurityContext,
        PodSpec, PodTemplateSpec, SeccompProfile, SecurityContext,
    },
};
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::api::{JobSettings, MetricCalculation};
use crate::plan::CalculationPlan;
use crate::worker::{JOB_NAME_ENV, NAMESPACE_ENV, PLAN_ENV};

pub const CALCULATION_LABEL: &str = "tally.dev/calculation";

/// Defaults for every calculation Job, overridable per Warehouse.
#[derive(Debug, Clone)]
pub struct JobDefaults {
    pub image: String,
    pub service_account_name: Option<String>,
    pub backoff_limit: i32,
    pub active_deadline_seconds: i64,
    pub ttl_seconds_after_finished: i32,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            image: concat!("ghcr.io/tally-dev/tally:", env!("CARGO_PKG_VERSION")).to_string(),
            service_account_name: None,
            backoff_limit: 2,
            active_deadline_seconds: 6 * 3600,
            ttl_seconds_after_finished: 7 * 24 * 3600,
        }
    }
}

/// The deterministic Job name of a calculation's generation (at most 63 characters).
pub fn job_name(calculation: &str, generation: i64) -> String {
    super::names::bounded(calculation, &format!("-{generation}"), 63)
}

/// The ServiceAccount a calculation Job runs as: its Warehouse's, else the
/// controller's default; `None` is the namespace's `default` account.
pub fn service_account(settings: &JobSettings, defaults: &JobDefaults) -> Option<String> {
    settings
        .service_account_name
        .clone()
        .or_else(|| defaults.service_account_name.clone())
}

pub fn build_job(
    calculation: &MetricCalculation,
    plan: &CalculationPlan,
    settings: &JobSettings,
    defaults: &JobDefaults,
) -> Option<Job> {
    let owner = calculation.controller_owner_ref(&())?;
    let name = job_name(
        &calculation.name_any(),
        calculation.metadata.generation.unwrap_or(1),
    );
    let labels = BTreeMap::from([(
        CALCULATION_LABEL.to_string(),
        super::names::label_value(&calculation.name_any()),
    )]);
    let plan_json = serde_json::to_string(plan).ok()?;
    let env = vec![
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
    ];
    let container = Container {
        name: "worker".into(),
        image: Some(
            settings
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        args: Some(vec!["worker".into()]),
        env: Some(env),
        resources: settings.resources.clone(),
        volume_mounts: (!settings.volume_mounts.is_empty()).then(|| settings.volume_mounts.clone()),
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
    Some(Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: calculation.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(settings.backoff_limit.unwrap_or(defaults.backoff_limit)),
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
                    volumes: (!settings.volumes.is_empty()).then(|| settings.volumes.clone()),
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

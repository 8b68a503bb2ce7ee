//! What a Warehouse's `job` settings may ask of calculation Jobs (DESIGN §7). The
//! controller creates Jobs with its own rights, so whoever may write a Warehouse would
//! otherwise get Pods with any image, any ServiceAccount of the namespace and any
//! volume, without the right to create Pods. The policy is the controller's, set by
//! the chart; a Warehouse that asks for more holds its calculations `Pending`.

use k8s_openapi::api::core::v1::Volume;

use crate::api::JobSettings;

/// The volume types a Warehouse may mount when the controller is given none: those
/// the `restricted` Pod Security profile admits, less `ephemeral` (a claim the
/// Warehouse's author could not make directly). `projected` covers ConfigMaps,
/// Secrets and the Pod's own token; `hostPath` is never allowed.
pub const DEFAULT_VOLUME_TYPES: [&str; 7] = [
    "configMap",
    "secret",
    "emptyDir",
    "persistentVolumeClaim",
    "csi",
    "projected",
    "downwardAPI",
];

#[derive(Debug, Clone, PartialEq)]
pub struct JobPolicy {
    /// Repositories (image names without tag or digest) a Warehouse's `job.image` may
    /// name, besides the worker image's own.
    pub image_repositories: Vec<String>,
    /// ServiceAccounts a Warehouse's `job.serviceAccountName` may name, besides the
    /// worker's.
    pub service_accounts: Vec<String>,
    pub volume_types: Vec<String>,
    /// Node labels a Warehouse's `job.nodeSelector` may select on.
    pub node_selector_keys: Vec<String>,
    /// Taint keys a Warehouse's `job.tolerations` may tolerate.
    pub toleration_keys: Vec<String>,
}

impl Default for JobPolicy {
    fn default() -> Self {
        Self {
            image_repositories: Vec::new(),
            service_accounts: Vec::new(),
            volume_types: DEFAULT_VOLUME_TYPES.iter().map(|t| t.to_string()).collect(),
            node_selector_keys: Vec::new(),
            toleration_keys: Vec::new(),
        }
    }
}

/// A Warehouse `job` setting the policy refuses: the field and the rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("spec.job.{field}: {rule}")]
pub struct PolicyViolation {
    pub field: String,
    pub rule: String,
}

/// An image's repository: without its digest and tag.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match (image.rfind(':'), image.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &image[..colon],
        (Some(colon), None) => &image[..colon],
        _ => image,
    }
}

/// The volume's type: the name of its one source field.
fn volume_type(volume: &Volume) -> &'static str {
    let sources: [(&'static str, bool); 30] = [
        (
            "awsElasticBlockStore",
            volume.aws_elastic_block_store.is_some(),
        ),
        ("azureDisk", volume.azure_disk.is_some()),
        ("azureFile", volume.azure_file.is_some()),
        ("cephfs", volume.cephfs.is_some()),
        ("cinder", volume.cinder.is_some()),
        ("configMap", volume.config_map.is_some()),
        ("csi", volume.csi.is_some()),
        ("downwardAPI", volume.downward_api.is_some()),
        ("emptyDir", volume.empty_dir.is_some()),
        ("ephemeral", volume.ephemeral.is_some()),
        ("fc", volume.fc.is_some()),
        ("flexVolume", volume.flex_volume.is_some()),
        ("flocker", volume.flocker.is_some()),
        ("gcePersistentDisk", volume.gce_persistent_disk.is_some()),
        ("gitRepo", volume.git_repo.is_some()),
        ("glusterfs", volume.glusterfs.is_some()),
        ("hostPath", volume.host_path.is_some()),
        ("image", volume.image.is_some()),
        ("iscsi", volume.iscsi.is_some()),
        ("nfs", volume.nfs.is_some()),
        (
            "persistentVolumeClaim",
            volume.persistent_volume_claim.is_some(),
        ),
        (
            "photonPersistentDisk",
            volume.photon_persistent_disk.is_some(),
        ),
        ("portworxVolume", volume.portworx_volume.is_some()),
        ("projected", volume.projected.is_some()),
        ("quobyte", volume.quobyte.is_some()),
        ("rbd", volume.rbd.is_some()),
        ("scaleIO", volume.scale_io.is_some()),
        ("secret", volume.secret.is_some()),
        ("storageos", volume.storageos.is_some()),
        ("vsphereVolume", volume.vsphere_volume.is_some()),
    ];
    // A volume without a source is an emptyDir, as the API server defaults it.
    sources
        .iter()
        .find(|(_, set)| *set)
        .map_or("emptyDir", |(name, _)| name)
}

/// Whether the volume carries credentials: Secret data (a `secret` volume, or a
/// `projected` one with a Secret source) or a ServiceAccount token.
fn holds_secrets(volume: &Volume) -> bool {
    volume.secret.is_some()
        || volume.projected.as_ref().is_some_and(|projected| {
            projected
                .sources
                .iter()
                .flatten()
                .any(|source| source.secret.is_some() || source.service_account_token.is_some())
        })
}

/// Whether `path` is `directory` or lies under it.
fn under(path: &str, directory: &str) -> bool {
    let path = path.trim_end_matches('/');
    let directory = directory.trim_end_matches('/');
    path == directory || path.starts_with(&format!("{directory}/"))
}

impl JobPolicy {
    /// Checks a Warehouse's Job settings against the policy. `worker_image` and
    /// `worker_service_account` are the controller's own defaults, always allowed;
    /// `data_directories` are what the worker may read, where no Secret may be
    /// mounted (its content would reach the results).
    pub fn check(
        &self,
        settings: &JobSettings,
        worker_image: &str,
        worker_service_account: Option<&str>,
        data_directories: &[String],
    ) -> Result<(), PolicyViolation> {
        let violation = |field: String, rule: String| Err(PolicyViolation { field, rule });
        if let Some(image) = &settings.image {
            let wanted = repository(image);
            let allowed = std::iter::once(repository(worker_image))
                .chain(self.image_repositories.iter().map(String::as_str))
                .any(|allowed| allowed == wanted);
            if !allowed {
                return violation(
                    "image".into(),
                    format!(
                        "the repository {wanted} is not among the worker images the controller \
                         allows ({}); ask the cluster's administrator to add it to the chart's \
                         worker.policy.imageRepositories",
                        std::iter::once(repository(worker_image))
                            .chain(self.image_repositories.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if let Some(account) = &settings.service_account_name {
            let allowed = worker_service_account == Some(account.as_str())
                || self.service_accounts.contains(account);
            if !allowed {
                return violation(
                    "serviceAccountName".into(),
                    format!(
                        "calculation Jobs may run as {} only; ask the cluster's administrator \
                         to add {account} to the chart's worker.policy.serviceAccounts",
                        worker_service_account
                            .into_iter()
                            .chain(self.service_accounts.iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for (index, volume) in settings.volumes.iter().enumerate() {
            let kind = volume_type(volume);
            if kind == "hostPath" || !self.volume_types.iter().any(|t| t == kind) {
                return violation(
                    format!("volumes[{index}]"),
                    format!(
                        "volumes of type {kind} are not allowed in calculation Jobs (allowed: {})",
                        self.volume_types
                            .iter()
                            .filter(|t| *t != "hostPath")
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for (index, mount) in settings.volume_mounts.iter().enumerate() {
            let secret = settings
                .volumes
                .iter()
                .find(|v| v.name == mount.name)
                .is_some_and(holds_secrets);
            let readable = data_directories
                .iter()
                .any(|d| under(&mount.mount_path, d) || under(d, &mount.mount_path));
            if secret && readable {
                return violation(
                    format!("volumeMounts[{index}]"),
                    format!(
                        "the volume {} holds Secret data and is mounted where calculations read \
                         files (duckdb.dataDirectories): mount it outside them",
                        mount.name
                    ),
                );
            }
        }
        for key in settings.node_selector.keys() {
            if !self.node_selector_keys.contains(key) {
                return violation(
                    format!("nodeSelector.{key}"),
                    "the controller allows no node selection on this label (chart: \
                     worker.policy.nodeSelectorKeys)"
                        .into(),
                );
            }
        }
        for (index, toleration) in settings.tolerations.iter().enumerate() {
            let key = toleration.key.as_deref().unwrap_or("");
            if key.is_empty() || !self.toleration_keys.iter().any(|k| k == key) {
                return violation(
                    format!("tolerations[{index}]"),
                    format!(
                        "the controller allows no toleration of {} (chart: \
                         worker.policy.tolerationKeys)",
                        if key.is_empty() { "every taint" } else { key }
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = "ghcr.io/tally-dev/tally:0.1.0";

    fn settings(json: serde_json::Value) -> JobSettings {
        serde_json::from_value(json).unwrap()
    }

    fn check(policy: &JobPolicy, json: serde_json::Value) -> Result<(), PolicyViolation> {
        policy.check(
            &settings(json),
            WORKER,
            Some("tally-worker"),
            &["/data".to_string()],
        )
    }

    #[test]
    fn repositories_drop_tags_and_digests() {
        assert_eq!(
            repository("ghcr.io/tally-dev/tally:0.1.0"),
            "ghcr.io/tally-dev/tally"
        );
        assert_eq!(repository("registry:5000/tally"), "registry:5000/tally");
        assert_eq!(
            repository("registry:5000/tally:1@sha256:ab"),
            "registry:5000/tally"
        );
        assert_eq!(repository("tally"), "tally");
    }

    #[test]
    fn the_defaults_allow_the_worker_and_data_volumes() {
        let policy = JobPolicy::default();
        assert_eq!(
            check(
                &policy,
                serde_json::json!({
                    "image": "ghcr.io/tally-dev/tally:0.2.0",
                    "serviceAccountName": "tally-worker",
                    "volumes": [
                        {"name": "lake", "persistentVolumeClaim": {"claimName": "lake"}},
                        {"name": "example", "projected": {"sources": [{"configMap": {"name": "x"}}]}},
                        {"name": "creds", "secret": {"secretName": "s3"}},
                    ],
                    "volumeMounts": [
                        {"name": "lake", "mountPath": "/data"},
                        {"name": "creds", "mountPath": "/etc/s3"},
                    ],
                    "resources": {"limits": {"memory": "4Gi"}},
                })
            ),
            Ok(())
        );
    }

    #[test]
    fn each_escalation_is_refused_naming_the_field() {
        let policy = JobPolicy::default();
        for (json, field) in [
            (
                serde_json::json!({"image": "attacker.io/miner:latest"}),
                "image",
            ),
            (
                serde_json::json!({"image": "ghcr.io/tally-dev/tally-evil:1"}),
                "image",
            ),
            (
                serde_json::json!({"serviceAccountName": "namespace-admin"}),
                "serviceAccountName",
            ),
            (
                serde_json::json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                "volumes[0]",
            ),
            (
                serde_json::json!({"volumes": [{"name": "x", "nfs": {"server": "a", "path": "/"}}]}),
                "volumes[0]",
            ),
            (
                serde_json::json!({
                    "volumes": [{"name": "token", "secret": {"secretName": "db-password"}}],
                    "volumeMounts": [{"name": "token", "mountPath": "/data/secrets"}],
                }),
                "volumeMounts[0]",
            ),
            (
                serde_json::json!({
                    "volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "s"}}]}}],
                    "volumeMounts": [{"name": "p", "mountPath": "/"}],
                }),
                "volumeMounts[0]",
            ),
            (
                serde_json::json!({
                    "volumes": [{"name": "t", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "audience": "vault"}}]}}],
                    "volumeMounts": [{"name": "t", "mountPath": "/data/token"}],
                }),
                "volumeMounts[0]",
            ),
            (
                serde_json::json!({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}),
                "nodeSelector.node-role.kubernetes.io/control-plane",
            ),
            (
                serde_json::json!({"tolerations": [{"operator": "Exists"}]}),
                "tolerations[0]",
            ),
        ] {
            let violation = check(&policy, json.clone()).unwrap_err();
            assert_eq!(violation.field, field, "{json}");
        }
        // Even a policy that lists hostPath does not allow it.
        let permissive = JobPolicy {
            volume_types: vec!["hostPath".into()],
            ..JobPolicy::default()
        };
        assert!(
            check(
                &permissive,
                serde_json::json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]})
            )
            .is_err()
        );
    }

    #[test]
    fn what_the_policy_lists_is_allowed() {
        let policy = JobPolicy {
            image_repositories: vec!["registry.example/tally".into()],
            service_accounts: vec!["warehouse-reader".into()],
            node_selector_keys: vec!["pool".into()],
            toleration_keys: vec!["dedicated".into()],
            ..JobPolicy::default()
        };
        assert_eq!(
            check(
                &policy,
                serde_json::json!({
                    "image": "registry.example/tally:2",
                    "serviceAccountName": "warehouse-reader",
                    "nodeSelector": {"pool": "analytics"},
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "analytics", "effect": "NoSchedule"}],
                })
            ),
            Ok(())
        );
    }
}

//! Where an end-to-end test runs: the API emulator (the default), or the real cluster
//! of the kubeconfig in `TALLY_E2E_KUBECONFIG`.
//!
//! A [`TestCluster`] gives each test a fresh namespace (deleted at the end on a real
//! cluster; the emulator goes away whole), Tally's CRDs, a worker ServiceAccount
//! allowed what `tally worker` does, and the example data where worker Pods can read
//! it. Features only the emulator has (fault injection, its store, the image map)
//! are behind [`TestCluster::emulator_only`].
//!
//! On a real cluster:
//! - `TALLY_E2E_IMAGE` is the `tally` image calculation Jobs (and the chart's
//!   controller) run, built from the same tree as the local `tally` binary; the
//!   default is the chart's, `ghcr.io/tally-dev/tally:<appVersion>`.
//! - The tests run `tally controller` as a local process with the kubeconfig, which
//!   reconciles all namespaces: no other Tally controller may run in that cluster, and
//!   the tests of one test binary run one at a time.
//! - The kubeconfig's user needs cluster-admin (CRDs, namespaces, RBAC).
//! - The example data reaches the worker Pods through ConfigMaps mounted by the
//!   Warehouse's `job.volumes`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Namespace},
    serde::Deserialize,
};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::Scope,
};
use serde_json::{Value, json};

use crate::{IMAGE, chart_dir, crds, example, tally_bin};

/// The environment variable naming a real cluster's kubeconfig.
pub const KUBECONFIG_ENV: &str = "TALLY_E2E_KUBECONFIG";
/// The environment variable naming the `tally` image on a real cluster.
pub const IMAGE_ENV: &str = "TALLY_E2E_IMAGE";
/// The ServiceAccount calculation Jobs run as in a test namespace.
pub const WORKER_SERVICE_ACCOUNT: &str = "tally-e2e-worker";
/// Where worker Pods find the example data on a real cluster.
pub const DATA_MOUNT: &str = "/tally-data";
const FIELD_MANAGER: &str = "tally-e2e";
const DATA_FILES: [&str; 4] = [
    "exposures.csv.gz",
    "purchases.csv.gz",
    "sessions.csv.gz",
    "users.csv.gz",
];

/// The real cluster's kubeconfig, when the tests target one.
pub fn real_cluster_kubeconfig() -> Option<PathBuf> {
    std::env::var_os(KUBECONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `seconds`, longer on a real cluster (image pulls, scheduling): a deadline for
/// things that take a moment on the emulator.
pub fn patience(seconds: u64) -> Duration {
    let factor = if real_cluster_kubeconfig().is_some() {
        4
    } else {
        1
    };
    Duration::from_secs(seconds * factor)
}

/// The chart's default image, `ghcr.io/tally-dev/tally:<appVersion>`.
pub fn chart_image() -> String {
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("charts/tally/Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    let version = chart["appVersion"].as_str().expect("an appVersion");
    format!("ghcr.io/tally-dev/tally:{version}")
}

/// Builds a client for a kubeconfig file (its current context).
pub async fn client_for(kubeconfig: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("a readable kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a client config");
    Client::try_from(config).expect("a client")
}

/// One test at a time per test binary on a real cluster: the controllers they start
/// watch every namespace.
static REAL_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster a test runs on, with its own namespace. See the module documentation.
pub struct TestCluster {
    emulator: Option<kube_emulator::Emulator>,
    client: Client,
    kubeconfig: PathBuf,
    namespace: String,
    worker_image: String,
    _one_at_a_time: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl TestCluster {
    /// The emulator, or the cluster of `TALLY_E2E_KUBECONFIG`, with Tally's CRDs and a
    /// fresh namespace named after `test`.
    pub async fn start(test: &str) -> Self {
        Self::start_with_crds(test, true).await
    }

    /// [`Self::start`] without applying Tally's CRDs, for a test that installs them
    /// (a real cluster may have them from earlier tests).
    pub async fn start_without_crds(test: &str) -> Self {
        Self::start_with_crds(test, false).await
    }

    async fn start_with_crds(test: &str, apply_crds: bool) -> Self {
        let namespace = fresh_namespace(test);
        let cluster = match real_cluster_kubeconfig() {
            None => {
                let emulator = kube_emulator::Emulator::builder()
                    .image(IMAGE, tally_bin())
                    .image(chart_image(), tally_bin())
                    .start()
                    .await
                    .expect("the emulator starts");
                let kubeconfig = emulator.kubeconfig_path().to_path_buf();
                Self {
                    client: client_for(&kubeconfig).await,
                    emulator: Some(emulator),
                    kubeconfig,
                    namespace,
                    worker_image: IMAGE.to_string(),
                    _one_at_a_time: None,
                }
            }
            Some(kubeconfig) => {
                let guard = REAL_CLUSTER.lock().await;
                Self {
                    client: client_for(&kubeconfig).await,
                    emulator: None,
                    kubeconfig,
                    namespace,
                    worker_image: std::env::var(IMAGE_ENV).unwrap_or_else(|_| chart_image()),
                    _one_at_a_time: Some(guard),
                }
            }
        };
        if apply_crds {
            cluster.apply_crds().await;
        }
        cluster
            .apply_yaml(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {{tally.dev/e2e: \"true\"}}}}\n",
                cluster.namespace
            ))
            .await;
        cluster.apply_yaml(&worker_rbac(&cluster.namespace)).await;
        cluster
    }

    /// Applies the repository's CRDs and waits until they are served.
    pub async fn apply_crds(&self) {
        let crds: Vec<String> = {
            let mut files: Vec<PathBuf> = std::fs::read_dir(crds())
                .expect("crds/")
                .map(|e| e.expect("a CRD file").path())
                .collect();
            files.sort();
            files
                .iter()
                .map(|f| std::fs::read_to_string(f).expect("a CRD"))
                .collect()
        };
        self.apply_yaml(&crds.join("\n---\n")).await;
        self.wait_for_crds().await;
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This test's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The kubeconfig of the emulator or of the real cluster.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn is_emulator(&self) -> bool {
        self.emulator.is_some()
    }

    /// The emulator, when the test runs on it.
    pub fn emulator(&self) -> Option<&kube_emulator::Emulator> {
        self.emulator.as_ref()
    }

    /// The emulator, for a test (or a part of one) that needs `feature` of it; on a
    /// real cluster `None`, after saying what is skipped.
    pub fn emulator_only(&self, feature: &str) -> Option<&kube_emulator::Emulator> {
        if self.emulator.is_none() {
            eprintln!("SKIPPED on a real cluster (emulator only): {feature}");
        }
        self.emulator.as_ref()
    }

    /// The image calculation Jobs run.
    pub fn worker_image(&self) -> &str {
        &self.worker_image
    }

    /// The ServiceAccount calculation Jobs run as.
    pub fn worker_service_account(&self) -> &str {
        WORKER_SERVICE_ACCOUNT
    }

    /// Server-side applies (forced) multi-document YAML, as `kubectl apply
    /// --server-side -n NAMESPACE` does: namespaced objects without a namespace go to
    /// this test's. Panics on any error.
    pub async fn apply_yaml(&self, yaml: &str) {
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(document).expect("YAML");
            if value.is_null() {
                continue;
            }
            let mut object: DynamicObject =
                serde_json::from_value(value).expect("a Kubernetes object");
            let types = object.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&types).expect("a valid apiVersion");
            let (resource, capabilities) = kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("the API serves no {}: {e}", types.kind));
            let api: Api<DynamicObject> = if capabilities.scope == Scope::Namespaced {
                let namespace = object
                    .metadata
                    .namespace
                    .get_or_insert_with(|| self.namespace.clone())
                    .clone();
                Api::namespaced_with(self.client.clone(), &namespace, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            let name = object.metadata.name.clone().expect("a name");
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {} {name}: {e}", types.kind));
        }
    }

    /// Waits until every Tally CRD is served (at once on the emulator).
    async fn wait_for_crds(&self) {
        let gvk = GroupVersionKind::gvk("tally.dev", "v1alpha1", "MetricCalculation");
        let deadline = std::time::Instant::now() + patience(30);
        while kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the Tally CRDs were never served"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The example's manifests for this cluster: data files by absolute host path on
    /// the emulator (whose Pods are local processes); on a real cluster, under
    /// [`DATA_MOUNT`], from ConfigMaps this creates and the Warehouse mounts.
    pub async fn example_manifests(&self) -> String {
        if self.is_emulator() {
            return crate::example_manifests();
        }
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        for file in DATA_FILES {
            let bytes = std::fs::read(example().join("data").join(file)).expect("example data");
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(data_config_map(file)),
                    ..ObjectMeta::default()
                },
                binary_data: Some([(file.to_string(), ByteString(bytes))].into()),
                ..ConfigMap::default()
            };
            config_maps
                .patch(
                    &data_config_map(file),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&config_map),
                )
                .await
                .expect("a data ConfigMap");
        }
        let volumes = json!({
            "volumes": [{
                "name": "example-data",
                "projected": {"sources": DATA_FILES.iter()
                    .map(|f| json!({"configMap": {"name": data_config_map(f)}}))
                    .collect::<Vec<_>>()},
            }],
            "volumeMounts": [{"name": "example-data", "mountPath": DATA_MOUNT, "readOnly": true}],
        });
        let manifests = crate::example_manifests().replace(
            &format!("{}/data/", example().display()),
            &format!("{DATA_MOUNT}/"),
        );
        // The Warehouse mounts the data into every calculation Job.
        let warehouse = "kind: Warehouse\nmetadata:\n  name: local-duckdb\nspec:\n";
        assert!(
            manifests.contains(warehouse),
            "the example Warehouse changed shape; update TestCluster::example_manifests"
        );
        manifests.replace(warehouse, &format!("{warehouse}  job: {volumes}\n"))
    }

    /// Adds what a hand-made worker Job needs on this cluster to a Job manifest: the
    /// worker ServiceAccount, and on a real cluster the example data volume.
    pub fn prepare_worker_job(&self, job: &mut Value) {
        let pod = &mut job["spec"]["template"]["spec"];
        pod["serviceAccountName"] = json!(WORKER_SERVICE_ACCOUNT);
        if self.is_emulator() {
            return;
        }
        pod["volumes"] = json!([{
            "name": "example-data",
            "projected": {"sources": DATA_FILES.iter()
                .map(|f| json!({"configMap": {"name": data_config_map(f)}}))
                .collect::<Vec<_>>()},
        }]);
        if let Some(containers) = pod["containers"].as_array_mut() {
            for container in containers {
                container["volumeMounts"] =
                    json!([{"name": "example-data", "mountPath": DATA_MOUNT, "readOnly": true}]);
            }
        }
    }

    /// The plans `tally plan` makes of [`Self::example_manifests`]: what the controller
    /// would put in the example calculations' Jobs on this cluster.
    pub async fn example_plans(&self) -> Value {
        let file = std::env::temp_dir().join(format!("{}-example.yaml", self.namespace));
        std::fs::write(&file, self.example_manifests().await).expect("a temporary file");
        let plans = crate::tally_json(&["plan", "-f", file.to_str().expect("a UTF-8 path")]);
        let _ = std::fs::remove_file(&file);
        plans
    }

    /// An untyped API for a Tally kind in this test's namespace.
    pub fn tally_api(&self, kind: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("tally.dev", "v1alpha1", kind);
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &kube::core::ApiResource::from_gvk(&gvk),
        )
    }

    /// A typed API in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Starts `tally controller` (a local process) against this cluster, with this
    /// cluster's worker image and ServiceAccount.
    pub fn start_controller(&self) -> crate::ControllerProcess {
        self.start_controller_with(&[], &[])
    }

    /// [`Self::start_controller`] with more arguments and environment variables.
    pub fn start_controller_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> crate::ControllerProcess {
        let mut all = vec![
            "--worker-image",
            &self.worker_image,
            "--worker-service-account",
            WORKER_SERVICE_ACCOUNT,
        ];
        all.extend_from_slice(args);
        crate::ControllerProcess::start_with_env(&self.kubeconfig, &all, env)
    }

    /// Runs `tally ARGS` (e.g. `cancel mc/NAME -n NAMESPACE`) against this cluster and
    /// returns its standard output; panics when it fails.
    pub async fn tally_cli(&self, args: &[&str]) -> String {
        crate::tally_cli_with(&self.kubeconfig, args).await
    }

    /// Waits until a Pod of the Job `job` in this namespace runs.
    pub async fn wait_for_running_pod(&self, job: &str) {
        crate::wait_for_running_pod_in(&self.client, &self.namespace, job, patience(30)).await
    }

    /// The Pods of the Job `job` in this namespace.
    pub async fn job_pods(&self, job: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
        self.api()
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .expect("listing Pods")
            .items
    }
}

impl Drop for TestCluster {
    /// On a real cluster, deletes the test's namespace (and so everything in it).
    /// The emulator goes away with its own drop.
    fn drop(&mut self) {
        if self.is_emulator() {
            return;
        }
        let (kubeconfig, namespace) = (self.kubeconfig.clone(), self.namespace.clone());
        // The test's runtime may be the one dropping this: use a runtime of our own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let namespaces: Api<Namespace> = Api::all(client_for(&kubeconfig).await);
                namespaces
                    .delete(&namespace, &DeleteParams::background())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("deleting namespace {namespace}: {e}"))
            })
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!("{e}");
        }
    }
}

fn data_config_map(file: &str) -> String {
    format!("example-data-{}", file.split('.').next().unwrap_or(file))
}

/// `tally-e2e-<test>-<suffix>`: a valid, unique namespace name.
fn fresh_namespace(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!(
        "{:x}",
        (nanos ^ std::process::id().rotate_left(16)) & 0xff_ffff
    );
    let mut base: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(63 - "tally-e2e--".len() - suffix.len());
    format!("tally-e2e-{}-{suffix}", base.trim_matches('-'))
}

/// The worker's ServiceAccount and what `tally worker` may do in the namespace: read
/// its Job, create its result ConfigMap (the chart's worker rules).
fn worker_rbac(namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {WORKER_SERVICE_ACCOUNT}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {WORKER_SERVICE_ACCOUNT}}}
rules:
  - {{apiGroups: [batch], resources: [jobs], verbs: [get]}}
  - {{apiGroups: [""], resources: [configmaps], verbs: [create]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {WORKER_SERVICE_ACCOUNT}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {WORKER_SERVICE_ACCOUNT}}}
subjects: [{{kind: ServiceAccount, name: {WORKER_SERVICE_ACCOUNT}, namespace: {namespace}}}]
"#
    )
}

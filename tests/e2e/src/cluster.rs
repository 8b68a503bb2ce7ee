//! Where an end-to-end test runs. Two backends:
//!
//! - **The real control plane** (the default): each [`TestCluster`] starts its own
//!   etcd, kube-apiserver, kube-controller-manager and kube-scheduler
//!   ([`crate::control_plane`]) and a node agent ([`crate::node_agent`]) that runs
//!   every Pod from Tally's image, built from the local `tally` binary. The
//!   controllers the tests start authenticate as the chart's controller
//!   ServiceAccount (a token for it) through a fault-injecting proxy
//!   ([`crate::fault_proxy`]), so the chart's RBAC authorizes each call they make,
//!   and workers as their own ServiceAccount. It needs Go (or the control plane built
//!   before) and buildah.
//! - **A cluster of your own**, the kubeconfig in `TALLY_E2E_KUBECONFIG`.
//!
//! A [`TestCluster`] gives each test a fresh namespace that enforces the `restricted`
//! Pod Security profile (deleted at the end on a cluster of your own; a control plane
//! of the test's own goes away whole), Tally's CRDs, a worker ServiceAccount allowed
//! what `tally worker` does, and the example data in ConfigMaps that the Warehouse
//! mounts into the worker Pods.
//!
//! On a cluster of your own:
//! - `TALLY_E2E_IMAGE` is the `tally` image calculation Jobs (and the chart's
//!   controller) run, built from the same tree as the local `tally` binary; the
//!   default is the chart's, `ghcr.io/tally-dev/tally:<appVersion>`.
//! - The tests run `tally controller` as a local process with the kubeconfig, which
//!   reconciles all namespaces: no other Tally controller may run in that cluster, and
//!   the tests of one test binary run one at a time. Fault injection is skipped.
//! - The kubeconfig's user needs cluster-admin (CRDs, namespaces, RBAC).

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

use crate::control_plane::{self, ControlPlane};
use crate::fault_proxy::{FaultProxy, Faults};
use crate::node_agent::{self, NodeAgent};
use crate::{chart_dir, crds, example, tally_bin};

/// The environment variable naming a real cluster's kubeconfig.
pub const KUBECONFIG_ENV: &str = "TALLY_E2E_KUBECONFIG";
/// The environment variable naming the `tally` image on a real cluster.
pub const IMAGE_ENV: &str = "TALLY_E2E_IMAGE";
/// The Helm release whose RBAC the tests' controllers run under on the control plane:
/// its controller ServiceAccount is `tally-controller`.
const CHART_RELEASE: &str = "tally";
/// The chart's controller ServiceAccount of release [`CHART_RELEASE`].
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "tally-controller";
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

/// A deadline for something that takes `seconds` on an idle machine, four times as
/// long: on a busy two-core machine the API server, the Job controller, the scheduler
/// and the node agent share the cores with the controller and its workers.
pub fn patience(seconds: u64) -> Duration {
    Duration::from_secs(seconds * 4)
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

/// One test at a time per test binary on a cluster of your own: the controllers they
/// start watch every namespace.
static REAL_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a [`TestCluster`] runs on.
enum Backend {
    ControlPlane(Box<LocalCluster>),
    External(#[allow(dead_code)] tokio::sync::MutexGuard<'static, ()>),
}

/// A control plane and a node agent of the test's own.
struct LocalCluster {
    // Fields drop in order: the node agent kills its Pods before the control plane
    // stops.
    agent: Option<NodeAgent>,
    /// Between the tests' controllers and the API server, as their identity.
    proxy: Option<FaultProxy>,
    plane: ControlPlane,
}

/// A control plane and its node, for a test that sets its cluster up by hand; `None`
/// (after [`crate::tool_unavailable`]) without Go or buildah.
pub async fn start_plane_with_node() -> Option<(ControlPlane, NodeAgent)> {
    let local = match LocalCluster::start(true).await {
        Ok(local) => local,
        Err(Unavailable(why)) => {
            crate::tool_unavailable(&why);
            return None;
        }
    };
    let LocalCluster { agent, plane, .. } = local;
    Some((plane, agent.expect("a node")))
}

/// Starts node `node-1` for `plane`, running Pods from the image of the local `tally`
/// binary, and waits until it is Ready.
async fn start_node(plane: &ControlPlane) -> NodeAgent {
    let client = plane.client().await.expect("an admin client");
    let binary = tally_bin();
    let layout = tokio::task::spawn_blocking(move || node_agent::build_image(&binary))
        .await
        .expect("the image build ran")
        .unwrap_or_else(|e| panic!("the image: {e}"));
    let ca = std::fs::read_to_string(plane.ca_path()).expect("the cluster's CA");
    let agent = NodeAgent::start(client.clone(), "node-1", &layout, plane.server(), &ca)
        .await
        .unwrap_or_else(|e| panic!("the node agent: {e}"));
    // Ready, and untainted: the node lifecycle controller lifts the `not-ready` taint
    // a moment after the node reports Ready, and a Pod scheduled before that waits
    // with a FailedScheduling Warning.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    crate::eventually(
        "node-1 Ready and untainted",
        Duration::from_secs(60),
        || async {
            let node = nodes.get("node-1").await.ok()?;
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            let ready = node
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && !tainted).then_some(())
        },
    )
    .await;
    agent
}

/// Why the control plane backend cannot run here.
#[derive(Debug)]
struct Unavailable(String);

impl LocalCluster {
    /// The control plane, and a node agent when `with_node`.
    async fn start(with_node: bool) -> Result<Self, Unavailable> {
        if std::process::Command::new("buildah")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err(Unavailable(
                "buildah is not installed (apt-get install buildah)".into(),
            ));
        }
        let plane = match ControlPlane::start().await {
            Ok(plane) => plane,
            Err(e @ control_plane::Error::GoUnavailable(_)) => {
                return Err(Unavailable(e.to_string()));
            }
            Err(e) => panic!("the control plane did not start: {e}"),
        };
        let agent = if with_node {
            Some(start_node(&plane).await)
        } else {
            None
        };
        Ok(Self {
            agent,
            proxy: None,
            plane,
        })
    }
}

/// The cluster a test runs on, with its own namespace. See the module documentation.
pub struct TestCluster {
    backend: Backend,
    client: Client,
    kubeconfig: PathBuf,
    namespace: String,
    worker_image: String,
}

impl TestCluster {
    /// A cluster (see the module documentation) with Tally's CRDs and a fresh
    /// namespace named after `test`.
    pub async fn start(test: &str) -> Self {
        Self::start_with_crds(test, true).await
    }

    /// [`Self::start`] without applying Tally's CRDs, for a test that installs them
    /// (a cluster of your own may have them from earlier tests).
    pub async fn start_without_crds(test: &str) -> Self {
        Self::start_with_crds(test, false).await
    }

    /// The control plane without a node: Pods are created and never run (for the
    /// controller benchmark, which measures the controller and the API server).
    pub async fn start_without_nodes(test: &str) -> Self {
        let local = LocalCluster::start(false)
            .await
            .unwrap_or_else(|Unavailable(why)| panic!("the control plane: {why}"));
        let kubeconfig = local.plane.kubeconfig_path().to_path_buf();
        Self::prepare(
            fresh_namespace(test),
            (
                Backend::ControlPlane(Box::new(local)),
                kubeconfig,
                chart_image(),
            ),
            true,
        )
        .await
    }

    async fn start_with_crds(test: &str, apply_crds: bool) -> Self {
        let namespace = fresh_namespace(test);
        let backend = match real_cluster_kubeconfig() {
            Some(kubeconfig) => (
                Backend::External(REAL_CLUSTER.lock().await),
                kubeconfig,
                std::env::var(IMAGE_ENV).unwrap_or_else(|_| chart_image()),
            ),
            None => {
                let local = LocalCluster::start(true)
                    .await
                    .unwrap_or_else(|Unavailable(why)| {
                        panic!("the end-to-end tests need a control plane: {why}")
                    });
                let kubeconfig = local.plane.kubeconfig_path().to_path_buf();
                (
                    Backend::ControlPlane(Box::new(local)),
                    kubeconfig,
                    chart_image(),
                )
            }
        };
        Self::prepare(namespace, backend, apply_crds).await
    }

    async fn prepare(
        namespace: String,
        (backend, kubeconfig, worker_image): (Backend, PathBuf, String),
        apply_crds: bool,
    ) -> Self {
        let mut cluster = Self {
            client: client_for(&kubeconfig).await,
            backend,
            kubeconfig,
            namespace,
            worker_image,
        };
        if apply_crds {
            cluster.apply_crds().await;
        }
        cluster
            .apply_yaml(&worker_namespace(
                &cluster.namespace,
                WORKER_SERVICE_ACCOUNT,
            ))
            .await;
        if matches!(cluster.backend, Backend::ControlPlane(_)) {
            cluster.set_up_controller_account().await;
        }
        cluster
    }

    /// Installs the chart's controller ServiceAccount and RBAC (rendered by Helm,
    /// released into this test's namespace with it as the worker namespace) and puts
    /// a fault-injecting proxy with a token for that account in front of the API
    /// server: the controllers this test starts are authorized by the chart's rules
    /// and nothing more, and the test can make their requests fail.
    async fn set_up_controller_account(&mut self) {
        let upstream = match render_chart(
            &json!({
                "fullnameOverride": CHART_RELEASE,
                "worker": {"namespaces": [self.namespace]},
            }),
            &self.namespace,
        ) {
            Some(objects) => {
                let rbac: Vec<String> = objects
                    .iter()
                    .filter(|o| {
                        matches!(
                            o["kind"].as_str(),
                            Some(
                                "ServiceAccount"
                                    | "ClusterRole"
                                    | "ClusterRoleBinding"
                                    | "Role"
                                    | "RoleBinding"
                            )
                        )
                    })
                    .map(|o| serde_json::to_string(o).expect("JSON"))
                    .collect();
                self.apply_yaml(&rbac.join("\n---\n")).await;
                let account = CONTROLLER_SERVICE_ACCOUNT;
                let token = service_account_token(&self.client, &self.namespace, account).await;
                let Backend::ControlPlane(local) = &self.backend else {
                    return;
                };
                let path = local.plane.dir().join(format!("{account}.kubeconfig"));
                local
                    .plane
                    .write_token_kubeconfig(&path, account, &token)
                    .expect("the controller's kubeconfig");
                client_for(&path).await
            }
            None => {
                eprintln!(
                    "note: the tests' controllers run as the cluster admin (no Helm to render the chart's RBAC)"
                );
                self.client.clone()
            }
        };
        let proxy = FaultProxy::start(upstream)
            .await
            .expect("the fault proxy starts");
        let Backend::ControlPlane(local) = &mut self.backend else {
            return;
        };
        proxy
            .write_kubeconfig(&local.plane.dir().join("controller.kubeconfig"))
            .expect("the proxy's kubeconfig");
        local.proxy = Some(proxy);
    }

    /// The kubeconfig the tests' controllers use: on the control plane, the fault
    /// proxy's, which acts as the chart's controller ServiceAccount; else the
    /// cluster's.
    pub fn controller_kubeconfig_path(&self) -> PathBuf {
        match &self.backend {
            Backend::ControlPlane(local) if local.proxy.is_some() => {
                local.plane.dir().join("controller.kubeconfig")
            }
            _ => self.kubeconfig.clone(),
        }
    }

    /// Fault injection into the requests of the controllers this test starts (the
    /// fault proxy); on a cluster of your own `None`, after saying what is skipped.
    pub fn faults(&self) -> Option<&Faults> {
        match &self.backend {
            Backend::ControlPlane(local) => local.proxy.as_ref().map(FaultProxy::faults),
            Backend::External(_) => {
                eprintln!("SKIPPED on a cluster of your own: fault injection");
                None
            }
        }
    }

    /// The node agent running this cluster's Pods, on the control plane backend.
    pub fn node_agent(&self) -> Option<&NodeAgent> {
        match &self.backend {
            Backend::ControlPlane(local) => local.agent.as_ref(),
            _ => None,
        }
    }

    /// The process IDs of the control plane's processes (none off that backend).
    pub fn control_plane_pids(&self) -> Vec<String> {
        match &self.backend {
            Backend::ControlPlane(local) => local
                .plane
                .processes()
                .into_iter()
                .map(|(_, pid)| pid.to_string())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The process ID of the control plane's process `name` (e.g. `kube-apiserver`).
    pub fn control_plane_pid(&self, name: &str) -> Option<String> {
        match &self.backend {
            Backend::ControlPlane(local) => local
                .plane
                .processes()
                .into_iter()
                .find(|(process, _)| *process == name)
                .map(|(_, pid)| pid.to_string()),
            _ => None,
        }
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

    /// The cluster's admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
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

    /// Waits until every Tally CRD is served.
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

    /// The example's manifests for this cluster: the data files under [`DATA_MOUNT`],
    /// from ConfigMaps this creates and the Warehouse mounts.
    pub async fn example_manifests(&self) -> String {
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
    /// worker ServiceAccount, the `restricted` profile's security settings (as the
    /// controller's Jobs have them), and the example data volume.
    pub fn prepare_worker_job(&self, job: &mut Value) {
        let pod = &mut job["spec"]["template"]["spec"];
        pod["serviceAccountName"] = json!(WORKER_SERVICE_ACCOUNT);
        pod["securityContext"] = json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        });
        if let Some(containers) = pod["containers"].as_array_mut() {
            for container in containers {
                container["securityContext"] = json!({
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                });
            }
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
    /// would put in the example calculations' Jobs on this cluster. `tally plan` reads
    /// the local files; their directory becomes [`DATA_MOUNT`], where
    /// [`Self::prepare_worker_job`] mounts the data ConfigMaps this creates.
    pub async fn example_plans(&self) -> Value {
        let file = std::env::temp_dir().join(format!("{}-example.yaml", self.namespace));
        std::fs::write(&file, crate::example_manifests()).expect("a temporary file");
        let plans = crate::tally_json(&["plan", "-f", file.to_str().expect("a UTF-8 path")]);
        let _ = std::fs::remove_file(&file);
        self.example_manifests().await;
        let local = format!("{}/data/", example().display());
        serde_json::from_str(&plans.to_string().replace(&local, &format!("{DATA_MOUNT}/")))
            .expect("the plans stay JSON")
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
        // The test's namespace only, as the chart's controller watches its worker
        // namespaces only (and may act in no other).
        let mut all = vec![
            "--namespaces",
            &self.namespace,
            "--worker-image",
            &self.worker_image,
            "--worker-service-account",
            WORKER_SERVICE_ACCOUNT,
        ];
        all.extend_from_slice(args);
        crate::ControllerProcess::start_with_env(&self.controller_kubeconfig_path(), &all, env)
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
    /// On a cluster of your own, deletes the test's namespace (and so everything in
    /// it). A control plane of the test's own goes away whole with its own drop.
    fn drop(&mut self) {
        if !matches!(self.backend, Backend::External(_)) {
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

/// The chart's objects for `values`, released as `tally` into `namespace` (Helm's Go
/// SDK through `tests/e2e/helm.py`); `None` when Helm is unavailable.
pub fn render_chart(values: &Value, namespace: &str) -> Option<Vec<Value>> {
    let rendered = crate::helm_json(&[
        "template",
        chart_dir().to_str().expect("a UTF-8 path"),
        "--name",
        CHART_RELEASE,
        "--namespace",
        namespace,
        "--values",
        &values.to_string(),
    ])?;
    Some(
        rendered["documents"]
            .as_array()
            .expect("rendered documents")
            .iter()
            .map(|d| d["object"].clone())
            .collect(),
    )
}

/// A token for the ServiceAccount `account` of `namespace` (TokenRequest API, an
/// hour long).
pub async fn service_account_token(client: &Client, namespace: &str, account: &str) -> String {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    });
    let response: Value = accounts
        .create_subresource(
            "token",
            account,
            &kube::api::PostParams::default(),
            &request,
        )
        .await
        .unwrap_or_else(|e| panic!("a token for {namespace}/{account}: {e}"));
    response["status"]["token"]
        .as_str()
        .expect("a token in the TokenRequest's status")
        .to_string()
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

/// A namespace that enforces the `restricted` Pod Security profile, with the worker
/// ServiceAccount `account` and what `tally worker` may do there: read its Job and
/// create its result ConfigMap (the chart's worker rules; nothing on Secrets).
pub fn worker_namespace(namespace: &str, account: &str) -> String {
    let chart_rules = std::fs::read_to_string(chart_dir().join("templates/worker-rbac.yaml"))
        .expect("the chart's worker rules");
    assert!(
        chart_rules.contains("verbs: [create]")
            && chart_rules.contains("verbs: [get]")
            && !chart_rules.contains("secrets"),
        "the chart's worker rules changed; update this copy"
    );
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
  labels: {{tally.dev/e2e: "true", pod-security.kubernetes.io/enforce: restricted}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {account}, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {account}, namespace: {namespace}}}
rules:
  - {{apiGroups: [batch], resources: [jobs], verbs: [get]}}
  - {{apiGroups: [""], resources: [configmaps], verbs: [create]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {account}, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {account}}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {namespace}}}]
"#
    )
}

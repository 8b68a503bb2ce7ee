//! The Helm chart (`charts/tally`): rendered by Helm's Go SDK (PyPI
//! `helm-python-sdk`, through `tests/e2e/helm.py`), linted, validated against
//! Kubernetes' schemas with `kubernetes-validate --strict`, and installed with
//! `helm install` on a real control plane (or the cluster of `TALLY_E2E_KUBECONFIG`),
//! where its Deployment's Pod runs the controller from Tally's image, as the chart's
//! ServiceAccount, and completes the example calculations.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::Deployment, batch::v1::Job, coordination::v1::Lease, core::v1::Pod, events::v1::Event,
};
use kube::{Api, api::ListParams};
use serde_json::{Value, json};
use tally_e2e::{TestCluster, assert_close, chart_dir, patience, printed_status};

/// The chart's appVersion: the default image tag.
fn app_version() -> String {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("an appVersion")
}

/// `helm template --include-crds` of the chart with `values`, after a strict lint;
/// `None` when the Helm SDK is not installed.
fn render(values: Value) -> Option<Vec<Value>> {
    let chart = chart_dir();
    let rendered = tally_e2e::helm_json(&[
        "template",
        chart.to_str().unwrap(),
        "--name",
        "tally",
        "--namespace",
        "tally-system",
        "--values",
        &values.to_string(),
    ])?;
    let lint = &rendered["lint"];
    let problems: Vec<&Value> = lint["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_i64() != Some(1)) // 1 is INFO ("icon is recommended")
        .collect();
    assert!(
        problems.is_empty() && lint["errors"].as_array().unwrap().is_empty(),
        "helm lint --strict: {lint:#}"
    );
    Some(
        rendered["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["object"].clone())
            .collect(),
    )
}

/// Validates against the newest Kubernetes and the chart's oldest (`kubeVersion`).
fn validate(objects: &[Value]) -> bool {
    tally_e2e::kubernetes_validate(objects, None)
        && tally_e2e::kubernetes_validate(objects, Some("1.28.0"))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:#?}", names(objects)))
}

fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// An RBAC rule list as sorted `group/resource: verbs` lines.
fn rules(role: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let mut verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        verbs.sort();
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                lines.push(format!(
                    "{}/{}: {}",
                    group.as_str().unwrap(),
                    resource.as_str().unwrap(),
                    verbs.join(",")
                ));
            }
        }
    }
    lines.sort();
    lines
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn the_default_chart_is_valid_least_privilege_and_restricted() {
    let Some(objects) = render(json!({})) else {
        return;
    };
    if !validate(&objects) {
        return;
    }
    let mut kinds: Vec<String> = names(&objects);
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole /tally-controller",
            "ClusterRole /tally-worker",
            "CustomResourceDefinition /dimensiontables.tally.dev",
            "CustomResourceDefinition /exposuretables.tally.dev",
            "CustomResourceDefinition /facttables.tally.dev",
            "CustomResourceDefinition /metriccalculations.tally.dev",
            "CustomResourceDefinition /metrics.tally.dev",
            "CustomResourceDefinition /scheduledmetriccalculations.tally.dev",
            "CustomResourceDefinition /warehouses.tally.dev",
            "Deployment tally-system/tally-controller",
            "NetworkPolicy tally-system/tally-worker",
            "Role tally-system/tally-controller",
            "RoleBinding tally-system/tally-controller",
            "RoleBinding tally-system/tally-controller-calculations",
            "RoleBinding tally-system/tally-worker",
            "ServiceAccount tally-system/tally-controller",
            "ServiceAccount tally-system/tally-worker",
        ]
    );

    // The controller may do what `tally controller` does, and nothing else.
    assert_eq!(
        rules(find(&objects, "ClusterRole", "tally-controller")),
        [
            "/configmaps: get",
            "/events: list",
            "/serviceaccounts: get",
            "batch/jobs: create,delete,get,list,watch",
            "events.k8s.io/events: create,patch",
            "tally.dev/dimensiontables: get,list,watch",
            "tally.dev/exposuretables: get,list,watch",
            "tally.dev/facttables: get,list,watch",
            "tally.dev/metriccalculations/status: patch",
            "tally.dev/metriccalculations: create,delete,get,list,patch,watch",
            "tally.dev/metrics: get,list,watch",
            "tally.dev/scheduledmetriccalculations/status: patch",
            "tally.dev/scheduledmetriccalculations: get,list,patch,watch",
            "tally.dev/warehouses: get,list,watch",
        ]
    );
    // Granted in the worker namespace only: nothing cluster-wide.
    assert!(!objects.iter().any(|o| o["kind"] == "ClusterRoleBinding"));
    let binding = find(&objects, "RoleBinding", "tally-controller-calculations");
    assert_eq!(binding["metadata"]["namespace"], "tally-system");
    assert_eq!(
        (&binding["roleRef"]["kind"], &binding["roleRef"]["name"]),
        (&json!("ClusterRole"), &json!("tally-controller"))
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "tally-controller", "namespace": "tally-system"}])
    );
    // The worker reads its Job and creates its result ConfigMap, in its namespace only.
    assert_eq!(
        rules(find(&objects, "ClusterRole", "tally-worker")),
        ["/configmaps: create", "batch/jobs: get"]
    );
    let worker_binding = find(&objects, "RoleBinding", "tally-worker");
    assert_eq!(
        (
            &worker_binding["roleRef"]["kind"],
            &worker_binding["roleRef"]["name"]
        ),
        (&json!("ClusterRole"), &json!("tally-worker"))
    );
    assert_eq!(
        worker_binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "tally-worker", "namespace": "tally-system"}])
    );

    // Leader election: the Lease in the release namespace, and nothing else there.
    assert_eq!(
        rules(find(&objects, "Role", "tally-controller")),
        ["coordination.k8s.io/leases: create,get,update"]
    );
    let election_binding = find(&objects, "RoleBinding", "tally-controller");
    assert_eq!(
        (
            &election_binding["roleRef"]["kind"],
            &election_binding["roleRef"]["name"]
        ),
        (&json!("Role"), &json!("tally-controller"))
    );
    assert_eq!(
        election_binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "tally-controller", "namespace": "tally-system"}])
    );

    // Replicas elect a leader, so an update may start the new Pod before the old stops.
    let deployment = find(&objects, "Deployment", "tally-controller");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "tally-controller");
    let image = format!("ghcr.io/tally-dev/tally:{}", app_version());
    let controller = container(deployment);
    assert_eq!(controller["image"], image.as_str());
    assert_eq!(controller["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        strings(&controller["args"]),
        [
            "controller",
            "--namespaces=tally-system",
            &format!("--worker-image={image}"),
            "--worker-service-account=tally-worker",
            "--log-format=json",
            "--concurrency=32",
            "--min-schedule-interval=1m",
            "--leader-elect",
            "--leader-election-lease=tally-controller",
            "--leader-election-lease-duration=15",
            "--http-address=:8080",
            "--worker-cpu-request=250m",
            "--worker-memory-request=512Mi",
            "--worker-cpu-limit=",
            "--worker-memory-limit=2Gi",
        ]
    );
    // Probes and metrics on the named port the controller serves.
    assert_eq!(
        controller["ports"],
        json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(controller["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(controller["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(controller["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The Event reporter's instance and leader election identity, and the Lease's
    // namespace, from the downward API.
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = controller["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("{variable} in the controller's environment"));
        assert_eq!(
            env["valueFrom"]["fieldRef"]["fieldPath"], field,
            "{variable}"
        );
    }
    // The restricted Pod Security Standard.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &controller["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(controller["resources"]["requests"]["memory"].is_string());
    assert!(controller["resources"]["limits"]["memory"].is_string());
}

#[test]
fn values_set_the_image_arguments_scheduling_and_worker_namespaces() {
    let Some(objects) = render(json!({
        "fullnameOverride": "metrics",
        "image": {"repository": "registry.example/tally", "tag": "9.9.9", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "logFormat": "text",
        "logLevel": "debug",
        "concurrency": 8,
        "replicas": 2,
        "leaderElection": {"leaseDuration": 30},
        "httpPort": 9090,
        "extraArgs": ["--example=1"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "podAnnotations": {"example.com/scrape": "false"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tally", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
            ]}]
        }}},
        "worker": {
            "image": {"repository": "registry.example/tally-worker", "tag": "9.9.10"},
            "serviceAccount": {"name": "calculations", "annotations": {"example.com/role": "reader"}},
            "namespaces": ["analytics", "growth"],
            "resources": {"limits": {"cpu": 4, "memory": "8Gi"}},
            "policy": {
                "imageRepositories": ["registry.example/tally-gpu"],
                "serviceAccounts": ["warehouse-reader"],
                "volumeTypes": ["configMap", "persistentVolumeClaim"],
                "nodeSelectorKeys": ["pool"],
                "tolerationKeys": ["dedicated"],
            },
        },
    })) else {
        return;
    };
    if !validate(&objects) {
        return;
    }
    let deployment = find(&objects, "Deployment", "metrics-controller");
    let pod = &deployment["spec"]["template"]["spec"];
    let controller = container(deployment);
    assert_eq!(controller["image"], "registry.example/tally:9.9.9");
    assert_eq!(controller["imagePullPolicy"], "Always");
    assert_eq!(
        strings(&controller["args"]),
        [
            "controller",
            "--namespaces=analytics,growth",
            "--worker-image=registry.example/tally-worker:9.9.10",
            "--worker-service-account=calculations",
            "--log-format=text",
            "--concurrency=8",
            "--min-schedule-interval=1m",
            "--leader-elect",
            "--leader-election-lease=metrics-controller",
            "--leader-election-lease-duration=30",
            "--http-address=:9090",
            "--worker-cpu-request=250m",
            "--worker-memory-request=512Mi",
            "--worker-cpu-limit=4",
            "--worker-memory-limit=8Gi",
            "--allowed-worker-image-repository=registry.example/tally-gpu",
            "--allowed-worker-service-account=warehouse-reader",
            "--allowed-volume-type=configMap",
            "--allowed-volume-type=persistentVolumeClaim",
            "--allowed-node-selector-key=pool",
            "--allowed-toleration-key=dedicated",
            "--example=1",
        ]
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    let env = &controller["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "RUST_LOG", "value": "debug"}))
    );
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "TZ", "value": "UTC"}))
    );
    // Helm merges maps with the defaults: the default memory limit stays.
    assert_eq!(
        controller["resources"],
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "512Mi"}})
    );
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "registry"}]));
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"],
        json!({"example.com/scrape": "false"})
    );
    // The worker's ServiceAccount and RoleBinding in each namespace, nowhere else.
    for namespace in ["analytics", "growth"] {
        let account = objects
            .iter()
            .find(|o| o["kind"] == "ServiceAccount" && o["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("no worker ServiceAccount in {namespace}"));
        assert_eq!(account["metadata"]["name"], "calculations");
        assert_eq!(
            account["metadata"]["annotations"]["example.com/role"],
            "reader"
        );
        let binding = objects
            .iter()
            .find(|o| {
                o["kind"] == "RoleBinding"
                    && o["metadata"]["namespace"] == namespace
                    && o["roleRef"]["name"] == "metrics-worker"
            })
            .unwrap_or_else(|| panic!("no worker RoleBinding in {namespace}"));
        assert_eq!(binding["roleRef"]["name"], "metrics-worker");
        assert_eq!(binding["subjects"][0]["name"], "calculations");
        assert_eq!(binding["subjects"][0]["namespace"], namespace);
    }
    let bound: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["name"] == "metrics-worker")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(bound, ["analytics", "growth"]);
    // The controller's rules hold in the worker namespaces, which it watches, only.
    let controller_bound: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["name"] == "metrics-controller")
        .filter(|o| o["roleRef"]["kind"] == "ClusterRole")
        .map(|o| o["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(controller_bound, ["analytics", "growth"]);
    // The leader election Lease stays in the release namespace.
    let election = find(&objects, "RoleBinding", "metrics-controller");
    assert_eq!(election["metadata"]["namespace"], "tally-system");
}

#[test]
fn calculation_pods_may_reach_dns_the_api_server_and_the_listed_warehouses_only() {
    // Without a cluster to look the API server up in, its ports to any address.
    let Some(objects) = render(json!({"worker": {"namespaces": ["analytics", "growth"]}})) else {
        return;
    };
    for namespace in ["analytics", "growth"] {
        let policy = objects
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("no NetworkPolicy in {namespace}"));
        let spec = &policy["spec"];
        assert_eq!(
            spec["podSelector"],
            json!({"matchExpressions": [{"key": "tally.dev/calculation", "operator": "Exists"}]})
        );
        assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
        assert!(spec.get("ingress").is_none(), "nothing may reach a worker");
        let egress = spec["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 2, "{egress:#?}");
        assert_eq!(
            egress[0]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        assert_eq!(
            egress[1]["ports"],
            json!([{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}])
        );
        assert!(egress[1].get("to").is_none());
    }

    // The API server's addresses given, and a warehouse.
    let warehouse = json!({"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                           "ports": [{"protocol": "TCP", "port": 5432}]});
    let Some(objects) = render(json!({"worker": {"networkPolicy": {
        "apiServerCIDRs": ["10.0.0.1/32"],
        "egress": [warehouse],
    }}})) else {
        return;
    };
    if !validate(&objects) {
        return;
    }
    let policy = find(&objects, "NetworkPolicy", "tally-worker");
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress[1]["to"],
        json!([{"ipBlock": {"cidr": "10.0.0.1/32"}}])
    );
    assert_eq!(egress[2], warehouse);

    let Some(objects) = render(json!({"worker": {"networkPolicy": {"enabled": false}}})) else {
        return;
    };
    assert!(!objects.iter().any(|o| o["kind"] == "NetworkPolicy"));
}

#[test]
fn without_rbac_and_accounts_the_chart_creates_neither() {
    let Some(objects) = render(json!({
        "rbac": {"create": false},
        "serviceAccount": {"create": false, "name": "existing"},
        "worker": {"serviceAccount": {"create": false}},
    })) else {
        return;
    };
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .filter(|k| *k != "CustomResourceDefinition")
        .collect();
    assert_eq!(kinds, ["Deployment", "NetworkPolicy"]);
    let deployment = find(&objects, "Deployment", "tally-controller");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "existing"
    );
    // No worker account: calculation Jobs run as their namespace's default account.
    let args = strings(&container(deployment)["args"]);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--worker-service-account")),
        "{args:?}"
    );
}

#[test]
fn the_values_schema_rejects_mistakes() {
    let chart = chart_dir();
    for (values, message) in [
        (json!({"logFormat": "yaml"}), "logFormat"),
        (json!({"workers": {"namespaces": ["a"]}}), "workers"),
        (json!({"image": {"pullPolicy": "Sometimes"}}), "pullPolicy"),
        (json!({"concurrency": 0}), "concurrency"),
        (
            json!({"worker": {"policy": {"volumeTypes": ["hostPath"]}}}),
            "volumeTypes",
        ),
        (
            json!({"leaderElection": {"leaseDuration": 1}}),
            "leaseDuration",
        ),
    ] {
        let Some(output) = tally_e2e::helm(&[
            "template",
            chart.to_str().unwrap(),
            "--values",
            &values.to_string(),
        ]) else {
            return;
        };
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && error.contains(message),
            "{values} should be refused naming {message}: {error}"
        );
    }
}

/// Polls `check` every 200 ms until it returns `Ok(Some(_))`, or fails with `what`
/// and the last `Err`.
async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + patience(seconds);
    loop {
        let last = match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => String::new(),
            Err(state) => state,
        };
        assert!(Instant::now() < deadline, "{what}: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Helm release, uninstalled when dropped.
struct Release {
    kubeconfig: String,
    name: String,
    namespace: String,
}

impl Release {
    fn install(cluster: &TestCluster, name: &str, values: &Value) -> Option<Self> {
        let release = Self {
            kubeconfig: cluster.kubeconfig_path().to_str().unwrap().to_string(),
            name: name.to_string(),
            namespace: cluster.namespace().to_string(),
        };
        let chart = chart_dir();
        let installed = tally_e2e::helm_json(&[
            "install",
            chart.to_str().unwrap(),
            "--kubeconfig",
            &release.kubeconfig,
            "--name",
            &release.name,
            "--namespace",
            &release.namespace,
            "--values",
            &values.to_string(),
        ])?;
        assert_eq!(installed["status"], "deployed", "{installed}");
        Some(release)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = tally_e2e::helm(&[
            "uninstall",
            "--kubeconfig",
            &self.kubeconfig,
            "--name",
            &self.name,
            "--namespace",
            &self.namespace,
        ]);
    }
}

// Two threads: the fault proxy serves the controller while a helper process (Helm)
// blocks one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_controller_that_completes_calculations() {
    // Helm installs the CRDs from the chart's crds/.
    let cluster = TestCluster::start_without_crds("helm-install").await;
    let namespace = cluster.namespace().to_string();
    // The chart's controller and Jobs run the tests' image (the node agent's, built
    // from the local `tally`); cluster-wide names are unique to this test.
    let image = cluster.worker_image().to_string();
    let (repository, tag) = image.rsplit_once(':').expect("an image with a tag");
    let Some(_release) = Release::install(
        &cluster,
        "tally",
        &json!({
            "fullnameOverride": namespace,
            "image": {"repository": repository, "tag": tag},
            "worker": {"namespaces": [namespace]},
        }),
    ) else {
        return;
    };
    let controller_name = format!("{}-controller", &namespace[..namespace.len().min(52)]);

    // The Deployment's Pod runs `tally controller`.
    let deployments: Api<Deployment> = cluster.api();
    eventually(60, "the controller Deployment never became ready", || {
        let (deployments, name) = (deployments.clone(), controller_name.clone());
        async move {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            match d.status.as_ref().and_then(|s| s.ready_replicas) {
                Some(1) => Ok(Some(())),
                _ => Err(format!("{:?}", d.status)),
            }
        }
    })
    .await;
    let pods: Api<Pod> = cluster.api();
    let controller_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=controller"))
        .await
        .unwrap()
        .items
        .remove(0)
        .metadata
        .name
        .unwrap();

    cluster.apply_yaml(&cluster.example_manifests().await).await;
    let calculations = cluster.tally_api("MetricCalculation");
    let status = eventually(120, "checkout-conversion never completed", || {
        let calculations = calculations.clone();
        async move {
            let c = calculations
                .get("checkout-conversion")
                .await
                .map_err(|e| e.to_string())?;
            let status = c.data.get("status").cloned().unwrap_or(Value::Null);
            if status["state"] == "Completed" {
                Ok(Some(status))
            } else {
                Err(status.to_string())
            }
        }
    })
    .await;
    let printed = printed_status("checkout-conversion");
    for field in ["times", "metricResults", "analysis"] {
        assert_close(field, &printed[field], &status[field]);
    }

    // The Job runs the chart's worker image as the chart's worker ServiceAccount.
    let job = cluster
        .api::<Job>()
        .get("checkout-conversion-1")
        .await
        .unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let worker_account = format!("{}-worker", &namespace[..namespace.len().min(52)]);
    assert_eq!(pod.service_account_name, Some(worker_account));
    assert_eq!(pod.containers[0].image.as_deref(), Some(image.as_str()));
    // Events name the controller's Pod (POD_NAME from the downward API).
    let events = cluster
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let instances: Vec<Option<String>> = events
        .items
        .iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("checkout-conversion")
        })
        .map(|e| e.reporting_instance.clone())
        .collect();
    assert!(!instances.is_empty());
    assert!(
        instances
            .iter()
            .all(|i| i.as_deref() == Some(controller_pod.as_str())),
        "{instances:?} should all be {controller_pod}"
    );
    // The controller leads through the chart's Lease, in the release namespace.
    let lease = cluster
        .api::<Lease>()
        .get(&controller_name)
        .await
        .expect("the leader election Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with(&format!("{controller_pod}_")),
        "{holder} should be the controller Pod {controller_pod}"
    );
}

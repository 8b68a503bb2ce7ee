//! The chart's RBAC and the `restricted` Pod Security profile, enforced by the real
//! API server: the controller's and the worker's ServiceAccounts may do what the
//! chart grants them and are refused the rest, and a Pod outside the profile is not
//! admitted into a Tally namespace.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tally_e2e::TestCluster;
use tally_e2e::cluster::{WORKER_SERVICE_ACCOUNT, client_for, service_account_token};

/// Whether `result` is the API server's 403 Forbidden.
fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what} should be forbidden, got {other:?}"),
    }
}

fn allowed<T>(what: &str, result: Result<T, kube::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{what} should be allowed: {e}"))
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..ConfigMap::default()
    }
}

fn lease_probe() -> Lease {
    serde_json::from_value(json!({"metadata": {"name": "rbac-probe"}})).expect("a Lease")
}

/// A cluster whose controllers run as the chart's controller ServiceAccount: a control
/// plane of the test's own (on a cluster of your own they run as you).
async fn enforcing_cluster(test: &str) -> Option<TestCluster> {
    if tally_e2e::real_cluster_kubeconfig().is_some() {
        eprintln!("SKIPPED on a cluster of your own: the tests' controllers run as you");
        return None;
    }
    Some(TestCluster::start(test).await)
}

#[tokio::test]
async fn the_controller_may_do_what_the_chart_grants_and_nothing_more() {
    let Some(cluster) = enforcing_cluster("rbac-controller").await else {
        return;
    };
    let namespace = cluster.namespace();
    let controller: Client = client_for(&cluster.controller_kubeconfig_path()).await;

    // What it does: calculations in every namespace, Jobs, the worker's account,
    // results, its Lease.
    let calculations = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "tally.dev",
        "v1alpha1",
        "MetricCalculation",
    ));
    allowed(
        "listing MetricCalculations in its worker namespace",
        Api::<kube::api::DynamicObject>::namespaced_with(
            controller.clone(),
            namespace,
            &calculations,
        )
        .list(&ListParams::default())
        .await,
    );
    allowed(
        "listing Jobs",
        Api::<Job>::namespaced(controller.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "reading the worker's ServiceAccount",
        Api::<ServiceAccount>::namespaced(controller.clone(), namespace)
            .get(WORKER_SERVICE_ACCOUNT)
            .await,
    );
    allowed(
        "creating its Lease in the release namespace",
        Api::<Lease>::namespaced(controller.clone(), namespace)
            .create(&PostParams::default(), &lease_probe())
            .await,
    );

    // What it must not do: anything outside its worker namespaces.
    forbidden(
        "listing MetricCalculations in all namespaces",
        Api::<kube::api::DynamicObject>::all_with(controller.clone(), &calculations)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "creating a Job outside its worker namespaces",
        Api::<Job>::namespaced(controller.clone(), "default")
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "rbac-probe"},
                    "spec": {"template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox"}],
                    }}},
                }))
                .expect("a Job"),
            )
            .await,
    );
    // Nor in them, beyond its rules.
    forbidden(
        "reading Secrets",
        Api::<Secret>::namespaced(controller.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    // A failed worker reports why in a ConfigMap: Pods (whose specs may carry other
    // applications' settings) are not the controller's to read.
    forbidden(
        "listing Pods",
        Api::<Pod>::namespaced(controller.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "creating a Pod",
        Api::<Pod>::namespaced(controller.clone(), namespace)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "rbac-probe"},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                }))
                .expect("a Pod"),
            )
            .await,
    );
    forbidden(
        "creating a ConfigMap",
        Api::<ConfigMap>::namespaced(controller.clone(), namespace)
            .create(&PostParams::default(), &config_map("rbac-probe"))
            .await,
    );
    forbidden(
        "deleting a ConfigMap",
        Api::<ConfigMap>::namespaced(controller.clone(), namespace)
            .delete("kube-root-ca.crt", &DeleteParams::default())
            .await,
    );
    forbidden(
        "reading Nodes",
        Api::<Node>::all(controller.clone())
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "writing a Lease outside the release namespace",
        Api::<Lease>::namespaced(controller.clone(), "kube-system")
            .create(&PostParams::default(), &lease_probe())
            .await,
    );
    forbidden(
        "granting itself more (a ClusterRoleBinding to cluster-admin)",
        Api::<ClusterRoleBinding>::all(controller.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "rbac-probe"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                    "subjects": [{"kind": "ServiceAccount", "name": "tally-controller", "namespace": namespace}],
                }))
                .expect("a ClusterRoleBinding"),
            )
            .await,
    );
}

#[tokio::test]
async fn the_worker_may_only_read_jobs_and_create_its_result() {
    let Some(cluster) = enforcing_cluster("rbac-worker").await else {
        return;
    };
    let namespace = cluster.namespace();
    let token = service_account_token(cluster.client(), namespace, WORKER_SERVICE_ACCOUNT).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("worker.kubeconfig");
    let admin = std::fs::read_to_string(cluster.kubeconfig_path()).expect("the kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("YAML");
    config["users"][0]["user"] = serde_yaml::to_value(json!({"token": token})).expect("YAML");
    std::fs::write(&kubeconfig, serde_yaml::to_string(&config).expect("YAML")).expect("written");
    let worker = client_for(&kubeconfig).await;

    let config_maps: Api<ConfigMap> = Api::namespaced(worker.clone(), namespace);
    let created = allowed(
        "creating a result ConfigMap",
        config_maps
            .create(&PostParams::default(), &config_map("some-job-result"))
            .await,
    );
    assert_eq!(created.name_any(), "some-job-result");
    forbidden(
        "reading a ConfigMap",
        config_maps.get("kube-root-ca.crt").await,
    );
    forbidden(
        "overwriting a ConfigMap",
        config_maps
            .replace("some-job-result", &PostParams::default(), &created)
            .await,
    );
    forbidden(
        "listing Jobs",
        Api::<Job>::namespaced(worker.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "reading Secrets",
        Api::<Secret>::namespaced(worker.clone(), namespace)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "creating a ConfigMap in another namespace",
        Api::<ConfigMap>::namespaced(worker.clone(), "default")
            .create(&PostParams::default(), &config_map("escaped-result"))
            .await,
    );
}

#[tokio::test]
async fn a_pod_outside_the_restricted_profile_is_not_admitted() {
    let Some(cluster) = enforcing_cluster("pod-security").await else {
        return;
    };
    let pods: Api<Pod> = cluster.api();
    let refused = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "privileged"},
                "spec": {"containers": [{
                    "name": "c",
                    "image": cluster.worker_image(),
                    "securityContext": {"privileged": true},
                }]},
            }))
            .expect("a Pod"),
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("violates PodSecurity"),
                "{status:?}"
            );
        }
        other => panic!("a privileged Pod was admitted: {other:?}"),
    }
}

#[tokio::test]
async fn a_calculation_outside_the_worker_namespaces_is_not_reconciled() {
    let Some(cluster) = enforcing_cluster("outside").await else {
        return;
    };
    let outside = format!("{}-x", cluster.namespace());
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {outside}}}\n"
        ))
        .await;
    cluster
        .apply_yaml(&format!(
            r#"apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {{name: sneaky, namespace: {outside}}}
spec:
  metric: checkout-revenue
  exposureTable: checkout-exposures
  startTime: "2026-10-15T00:00:00Z"
  endTime: "2026-11-05T00:00:00Z"
"#
        ))
        .await;
    cluster.apply_yaml(&cluster.example_manifests().await).await;
    let _controller = cluster.start_controller();
    let calculations = cluster.tally_api("MetricCalculation");
    tally_e2e::eventually(
        "checkout-revenue completed in the worker namespace",
        tally_e2e::patience(60),
        || async {
            let c = calculations.get("checkout-revenue").await.ok()?;
            (c.data["status"]["state"] == "Completed").then_some(())
        },
    )
    .await;
    let gvk = kube::core::GroupVersionKind::gvk("tally.dev", "v1alpha1", "MetricCalculation");
    let elsewhere: Api<kube::api::DynamicObject> = Api::namespaced_with(
        cluster.client().clone(),
        &outside,
        &kube::core::ApiResource::from_gvk(&gvk),
    );
    let sneaky = elsewhere.get("sneaky").await.expect("the calculation");
    assert!(
        sneaky
            .data
            .get("status")
            .is_none_or(serde_json::Value::is_null),
        "a calculation outside the worker namespaces was reconciled: {:?}",
        sneaky.data
    );
    let jobs: Api<Job> = Api::namespaced(cluster.client().clone(), &outside);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

//! `tally controller` end to end on a real control plane (or the cluster of
//! `TALLY_E2E_KUBECONFIG`, see `tally_e2e::cluster`): the controller binary reconciles
//! MetricCalculations into Jobs that run the real `tally worker`.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, ServiceAccount},
};
use kube::{
    Api,
    api::{DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use tally_e2e::fault_proxy::Fault;
use tally_e2e::{TestCluster, assert_close, condition, example_manifest, patience, printed_status};

fn calculations(cluster: &TestCluster) -> Api<DynamicObject> {
    cluster.tally_api("MetricCalculation")
}

/// Merge-patches a calculation, as `kubectl patch --type merge` or `annotate` would.
async fn merge_patch(cluster: &TestCluster, name: &str, patch: Value) {
    calculations(cluster)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn status(cluster: &TestCluster, name: &str) -> Value {
    let object = calculations(cluster).get(name).await.unwrap();
    object.data.get("status").cloned().unwrap_or(Value::Null)
}

async fn wait_for_state(cluster: &TestCluster, name: &str, state: &str, seconds: u64) -> Value {
    let deadline = Instant::now() + patience(seconds);
    loop {
        let status = status(cluster, name).await;
        if status["state"] == state {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {state}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn calculation_jobs(cluster: &TestCluster) -> Vec<String> {
    let jobs: Api<Job> = cluster.api();
    let mut names: Vec<String> = jobs
        .list(&ListParams::default().labels("tally.dev/calculation"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    names
}

/// A cluster with the example applied.
async fn example_cluster(test: &str) -> TestCluster {
    let cluster = TestCluster::start(test).await;
    cluster.apply_yaml(&cluster.example_manifests().await).await;
    cluster
}

#[tokio::test]
async fn calculations_complete_survive_restarts_and_rerun_on_spec_change() {
    let cluster = example_cluster("complete-restart-rerun").await;
    let controller = cluster.start_controller();

    // 1. Every example calculation completes with what `tally run` prints.
    for name in [
        "checkout-revenue",
        "checkout-conversion",
        "checkout-order-value",
        "checkout-max-basket",
    ] {
        wait_for_state(&cluster, name, "Completed", 120).await;
    }
    let completed = status(&cluster, "checkout-conversion").await;
    let printed = printed_status("checkout-conversion");
    for field in ["times", "metricResults", "analysis"] {
        assert_close(field, &printed[field], &completed[field]);
    }
    assert_eq!(completed["sqlJob"], "checkout-conversion-1");
    assert!(completed["sql"].as_str().unwrap().starts_with("WITH"));
    assert!(completed["completionTime"].is_string());
    assert_eq!(condition(&completed, "Ready")["status"], "True");
    let events: Api<k8s_openapi::api::events::v1::Event> = cluster.api();
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("checkout-conversion")
        })
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Running") && reasons.iter().any(|r| r == "Completed"),
        "{reasons:?}"
    );
    let jobs_before = calculation_jobs(&cluster).await;
    assert_eq!(jobs_before.len(), 4, "{jobs_before:?}");

    // 2. A controller restart makes no second Job and keeps the results.
    drop(controller);
    let controller = cluster.start_controller();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calculation_jobs(&cluster).await, jobs_before);
    assert_close(
        "metricResults",
        &completed["metricResults"],
        &status(&cluster, "checkout-conversion").await["metricResults"],
    );

    // 3. Cancelling a completed calculation changes nothing but says so.
    merge_patch(
        &cluster,
        "checkout-conversion",
        json!({"metadata": {"annotations": {"tally.dev/cancel": "true"}}}),
    )
    .await;
    let deadline = Instant::now() + patience(20);
    loop {
        let s = status(&cluster, "checkout-conversion").await;
        if s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["reason"] == "CancelIgnored")
        {
            assert_eq!(s["state"], "Completed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ignored cancel was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    merge_patch(
        &cluster,
        "checkout-conversion",
        json!({"metadata": {"annotations": {"tally.dev/cancel": null}}}),
    )
    .await;

    // 4. A spec change runs again, recording what it supersedes.
    merge_patch(
        &cluster,
        "checkout-max-basket",
        json!({"spec": {"endTime": "2026-11-01T00:00:00Z"}}),
    )
    .await;
    let deadline = Instant::now() + patience(120);
    let rerun = loop {
        let s = status(&cluster, "checkout-max-basket").await;
        if s["state"] == "Completed" && s["sqlJob"] == "checkout-max-basket-2" {
            break s;
        }
        assert!(Instant::now() < deadline, "no rerun: {s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rerun["superseeds"], "checkout-max-basket-1");
    assert_eq!(rerun["times"]["factEndTime"], "2026-11-01T00:00:00Z");
    drop(controller);
}

#[tokio::test]
async fn a_missing_metric_is_a_condition_until_it_appears() {
    let cluster = TestCluster::start("missing-metric").await;
    let manifests = cluster.example_manifests().await;
    let (without_metrics, _) = manifests.split_once("# Revenue per exposed user").unwrap();
    cluster.apply_yaml(without_metrics).await;
    cluster
        .apply_yaml(&std::fs::read_to_string(example_manifest("calculations.yaml")).unwrap())
        .await;
    let _controller = cluster.start_controller();
    let deadline = Instant::now() + patience(30);
    loop {
        let s = status(&cluster, "checkout-conversion").await;
        let ready = condition(&s, "Ready");
        if !ready.is_null() {
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "MissingReference");
            assert!(
                ready["message"].as_str().unwrap().contains("conversion-7d"),
                "{ready}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no MissingReference condition: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(calculation_jobs(&cluster).await.is_empty());
    cluster
        .apply_yaml(&std::fs::read_to_string(example_manifest("metrics.yaml")).unwrap())
        .await;
    wait_for_state(&cluster, "checkout-conversion", "Completed", 120).await;
}

#[tokio::test]
async fn a_result_outlives_a_job_deleted_before_the_controller_read_it() {
    let cluster = example_cluster("result-outlives-job").await;
    // Finished Jobs are deleted at once.
    cluster
        .tally_api("Warehouse")
        .patch(
            "local-duckdb",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"job": {"ttlSecondsAfterFinished": 0}}})),
        )
        .await
        .unwrap();
    let controller = cluster.start_controller();
    wait_for_state(&cluster, "checkout-revenue", "Running", 60).await;
    // The controller is away while the Job finishes and its TTL deletes it.
    drop(controller);
    let jobs: Api<Job> = cluster.api();
    let deadline = Instant::now() + patience(60);
    while jobs.get_opt("checkout-revenue-1").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the Job was never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status(&cluster, "checkout-revenue").await["state"],
        "Running"
    );
    let _controller = cluster.start_controller();
    let completed = wait_for_state(&cluster, "checkout-revenue", "Completed", 60).await;
    let printed = printed_status("checkout-revenue");
    for field in ["metricResults", "analysis"] {
        assert_close(field, &printed[field], &completed[field]);
    }
}

#[tokio::test]
async fn a_job_of_the_calculations_name_that_it_does_not_own_holds_it_pending() {
    let cluster = example_cluster("job-name-taken").await;
    // Left over from an earlier calculation of the same name: not this one's run.
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "checkout-revenue-1"},
        "spec": {"suspend": true, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": cluster.worker_image(), "command": ["true"]}]
        }}}
    }))
    .unwrap();
    let jobs: Api<Job> = cluster.api();
    jobs.create(&Default::default(), &job).await.unwrap();
    let _controller = cluster.start_controller();
    let status = wait_for_state(&cluster, "checkout-revenue", "Pending", 60).await;
    assert_eq!(
        condition(&status, "Ready")["reason"],
        "JobNameTaken",
        "{status:#}"
    );
    assert!(status["metricResults"].is_null());
    jobs.delete("checkout-revenue-1", &Default::default())
        .await
        .unwrap();
    wait_for_state(&cluster, "checkout-revenue", "Completed", 120).await;
}

#[tokio::test]
async fn a_missing_worker_service_account_holds_calculations_pending_until_it_exists() {
    let cluster = TestCluster::start("service-account-missing").await;
    // A namespace the worker's account was never set up in.
    let accounts: Api<ServiceAccount> = cluster.api();
    accounts
        .delete(cluster.worker_service_account(), &Default::default())
        .await
        .unwrap();
    cluster.apply_yaml(&cluster.example_manifests().await).await;
    let _controller = cluster.start_controller();
    let status = wait_for_state(&cluster, "checkout-revenue", "Pending", 60).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "ServiceAccountMissing", "{status:#}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains(cluster.worker_service_account()),
        "{status:#}"
    );
    assert!(
        calculation_jobs(&cluster).await.is_empty(),
        "no Job whose Pods could not be created"
    );
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": cluster.worker_service_account()}
    }))
    .unwrap();
    accounts
        .create(&Default::default(), &account)
        .await
        .unwrap();
    wait_for_state(&cluster, "checkout-revenue", "Completed", 120).await;
}

/// `GET path` on `address`: the status line and the body.
async fn http_get(address: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: tally\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[tokio::test]
async fn the_controller_serves_probes_and_prometheus_metrics() {
    let cluster = example_cluster("http-endpoint").await;
    // A free port: bound by the test, released, then given to the controller.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let _controller = cluster.start_controller_with(&["--http-address", &address], &[]);
    wait_for_state(&cluster, "checkout-revenue", "Completed", 120).await;
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            http_get(&address, probe).await.0,
            "HTTP/1.1 200 OK",
            "{probe}"
        );
    }
    let (status, metrics) = http_get(&address, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let reconciles = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("tally_reconciles_total{kind=\"MetricCalculation\",result=\"ok\"} ")
        })
        .unwrap_or_else(|| panic!("no calculation reconciles in\n{metrics}"));
    assert!(reconciles.parse::<u64>().unwrap() > 0, "{metrics}");
    assert!(metrics.lines().any(|l| l == "tally_leader 1"), "{metrics}");
    assert_eq!(
        http_get(&address, "/nothing").await.0,
        "HTTP/1.1 404 Not Found"
    );
}

#[tokio::test]
async fn cancel_during_running_stops_the_worker() {
    let cluster = example_cluster("cancel-running").await;
    // An exposure table whose query runs for a very long time.
    cluster
        .apply_yaml(
            r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {name: endless-exposures}
spec:
  warehouse: local-duckdb
  source:
    sql: "SELECT 'u' || (i % 1000) AS user_id, TIMESTAMP '2026-10-16 00:00:00' AS ts, 'control' AS variant FROM range(1000000000000) AS t(i) WHERE hash(i) % 7 = 3"
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
---
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {name: endless}
spec:
  metric: conversion-7d
  exposureTable: endless-exposures
  startTime: "2026-10-15T00:00:00Z"
  endTime: "2026-11-05T00:00:00Z"
"#,
        )
        .await;
    let _controller = cluster.start_controller();
    wait_for_state(&cluster, "endless", "Running", 60).await;
    let pods: Api<Pod> = cluster.api();
    cluster.wait_for_running_pod("endless-1").await;
    // A controller restart while Running keeps the one Job.
    drop(_controller);
    let _controller = cluster.start_controller();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let endless: Vec<String> = calculation_jobs(&cluster)
        .await
        .into_iter()
        .filter(|j| j.starts_with("endless"))
        .collect();
    assert_eq!(endless, ["endless-1"]);
    assert_eq!(status(&cluster, "endless").await["state"], "Running");
    merge_patch(
        &cluster,
        "endless",
        json!({"metadata": {"annotations": {"tally.dev/cancel": "true"}}}),
    )
    .await;
    let cancelled = wait_for_state(&cluster, "endless", "Cancelled", 20).await;
    assert!(cancelled["completionTime"].is_string());
    // The worker is gone well within its grace period: it exited on SIGTERM.
    let gone = Instant::now() + Duration::from_secs(10);
    while !pods
        .list(&ListParams::default().labels("job-name=endless-1"))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < gone,
            "the worker kept running after cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cancelling again changes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status(&cluster, "endless").await["state"], "Cancelled");
}

fn fact_tables(cluster: &TestCluster) -> Api<DynamicObject> {
    cluster.tally_api("FactTable")
}

#[tokio::test]
async fn the_api_server_refuses_a_table_too_large_to_cache() {
    let cluster = TestCluster::start("oversized-table").await;
    // A megabyte of SQL in each of a namespace's tables would be held by the
    // controller's caches and every plan: the schema's bounds refuse it.
    let table = |sql: String, measurements: usize| {
        serde_json::from_value::<DynamicObject>(json!({
            "apiVersion": "tally.dev/v1alpha1",
            "kind": "FactTable",
            "metadata": {"name": "huge"},
            "spec": {
                "source": {"sql": sql},
                "entityColumn": "user_id",
                "timestampColumn": "ts",
                "measurements": (0..measurements).map(|i| json!({"name": format!("m{i}")})).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    };
    let create = |object: DynamicObject| {
        let api = fact_tables(&cluster);
        async move { api.create(&Default::default(), &object).await }
    };
    let refused = |result: Result<DynamicObject, kube::Error>, expected: &str| match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(expected), "{status:?}");
        }
        other => panic!("an oversized FactTable was stored: {other:?}"),
    };
    let sql = |bytes: usize| format!("SELECT 1 AS v /* {} */", "x".repeat(bytes));
    refused(
        create(table(sql(1024 * 1024), 1)).await,
        "spec.source.sql: Too long",
    );
    refused(
        create(table(sql(10), 1000)).await,
        "spec.measurements: Too many",
    );
    create(table(sql(60 * 1024), 3))
        .await
        .expect("a FactTable within the bounds is stored");
}

#[tokio::test]
async fn a_lagging_table_holds_the_run_in_waiting_across_restarts() {
    let cluster = example_cluster("lagging-table").await;
    // The purchases pipeline has delivered data only until 20 October.
    fact_tables(&cluster)
        .patch_status(
            "purchases",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"dataDeliveredUntil": "2026-10-20T00:00:00Z"}})),
        )
        .await
        .unwrap();
    let controller = cluster.start_controller();
    let waiting = wait_for_state(&cluster, "checkout-conversion", "Waiting", 30).await;
    let condition = condition(&waiting, "Waiting");
    assert_eq!(condition["status"], "True");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("FactTable/purchases") && message.contains("2026-10-20"),
        "{message}"
    );
    assert!(calculation_jobs(&cluster).await.is_empty());

    drop(controller);
    let _controller = cluster.start_controller();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status(&cluster, "checkout-conversion").await["state"],
        "Waiting"
    );
    assert!(calculation_jobs(&cluster).await.is_empty());

    fact_tables(&cluster)
        .patch_status(
            "purchases",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"dataDeliveredUntil": "2026-11-06T00:00:00Z"}})),
        )
        .await
        .unwrap();
    wait_for_state(&cluster, "checkout-conversion", "Completed", 120).await;
    assert_eq!(calculation_jobs(&cluster).await.len(), 4);
}

#[tokio::test]
async fn a_failing_worker_fails_the_calculation_with_its_reason() {
    let cluster = TestCluster::start("failing-worker").await;
    cluster
        .apply_yaml(
            &cluster
                .example_manifests()
                .await
                .replace("/purchases.csv.gz", "/purchases-missing.csv.gz"),
        )
        .await;
    let _controller = cluster.start_controller();
    let failed = wait_for_state(&cluster, "checkout-conversion", "Failed", 120).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("purchases-missing.csv.gz"), "{error}");
    let condition = condition(&failed, "Failed");
    assert_eq!(
        (condition["status"].as_str(), condition["reason"].as_str()),
        (Some("True"), Some("WorkerFailed"))
    );
}

#[tokio::test]
async fn api_errors_are_retried_not_turned_into_failures() {
    let cluster = example_cluster("api-errors").await;
    let Some(faults) = cluster.faults() else {
        return;
    };
    // The first status writes and Job creations fail as if the API server were
    // overloaded; the controller retries.
    let namespace = cluster.namespace();
    faults.fail_next_method(
        "PATCH",
        &format!(
            "/apis/tally.dev/v1alpha1/namespaces/{namespace}/metriccalculations/checkout-conversion/status"
        ),
        3,
        Fault::Status(500),
    );
    faults.fail_next_method(
        "POST",
        &format!("/apis/batch/v1/namespaces/{namespace}/jobs"),
        2,
        Fault::Status(500),
    );
    let _controller = cluster.start_controller();
    let completed = wait_for_state(&cluster, "checkout-conversion", "Completed", 120).await;
    assert!(
        completed.get("error").is_none_or(Value::is_null),
        "{completed:#}"
    );
    // The others met the failed Job creations: they complete too, each with one Job.
    for name in [
        "checkout-revenue",
        "checkout-order-value",
        "checkout-max-basket",
    ] {
        wait_for_state(&cluster, name, "Completed", 120).await;
    }
    assert_eq!(calculation_jobs(&cluster).await.len(), 4);
    assert_eq!(faults.injected(), 5, "every injected fault met a request");
}

#[tokio::test]
async fn expired_watches_are_listed_again_and_nothing_is_missed() {
    let cluster = TestCluster::start("expired-watches").await;
    let Some(faults) = cluster.faults() else {
        return;
    };
    // Every watch the controller opens (about twenty: its kinds, their Jobs and runs,
    // the reference caches) first meets `410 Gone`, as after an etcd compaction; some
    // meet it twice. The calculations arrive while the watches are failing.
    const EXPIRED: usize = 30;
    faults.fail_next("/", EXPIRED, Fault::WatchExpired);
    let _controller = cluster.start_controller();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.apply_yaml(&cluster.example_manifests().await).await;
    for name in [
        "checkout-conversion",
        "checkout-revenue",
        "checkout-order-value",
        "checkout-max-basket",
    ] {
        wait_for_state(&cluster, name, "Completed", 180).await;
    }
    assert_eq!(calculation_jobs(&cluster).await.len(), 4);
    assert_eq!(faults.injected(), EXPIRED, "every expiry met a watch");
}

/// Whether the namespace holds a Warning Event with `reason` about `name`.
async fn warned(cluster: &TestCluster, name: &str, reason: &str) -> bool {
    let events: Api<k8s_openapi::api::events::v1::Event> = cluster.api();
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
}

/// Waits until the calculation's condition `type_` has `reason`; its message.
async fn wait_for_reason(
    cluster: &TestCluster,
    name: &str,
    type_: &str,
    reason: &str,
    seconds: u64,
) -> String {
    let deadline = Instant::now() + patience(seconds);
    loop {
        let status = status(cluster, name).await;
        let found = condition(&status, type_);
        if found["reason"] == reason {
            return found["message"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{name}'s {type_} never had reason {reason}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies a ResourceQuota and waits until the quota controller has counted it, so
/// that admission enforces it as written.
async fn quota(cluster: &TestCluster, hard: Value) {
    cluster
        .apply_yaml(
            &json!({
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "calculation-quota"},
                "spec": {"hard": hard},
            })
            .to_string(),
        )
        .await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = cluster.api();
    tally_e2e::eventually("the quota counted", patience(15), || async {
        let quota = quotas.get("calculation-quota").await.ok()?;
        let status = quota.status?;
        (status.hard? == quota.spec?.hard?).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_quota_that_refuses_the_job_or_its_pod_is_reported_until_lifted() {
    let cluster = TestCluster::start("quota").await;
    // No Job may be created in the namespace.
    quota(&cluster, json!({"count/jobs.batch": "0"})).await;
    cluster.apply_yaml(&cluster.example_manifests().await).await;
    let _controller = cluster.start_controller();
    let message = wait_for_reason(
        &cluster,
        "checkout-conversion",
        "Ready",
        "JobCreateRefused",
        30,
    )
    .await;
    assert!(message.contains("exceeded quota"), "{message}");
    assert_eq!(
        status(&cluster, "checkout-conversion").await["state"],
        "Pending"
    );
    assert!(warned(&cluster, "checkout-conversion", "JobCreateRefused").await);
    assert!(calculation_jobs(&cluster).await.is_empty());

    // Jobs may be created, their Pods not: the Job stays, and the calculation says why
    // it does not run (instead of Running until its deadline).
    quota(&cluster, json!({"pods": "0"})).await;
    let message = wait_for_reason(
        &cluster,
        "checkout-conversion",
        "Running",
        "PodsNotCreated",
        60,
    )
    .await;
    assert!(message.contains("exceeded quota"), "{message}");
    assert!(warned(&cluster, "checkout-conversion", "PodsNotCreated").await);

    // Lifted: the Job's Pod is created, and the calculation completes as usual.
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = cluster.api();
    quotas
        .delete("calculation-quota", &Default::default())
        .await
        .unwrap();
    let completed = wait_for_state(&cluster, "checkout-conversion", "Completed", 120).await;
    let printed = printed_status("checkout-conversion");
    assert_close(
        "metricResults",
        &printed["metricResults"],
        &completed["metricResults"],
    );
}

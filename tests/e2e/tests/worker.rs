//! `tally worker` as a Job on a real control plane (or the cluster of
//! `TALLY_E2E_KUBECONFIG`, see `tally_e2e::cluster`): the Job contract of DESIGN §4.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams, PropagationPolicy},
};
use serde_json::{Value, json};
use tally_e2e::{TestCluster, assert_close, patience, printed_status};

/// The plan of one example calculation, as the controller puts it in a Job on this
/// cluster.
async fn plan(cluster: &TestCluster, calculation: &str) -> Value {
    let plans = cluster.example_plans().await;
    plans
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["calculation"]
                .as_str()
                .is_some_and(|c| c.ends_with(&format!("/{calculation}")))
        })
        .unwrap()
        .clone()
}

fn job(cluster: &TestCluster, name: &str, plan: &Value) -> Job {
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"tally.dev/calculation": name}},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 60,
                "containers": [{
                    "name": "worker",
                    "image": cluster.worker_image(),
                    "args": ["worker"],
                    "env": [
                        {"name": "TALLY_PLAN", "value": plan.to_string()},
                        {"name": "TALLY_JOB_NAME", "value": name},
                        {"name": "TALLY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ],
                }],
            }},
        }
    });
    cluster.prepare_worker_job(&mut job);
    serde_json::from_value(job).unwrap()
}

async fn wait_for_condition(jobs: &Api<Job>, name: &str, condition: &str) -> Job {
    let deadline = Instant::now() + patience(60);
    loop {
        let job = jobs.get(name).await.unwrap();
        let done = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == condition && c.status == "True"));
        if done {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "Job {name} never reached {condition}: {:?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_worker_job_writes_the_result_that_tally_run_prints() {
    let cluster = TestCluster::start("worker-result").await;
    let jobs: Api<Job> = cluster.api();
    let plan = plan(&cluster, "checkout-conversion").await;
    jobs.create(
        &PostParams::default(),
        &job(&cluster, "conversion-1", &plan),
    )
    .await
    .unwrap();
    let job = wait_for_condition(&jobs, "conversion-1", "Complete").await;

    let config_map = cluster
        .api::<ConfigMap>()
        .get("conversion-1-result")
        .await
        .unwrap();
    let owner = &config_map.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", job.metadata.uid.unwrap().as_str())
    );
    let result: Value = serde_json::from_str(&config_map.data.unwrap()["result.json"]).unwrap();

    let status = printed_status("checkout-conversion");
    for field in ["times", "metricResults", "analysis"] {
        assert_close(field, &status[field], &result[field]);
    }
}

#[tokio::test]
async fn a_failing_worker_reports_why_in_its_termination_message() {
    let cluster = TestCluster::start("worker-failure").await;
    let mut broken = plan(&cluster, "checkout-conversion").await;
    let sql = broken["sql"]
        .as_str()
        .unwrap()
        .replace("purchases.csv.gz", "no-such-file.csv.gz");
    broken["sql"] = json!(sql);
    let jobs: Api<Job> = cluster.api();
    jobs.create(&PostParams::default(), &job(&cluster, "broken-1", &broken))
        .await
        .unwrap();
    wait_for_condition(&jobs, "broken-1", "Failed").await;

    let pods: Api<Pod> = cluster.api();
    let pod = pods
        .list(&ListParams::default().labels("job-name=broken-1"))
        .await
        .unwrap()
        .items
        .remove(0);
    let terminated = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_ne!(terminated.exit_code, 0);
    let message = terminated.message.unwrap_or_default();
    assert!(
        message.contains("the warehouse query failed") && message.contains("no-such-file.csv.gz"),
        "{message}"
    );
    assert!(
        cluster
            .api::<ConfigMap>()
            .get_opt("broken-1-result")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn deleting_the_job_interrupts_the_query_promptly() {
    let cluster = TestCluster::start("worker-sigterm").await;
    let mut slow = plan(&cluster, "checkout-conversion").await;
    // A scan that would run for many minutes.
    slow["sql"] =
        json!("SELECT count(*) AS n FROM range(1000000000000) AS a(i) WHERE hash(i) % 7 = 3");
    let jobs: Api<Job> = cluster.api();
    jobs.create(&PostParams::default(), &job(&cluster, "slow-1", &slow))
        .await
        .unwrap();
    let pods: Api<Pod> = cluster.api();
    cluster.wait_for_running_pod("slow-1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = pods
        .list(&ListParams::default().labels("job-name=slow-1"))
        .await
        .unwrap();
    let phase = list.items[0].status.as_ref().and_then(|s| s.phase.clone());
    assert_eq!(
        phase.as_deref(),
        Some("Running"),
        "the query should still be running"
    );

    let deleted = Instant::now();
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    jobs.delete("slow-1", &background).await.unwrap();
    // The grace period is 60 s: a Pod gone well before that exited on SIGTERM.
    loop {
        let list = pods
            .list(&ListParams::default().labels("job-name=slow-1"))
            .await
            .unwrap();
        if list.items.is_empty() {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "the worker ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The Job controller and the process-running kubelet.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_emulator::Emulator;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn job(name: &str, spec_extra: Value, pod_spec: Value) -> Job {
    let mut spec = json!({"template": {"spec": pod_spec}});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn shell(script: &str) -> Value {
    json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": "none", "command": ["sh", "-c", script]}]})
}

fn conditions(j: &Job) -> Vec<(String, String)> {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.reason.unwrap_or_default()))
        .collect()
}

async fn finished(jobs: &Api<Job>, name: &str, secs: u64) -> Job {
    eventually(secs, "job finished", || async {
        let j = jobs.get(name).await.unwrap();
        conditions(&j)
            .iter()
            .any(|(t, _)| t == "Complete" || t == "Failed")
            .then_some(j)
    })
    .await
}

async fn pods_of(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_image_map_with_env_kubeconfig_and_termination_message() {
    let emu = Emulator::builder()
        .image("example.com/shell:1.0", "/bin/sh")
        .start()
        .await
        .unwrap();
    let client = client(&emu).await;
    emu.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: default}\nstringData: {token: s3cret}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {mode: fast}\n",
    )
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    // No `command`: the mapped executable is the entrypoint; the tag is ignored.
    let pod_spec = json!({"restartPolicy": "Never", "containers": [{
        "name": "main", "image": "example.com/shell:2.0",
        "args": ["-c", "test -f \"$KUBECONFIG\" && grep -q 'server: http://127.0.0.1' \"$KUBECONFIG\" && echo \"$PLAIN $TOKEN $MODE $POD $NS\" > /dev/termination-log && echo to-the-log"],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        ]
    }]});
    jobs.create(&PostParams::default(), &job("env", json!({}), pod_spec))
        .await
        .unwrap();
    let j = finished(&jobs, "env", 15).await;
    assert_eq!(
        conditions(&j),
        vec![
            ("SuccessCriteriaMet".into(), "CompletionsReached".into()),
            ("Complete".into(), "CompletionsReached".into())
        ]
    );
    let status = j.status.unwrap();
    assert_eq!(status.succeeded, Some(1));
    assert!(status.start_time.is_some() && status.completion_time.is_some());

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = pods_of(&pods, "env").await.remove(0);
    let pod_name = pod.metadata.name.clone().unwrap();
    let st = pod.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Succeeded"));
    let term = st.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(term.exit_code, 0);
    assert_eq!(term.reason.as_deref(), Some("Completed"));
    assert_eq!(
        term.message.as_deref(),
        Some(format!("v s3cret fast {pod_name} default\n").as_str())
    );
    assert_eq!(
        pods.logs(&pod_name, &Default::default()).await.unwrap(),
        "to-the-log\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_limit_then_failed() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pod_spec = json!({"restartPolicy": "Never", "containers": [{
        "name": "main", "image": "none", "command": ["sh", "-c", "echo boom >&2; exit 3"], "terminationMessagePolicy": "FallbackToLogsOnError"
    }]});
    jobs.create(
        &PostParams::default(),
        &job("fail", json!({"backoffLimit": 1}), pod_spec),
    )
    .await
    .unwrap();
    let j = finished(&jobs, "fail", 15).await;
    assert_eq!(
        conditions(&j),
        vec![
            ("FailureTarget".into(), "BackoffLimitExceeded".into()),
            ("Failed".into(), "BackoffLimitExceeded".into())
        ]
    );
    assert_eq!(
        j.status.unwrap().failed,
        Some(2),
        "one attempt plus backoffLimit retries"
    );
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let all = pods_of(&pods, "fail").await;
    assert_eq!(all.len(), 2);
    for p in all {
        let st = p.status.unwrap();
        assert_eq!(st.phase.as_deref(), Some("Failed"));
        let t = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(
            (t.exit_code, t.reason.as_deref(), t.message.as_deref()),
            (3, Some("Error"), Some("boom"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_kills_the_process() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut spec = shell(&script);
    spec["terminationGracePeriodSeconds"] = json!(1);
    jobs.create(
        &PostParams::default(),
        &job("slow", json!({"activeDeadlineSeconds": 1}), spec),
    )
    .await
    .unwrap();
    let j = finished(&jobs, "slow", 15).await;
    assert_eq!(
        conditions(&j),
        vec![
            ("FailureTarget".into(), "DeadlineExceeded".into()),
            ("Failed".into(), "DeadlineExceeded".into())
        ]
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(5, "process gone", || async { (!alive(pid)).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_and_ttl() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "sus",
            json!({"suspend": true, "ttlSecondsAfterFinished": 1}),
            shell("exit 0"),
        ),
    )
    .await
    .unwrap();
    let suspended = eventually(5, "Suspended condition", || async {
        let j = jobs.get("sus").await.unwrap();
        conditions(&j)
            .iter()
            .any(|(t, r)| t == "Suspended" && r == "JobSuspended")
            .then_some(j)
    })
    .await;
    assert!(
        pods_of(&pods, "sus").await.is_empty(),
        "no pods while suspended"
    );
    assert_eq!(suspended.status.unwrap().active, None);
    jobs.patch(
        "sus",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    let j = finished(&jobs, "sus", 15).await;
    assert!(conditions(&j).iter().any(|(t, _)| t == "Complete"));
    // ttlSecondsAfterFinished removes the Job, and the GC its Pods.
    eventually(10, "job removed by TTL", || async {
        jobs.get_opt("sus").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually(10, "pods collected", || async {
        pods_of(&pods, "sus").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_job_sends_sigterm_then_sigkill_after_grace() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let dir = tempfile::tempdir().unwrap();

    // Ignores SIGTERM: must be SIGKILLed after terminationGracePeriodSeconds (2s).
    let stubborn = dir.path().join("stubborn");
    let mut spec = shell(&format!(
        "trap '' TERM; echo $$ > {}; sleep 60",
        stubborn.display()
    ));
    spec["terminationGracePeriodSeconds"] = json!(2);
    jobs.create(&PostParams::default(), &job("stubborn", json!({}), spec))
        .await
        .unwrap();
    // Handles SIGTERM by writing a marker and exiting.
    let polite = dir.path().join("polite");
    let script = format!(
        "trap 'echo term > {}.term; exit 0' TERM; echo $$ > {}; while true; do sleep 0.1; done",
        polite.display(),
        polite.display()
    );
    let mut spec = shell(&script);
    spec["terminationGracePeriodSeconds"] = json!(30);
    jobs.create(&PostParams::default(), &job("polite", json!({}), spec))
        .await
        .unwrap();

    eventually(10, "both running", || async {
        (stubborn.exists() && polite.exists()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stubborn_pid: i32 = std::fs::read_to_string(&stubborn)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let polite_pid: i32 = std::fs::read_to_string(&polite)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let start = Instant::now();
    jobs.delete("stubborn", &DeleteParams::background())
        .await
        .unwrap();
    jobs.delete("polite", &DeleteParams::background())
        .await
        .unwrap();

    eventually(10, "polite process exits on SIGTERM", || async {
        (!alive(polite_pid)).then_some(())
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "SIGTERM handled quickly"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{}.term", polite.display())).unwrap(),
        "term\n"
    );
    // The stubborn pod is Terminating until SIGKILL.
    let terminating = pods_of(&pods, "stubborn").await;
    assert!(
        terminating
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
    );
    assert!(alive(stubborn_pid), "still alive during its grace period");
    eventually(10, "stubborn process killed", || async {
        (!alive(stubborn_pid)).then_some(())
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "killed only after the grace period"
    );
    eventually(10, "pods removed", || async {
        (pods_of(&pods, "stubborn").await.is_empty() && pods_of(&pods, "polite").await.is_empty())
            .then_some(())
    })
    .await;
}

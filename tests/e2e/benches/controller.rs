//! Controller throughput on the API emulator: apply N MetricCalculations (the worker
//! image mapped to a no-op), wait for the backlog of Jobs, then measure apply → Job
//! created for calculations applied one at a time, and the controller's peak RSS.
//!
//! `cargo build -p tally && cargo bench -p tally-e2e` (N with TALLY_BENCH_CALCULATIONS,
//! the binary with TALLY_BIN; a release `tally` gives production figures).

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{WatchStreamExt, watcher},
};
use tally_e2e::{IMAGE, tally_bin};

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn calculation(name: &str) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tally.dev/v1alpha1",
        "kind": "MetricCalculation",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "metric": "revenue", "exposureTable": "exposures",
            "startTime": "2026-10-15T00:00:00Z", "endTime": "2026-11-05T00:00:00Z"
        }
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("TALLY_BENCH_CALCULATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let probes = 100;
    // Jobs finish at once: this measures the controller, not the warehouse.
    let (emulator, client) = tally_e2e::start_emulator(Path::new("/bin/true")).await;
    emulator
        .apply_yaml(
            r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {name: exposures, namespace: default}
spec: {source: {files: /data/exposures.parquet}, entityColumn: user_id, timestampColumn: ts, variantColumn: variant}
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {name: purchases, namespace: default}
spec: {source: {files: /data/purchases.parquet}, entityColumn: user_id, timestampColumn: ts, measurements: [{name: amount}]}
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: revenue, namespace: default}
spec: {type: Average, average: {measurement: {factTable: purchases, measurement: amount, aggregation: Sum}}}
"#,
        )
        .unwrap();
    let gvk = GroupVersionKind::gvk("tally.dev", "v1alpha1", "MetricCalculation");
    let calculations: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");

    // Job creations seen by a watcher, by Job name.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sink = seen.clone();
    let watch = tokio::spawn(async move {
        let mut stream = Box::pin(watcher(jobs, watcher::Config::default()).applied_objects());
        while let Some(Ok(job)) = stream.next().await {
            if let Some(name) = job.metadata.name {
                sink.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });

    let mut controller: Child = Command::new(tally_bin())
        .args(["controller", "--worker-image", IMAGE])
        .env("KUBECONFIG", emulator.kubeconfig_path())
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();

    let started = Instant::now();
    for i in 0..total {
        calculations
            .create(&PostParams::default(), &calculation(&format!("calc-{i}")))
            .await
            .unwrap();
    }
    let applied = started.elapsed();
    loop {
        if seen.lock().unwrap().len() >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "backlog not drained in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = started.elapsed();

    let mut latencies = Vec::with_capacity(probes);
    for i in 0..probes {
        let name = format!("probe-{i}");
        let applied_at = Instant::now();
        calculations
            .create(&PostParams::default(), &calculation(&name))
            .await
            .unwrap();
        let job = format!("{name}-1");
        loop {
            if let Some(at) = seen.lock().unwrap().get(&job) {
                latencies.push(at.saturating_duration_since(applied_at));
                break;
            }
            assert!(
                applied_at.elapsed() < Duration::from_secs(60),
                "no Job for {name}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    latencies.sort();
    let rss = peak_rss_mb(controller.id());
    let _ = controller.kill();
    let _ = controller.wait();
    watch.abort();
    println!("tally controller bench ({})", tally_bin().display());
    println!(
        "  {total} calculations applied in {:.1} s; all their Jobs created after {:.1} s",
        applied.as_secs_f64(),
        drained.as_secs_f64()
    );
    println!(
        "  after the backlog, apply → Job created over {probes} calculations: p50 {:.0} ms, p99 {:.0} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("  controller peak RSS: {rss:.0} MB");
}

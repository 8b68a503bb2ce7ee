//! Controller throughput on the real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) with no node: Jobs and their Pods are
//! created, the Pods never run, so this measures the controller and the API server,
//! not the warehouse. The controller runs as the chart's controller ServiceAccount.
//!
//! 1. **Burst**: N MetricCalculations are created as fast as one client can.
//! 2. **Drain**: wait until every burst calculation has its Job and the controller
//!    has then been idle (under 5% of a core) for two seconds: its backlog of
//!    reconciles is worked off, and the API server holds N calculations, N Jobs and
//!    N Pods.
//! 3. **Steady**: M more calculations are created at R per second.
//!
//! It reports apply → Job created (p50, p99, max) for the burst and for the steady
//! wave (the figure a user sees once the backlog is drained), the controller's peak
//! RSS, and the CPU time of the controller, of the control plane's processes and of
//! this process (the bench's client) per phase, which shows where the time goes.
//!
//! `cargo test -p tally --no-run && cargo bench -p tally-e2e`. Environment:
//! `TALLY_BENCH_CALCULATIONS` (N, default 5000), `TALLY_BENCH_STEADY` (M, default 300),
//! `TALLY_BENCH_RATE` (R, default 10), `TALLY_BIN` (the `tally` binary; by default the
//! debug build next to this bench, else the release one — the figures are for
//! whichever is printed).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Resource,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{WatchStreamExt, watcher},
};
use tally_e2e::{TestCluster, tally_bin};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_mb(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User plus system CPU seconds of a process (`self` for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and
    // 13th of those, in clock ticks (USER_HZ, 100 on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn calculation(name: &str) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tally.dev/v1alpha1",
        "kind": "MetricCalculation",
        "metadata": {"name": name},
        "spec": {
            "metric": "revenue", "exposureTable": "exposures",
            "startTime": "2026-10-15T00:00:00Z", "endTime": "2026-11-05T00:00:00Z"
        }
    }))
    .unwrap()
}

/// What the watcher saw: when each calculation's first Job appeared (by calculation
/// name, from the Job's controller reference).
#[derive(Default)]
struct Seen {
    job_created: HashMap<String, Instant>,
}

/// apply → Job created for `names`, sorted; `None` for a name without a Job yet.
fn latencies(
    seen: &Mutex<Seen>,
    applied: &HashMap<String, Instant>,
    names: &[String],
) -> Option<Vec<Duration>> {
    let seen = seen.lock().unwrap();
    let mut latencies = names
        .iter()
        .map(|n| {
            let created = seen.job_created.get(n)?;
            Some(created.saturating_duration_since(applied[n]))
        })
        .collect::<Option<Vec<_>>>()?;
    latencies.sort();
    Some(latencies)
}

fn summary(sorted: &[Duration]) -> String {
    let at = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

/// Waits until `done` holds, panicking after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU seconds of (this process, the controller, the control plane) since the last
/// call.
struct Cpu {
    controller: String,
    plane: Vec<String>,
    last: (f64, f64, f64),
}

impl Cpu {
    fn lap(&mut self) -> (f64, f64, f64) {
        let now = (
            cpu_seconds("self"),
            cpu_seconds(&self.controller),
            self.plane.iter().map(|pid| cpu_seconds(pid)).sum(),
        );
        let lap = (
            now.0 - self.last.0,
            now.1 - self.last.1,
            now.2 - self.last.2,
        );
        self.last = now;
        lap
    }
}

#[tokio::main]
async fn main() {
    let burst: usize = env_or("TALLY_BENCH_CALCULATIONS", 5000);
    let steady: usize = env_or("TALLY_BENCH_STEADY", 300);
    let rate: f64 = env_or("TALLY_BENCH_RATE", 10.0);
    let cluster = TestCluster::start_without_nodes("controller-bench").await;
    let client = cluster.client().clone();
    let namespace = cluster.namespace().to_string();
    cluster
        .apply_yaml(
            r#"
apiVersion: tally.dev/v1alpha1
kind: Warehouse
metadata: {name: lake}
spec: {engine: duckdb, duckdb: {dataDirectories: [/data]}}
---
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {name: exposures}
spec: {warehouse: lake, source: {files: /data/exposures.parquet}, entityColumn: user_id, timestampColumn: ts, variantColumn: variant}
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {name: purchases}
spec: {warehouse: lake, source: {files: /data/purchases.parquet}, entityColumn: user_id, timestampColumn: ts, measurements: [{name: amount}]}
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: revenue}
spec: {type: Average, average: {measurement: {factTable: purchases, measurement: amount, aggregation: Sum}}}
"#,
        )
        .await;
    let gvk = GroupVersionKind::gvk("tally.dev", "v1alpha1", "MetricCalculation");
    let resource = ApiResource::from_gvk(&gvk);
    let calculations: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &resource);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);

    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    let job_watch = tokio::spawn(async move {
        let mut stream = Box::pin(
            watcher(jobs, watcher::Config::default())
                .default_backoff()
                .applied_objects(),
        );
        while let Some(event) = stream.next().await {
            let Ok(job) = event else { continue };
            let owner = job
                .meta()
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| r.name.clone());
            if let Some(owner) = owner {
                let mut seen = sink.lock().unwrap();
                seen.job_created.entry(owner).or_insert_with(Instant::now);
            }
        }
    });
    let controller = cluster.start_controller_with(&[], &[("RUST_LOG", "error")]);
    let mut cpu = Cpu {
        controller: controller.id().to_string(),
        plane: cluster.control_plane_pids(),
        last: (0.0, 0.0, 0.0),
    };
    cpu.lap();
    let mut applied: HashMap<String, Instant> = HashMap::new();

    // 1. Burst.
    let started = Instant::now();
    let burst_names: Vec<String> = (0..burst).map(|i| format!("calc-{i}")).collect();
    for name in &burst_names {
        applied.insert(name.clone(), Instant::now());
        calculations
            .create(&PostParams::default(), &calculation(name))
            .await
            .unwrap();
    }
    let burst_applied = started.elapsed();

    // 2. Drain.
    let limit = Duration::from_secs(3600);
    wait_until("the burst's Jobs", limit, || {
        seen.lock().unwrap().job_created.len() >= burst
    })
    .await;
    let jobs_created = started.elapsed();
    let controller_pid = controller.id().to_string();
    let mut idle_since = Instant::now();
    let mut last = cpu_seconds(&controller_pid);
    while idle_since.elapsed() < Duration::from_secs(2) {
        assert!(started.elapsed() < limit, "the controller never went idle");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cpu_seconds(&controller_pid);
        if now - last > 0.05 * 0.25 {
            idle_since = Instant::now();
        }
        last = now;
    }
    let drained = started.elapsed() - Duration::from_secs(2);
    let burst_cpu = cpu.lap();
    let burst_latencies = latencies(&seen, &applied, &burst_names).expect("every burst Job");

    // 3. Steady wave.
    let steady_names: Vec<String> = (0..steady).map(|i| format!("steady-{i}")).collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let steady_started = Instant::now();
    for name in &steady_names {
        tick.tick().await;
        applied.insert(name.clone(), Instant::now());
        calculations
            .create(&PostParams::default(), &calculation(name))
            .await
            .unwrap();
    }
    let steady_applied = steady_started.elapsed();
    wait_until("the steady wave's Jobs", Duration::from_secs(600), || {
        latencies(&seen, &applied, &steady_names).is_some()
    })
    .await;
    let steady_cpu = cpu.lap();
    let steady_latencies = latencies(&seen, &applied, &steady_names).expect("every steady Job");

    let pid = controller.id().to_string();
    let controller_rss = proc_status_mb(&pid, "VmHWM:");
    let apiserver_rss = cluster
        .control_plane_pid("kube-apiserver")
        .map_or(f64::NAN, |pid| proc_status_mb(&pid, "VmHWM:"));
    drop(controller);
    job_watch.abort();
    let bin = tally_bin();
    let build = if bin.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    println!("tally controller bench: {} ({build} build)", bin.display());
    println!(
        "  burst: {burst} calculations created in {:.1} s; all their Jobs after {:.1} s; the controller idle after {:.1} s",
        burst_applied.as_secs_f64(),
        jobs_created.as_secs_f64(),
        drained.as_secs_f64()
    );
    println!(
        "    apply → Job created, all {burst}: {}",
        summary(&burst_latencies)
    );
    println!(
        "    CPU: controller {:.1} s, control plane {:.1} s, bench client {:.1} s",
        burst_cpu.1, burst_cpu.2, burst_cpu.0
    );
    println!(
        "  steady, once the backlog is drained: {steady} calculations at {rate}/s (created in {:.1} s) next to the {burst} earlier ones",
        steady_applied.as_secs_f64()
    );
    println!("    apply → Job created: {}", summary(&steady_latencies));
    println!(
        "    CPU: controller {:.1} s, control plane {:.1} s, bench client {:.1} s",
        steady_cpu.1, steady_cpu.2, steady_cpu.0
    );
    println!("  peak RSS: controller {controller_rss:.0} MB, kube-apiserver {apiserver_rss:.0} MB");
}

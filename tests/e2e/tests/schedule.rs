//! ScheduledMetricCalculations end to end on a [`TestCluster`], with second-scale
//! intervals over data whose timestamps are generated around the test's start. The
//! data reaches the worker Pods as a ConfigMap the Warehouse mounts.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};
use serde_json::{Value, json};
use tally_e2e::{ControllerProcess, TestCluster, condition, patience};

/// Entities exposed per second of generated data.
const PER_SECOND: usize = 4;
const ENTITIES: usize = 240;

/// The schedule's start: the next whole second (the data starts there too).
fn start() -> Timestamp {
    let now = Timestamp::now().as_second();
    Timestamp::from_second(now + 1).unwrap()
}

/// Entity i is exposed at `start + i / PER_SECOND` seconds, in `control` when i is even;
/// it buys once, for i + 1, in the second of its exposure.
fn exposure(start: Timestamp, i: usize) -> Timestamp {
    start + SignedDuration::from_secs((i / PER_SECOND) as i64)
}

/// Where the worker Pods find the generated data: the `live-data` ConfigMap.
const DATA_DIR: &str = "/live-data";

/// The generated data as the `live-data` ConfigMap (`exposures.csv`, `purchases.csv`).
fn data(start: Timestamp) -> ConfigMap {
    let mut exposures = String::from("user_id,ts,variant\n");
    let mut purchases = String::from("user_id,ts,amount\n");
    for i in 0..ENTITIES {
        let at = exposure(start, i);
        let variant = if i % 2 == 0 { "control" } else { "treatment" };
        exposures.push_str(&format!("u{i},{at},{variant}\n"));
        purchases.push_str(&format!("u{i},{at},{}\n", i + 1));
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("live-data".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("exposures.csv".to_string(), exposures),
                ("purchases.csv".to_string(), purchases),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    }
}

/// Tables, a revenue metric and a schedule named `name` over the generated data.
fn manifests(name: &str, start: Timestamp, metric: &str, schedule: &str) -> String {
    format!(
        r#"
apiVersion: tally.dev/v1alpha1
kind: Warehouse
metadata: {{name: live-duckdb}}
spec:
  engine: duckdb
  duckdb: {{dataDirectories: ["{dir}"]}}
  job:
    volumes: [{{name: live-data, configMap: {{name: live-data}}}}]
    volumeMounts: [{{name: live-data, mountPath: "{dir}", readOnly: true}}]
---
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {{name: live-exposures}}
spec:
  warehouse: live-duckdb
  source: {{files: {dir}/exposures.csv}}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {{name: live-purchases}}
spec:
  warehouse: live-duckdb
  source: {{files: {dir}/purchases.csv}}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{{name: revenue, column: amount}}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {{name: live-revenue}}
spec:
  type: Average
  average:
    measurement: {{factTable: live-purchases, measurement: revenue, aggregation: Sum}}
---
apiVersion: tally.dev/v1alpha1
kind: ScheduledMetricCalculation
metadata: {{name: {name}}}
spec:
  metricCalculationSpec:
    metric: {metric}
    exposureTable: live-exposures
  scheduleStartTime: "{start}"
{schedule}
"#,
        dir = DATA_DIR
    )
}

struct Setup {
    cluster: TestCluster,
    start: Timestamp,
}

impl Setup {
    /// `tally controller`, with schedules allowed to fire every second.
    fn controller(&self) -> ControllerProcess {
        self.cluster
            .start_controller_with(&["--min-schedule-interval", "1s"], &[])
    }

    /// `tally ARGS -n NAMESPACE`.
    async fn tally_cli(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["-n", self.cluster.namespace()]);
        self.cluster.tally_cli(&all).await
    }

    fn tally_api(&self, kind: &str) -> kube::Api<kube::api::DynamicObject> {
        self.cluster.tally_api(kind)
    }
}

/// A cluster with the generated data and a schedule of `live-revenue` applied (no
/// controller yet).
async fn setup(name: &str, schedule: &str) -> Setup {
    setup_with(name, "live-revenue", "", schedule).await
}

/// The same, with `extra` manifests (formatted with `{start}`) and the schedule's
/// metric named.
async fn setup_with(name: &str, metric: &str, extra: &str, schedule: &str) -> Setup {
    let cluster = TestCluster::start(&format!("schedule-{name}")).await;
    let start = start();
    cluster
        .api::<ConfigMap>()
        .create(&Default::default(), &data(start))
        .await
        .unwrap();
    if !extra.is_empty() {
        let start_literal = start.strftime("%Y-%m-%d %H:%M:%S").to_string();
        cluster
            .apply_yaml(&extra.replace("{start}", &start_literal))
            .await;
    }
    cluster
        .apply_yaml(&manifests(name, start, metric, schedule))
        .await;
    Setup { cluster, start }
}

async fn get(s: &Setup, kind: &str, name: &str) -> Option<Value> {
    let object = s.tally_api(kind).get_opt(name).await.unwrap()?;
    Some(serde_json::to_value(object).unwrap())
}

async fn schedule_status(s: &Setup, name: &str) -> Value {
    get(s, "ScheduledMetricCalculation", name)
        .await
        .map(|s| s["status"].clone())
        .unwrap_or(Value::Null)
}

/// The schedule's children, sorted by name.
async fn children(s: &Setup, schedule: &str) -> Vec<Value> {
    let list = s
        .tally_api("MetricCalculation")
        .list(&ListParams::default().labels(&format!("tally.dev/schedule={schedule}")))
        .await
        .unwrap();
    let mut items: Vec<Value> = list
        .items
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    items.sort_by_key(|c| {
        c["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    items
}

fn names(children: &[Value]) -> Vec<String> {
    children
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `seconds`.
async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_state(s: &Setup, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + patience(60);
    loop {
        let calculation = get(s, "MetricCalculation", name).await;
        if let Some(calculation) = &calculation
            && calculation["status"]["state"] == state
        {
            return calculation.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {state}: {:#}",
            calculation.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ts(value: &Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

/// The count and sum a run ending at `fire` must report for `variant`.
fn expected(start: Timestamp, fire: Timestamp, variant: &str) -> (i64, f64) {
    let parity = usize::from(variant == "treatment");
    let counted: Vec<usize> = (0..ENTITIES)
        .filter(|i| i % 2 == parity && exposure(start, *i) < fire)
        .collect();
    let sum = counted.iter().map(|i| (*i + 1) as f64).sum();
    (counted.len() as i64, sum)
}

fn stats<'a>(calculation: &'a Value, variant: &str) -> &'a Value {
    calculation["status"]["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["variant"] == variant && b["dimensions"].as_array().is_none_or(Vec::is_empty))
        .map(|b| &b["summaryStats"]["averageSummaryStats"])
        .unwrap_or_else(|| panic!("no {variant} bucket"))
}

#[tokio::test]
async fn runs_fire_in_order_with_growing_windows() {
    let s = setup("live", "  scheduleIntervals: [4s]").await;
    let _controller = s.controller();
    for run in 0..3u64 {
        let name = format!("live-0-{run}");
        let calculation = wait_for_state(&s, &name, "Completed").await;
        let fire = s.start + SignedDuration::from_secs(4 * (run as i64 + 1));
        let times = &calculation["status"]["times"];
        assert_eq!(ts(&calculation["spec"]["endTime"]), fire, "{name}");
        assert_eq!(ts(&times["exposureStartTime"]), s.start, "{name}");
        assert_eq!(ts(&times["exposureEndTime"]), fire, "{name}");
        assert_eq!(ts(&times["factEndTime"]), fire, "{name}");
        assert_eq!(calculation["status"]["schedule"], "live");
        assert_eq!(calculation["status"]["scheduleIteration"], 0);
        let owner = &calculation["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ScheduledMetricCalculation");
        assert_eq!(owner["name"], "live");
        for variant in ["control", "treatment"] {
            let (count, sum) = expected(s.start, fire, variant);
            let stats = stats(&calculation, variant);
            assert_eq!(stats["count"], count, "{name} {variant}");
            assert_eq!(stats["sum"].as_f64(), Some(sum), "{name} {variant}");
        }
    }
    let status = schedule_status(&s, "live").await;
    assert_eq!(status["state"], "Active");
    assert!(status["executedCalculationsCount"].as_i64().unwrap() >= 3);
    assert_eq!(ts(&status["nextExposureStartTime"]), s.start);
    assert!(ts(&status["nextScheduledRunTime"]) > s.start + SignedDuration::from_secs(12));
    // The earliest runs fired on time: none was skipped.
    let first = names(&children(&s, "live").await);
    assert_eq!(first[..3], ["live-0-0", "live-0-1", "live-0-2"]);
    assert_ne!(condition(&status, "RunsSkipped")["status"], "True");
}

#[tokio::test]
async fn a_lagging_table_holds_the_run_in_waiting_until_delivered() {
    let s = setup("lagging", "  scheduleIntervals: [2s]").await;
    let facts = s.tally_api("FactTable");
    let mark = |t: Timestamp| json!({ "status": { "dataDeliveredUntil": t.to_string() } });
    facts
        .patch_status(
            "live-purchases",
            &PatchParams::default(),
            &Patch::Merge(mark(s.start)),
        )
        .await
        .unwrap();
    let _controller = s.controller();
    let waiting = eventually(30, "the schedule to wait for data", || async {
        let status = schedule_status(&s, "lagging").await;
        let waiting = status["status"]["waiting"].clone();
        waiting.is_object().then_some(waiting)
    })
    .await;
    assert_eq!(waiting["table"], "FactTable/live-purchases");
    assert_eq!(ts(&waiting["dataDeliveredUntilTime"]), s.start);
    assert!(ts(&waiting["needDataUntilTime"]) >= s.start + SignedDuration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(children(&s, "lagging").await.is_empty());

    // Delivered through the first minute: the latest due run fires.
    facts
        .patch_status(
            "live-purchases",
            &PatchParams::default(),
            &Patch::Merge(mark(s.start + SignedDuration::from_secs(60))),
        )
        .await
        .unwrap();
    let first = eventually(30, "a run after delivery", || async {
        children(&s, "lagging").await.into_iter().next()
    })
    .await;
    let name = first["metadata"]["name"].as_str().unwrap().to_string();
    wait_for_state(&s, &name, "Completed").await;
    let status = schedule_status(&s, "lagging").await;
    assert!(status["status"]["waiting"].is_null(), "{status:#}");
}

/// A metric whose runs never finish: its fact table scans an endless series (its facts
/// fall inside the schedule's windows, so no filter can prove the scan empty).
const ENDLESS_FACTS: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {name: endless-purchases}
spec:
  source:
    sql: "SELECT 'u' || (i % 1000) AS user_id, TIMESTAMP '{start}' AS ts, 1.0 AS amount FROM range(1000000000000) AS t(i) WHERE hash(i) % 7 = 3"
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{name: revenue, column: amount}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: endless-revenue}
spec:
  type: Average
  average:
    measurement: {factTable: endless-purchases, measurement: revenue, aggregation: Sum}
"#;

#[tokio::test]
async fn cancel_stops_the_running_child_and_resume_continues_from_now() {
    let s = setup_with(
        "stoppable",
        "endless-revenue",
        ENDLESS_FACTS,
        "  scheduleIntervals: [2s]",
    )
    .await;
    let _controller = s.controller();
    wait_for_state(&s, "stoppable-0-0", "Running").await;
    s.cluster.wait_for_running_pod("stoppable-0-0-1").await;

    let printed = s.tally_cli(&["cancel", "smc/stoppable"]).await;
    assert!(printed.contains("cancel requested"), "{printed}");
    let child = wait_for_state(&s, "stoppable-0-0", "Cancelled").await;
    assert_eq!(child["metadata"]["annotations"]["tally.dev/cancel"], "true");
    let status = schedule_status(&s, "stoppable").await;
    assert_eq!(status["state"], "Cancelled");
    assert!(status["status"]["cancelled"]["cancelledTime"].is_string());
    assert!(status["nextScheduledRunTime"].is_null());
    // Two intervals pass: no new run while cancelled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(names(&children(&s, "stoppable").await), ["stoppable-0-0"]);

    // Resume: the next run fires after now, and both annotations are removed.
    let resumed_at = Timestamp::now();
    s.tally_cli(&["resume", "smc/stoppable"]).await;
    let status = eventually(20, "the schedule to be active again", || async {
        let schedule = get(&s, "ScheduledMetricCalculation", "stoppable").await?;
        let annotations = &schedule["metadata"]["annotations"];
        let cleared = annotations.get("tally.dev/cancel").is_none()
            && annotations.get("tally.dev/resume").is_none();
        (schedule["status"]["state"] == "Active" && cleared).then(|| schedule["status"].clone())
    })
    .await;
    assert!(ts(&status["nextScheduledRunTime"]) > resumed_at);
    assert_eq!(condition(&status, "Active")["reason"], "Resumed");
    // The next run is the first to fire after the resume, not a catch-up of the runs
    // due while cancelled.
    let next = eventually(20, "a run after the resume", || async {
        children(&s, "stoppable")
            .await
            .into_iter()
            .find(|c| c["metadata"]["name"] != "stoppable-0-0")
    })
    .await;
    assert_eq!(
        ts(&next["spec"]["endTime"]),
        ts(&status["nextScheduledRunTime"])
    );
    // Resuming an active schedule changes nothing: its annotation is removed and no
    // extra run is made (the new run never ends, so no other may start).
    s.tally_cli(&["resume", "smc/stoppable"]).await;
    eventually(20, "the second resume annotation to be removed", || async {
        let schedule = get(&s, "ScheduledMetricCalculation", "stoppable").await?;
        schedule["metadata"]["annotations"]
            .get("tally.dev/resume")
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = schedule_status(&s, "stoppable").await;
    assert_eq!(again["state"], "Active");
    assert_eq!(
        again["executedCalculationsCount"].as_i64(),
        status["executedCalculationsCount"].as_i64().map(|n| n + 1)
    );
    assert_eq!(children(&s, "stoppable").await.len(), 2);
    s.tally_cli(&["cancel", "smc/stoppable"]).await;
    let name = next["metadata"]["name"].as_str().unwrap().to_string();
    wait_for_state(&s, &name, "Cancelled").await;
}

#[tokio::test]
async fn old_runs_beyond_the_history_limit_are_deleted() {
    let s = setup(
        "short-history",
        "  scheduleIntervals: [1s]\n  calculationHistoryLimit: 2",
    )
    .await;
    let _controller = s.controller();
    eventually(60, "five runs", || async {
        let status = schedule_status(&s, "short-history").await;
        (status["executedCalculationsCount"].as_i64()? >= 5).then_some(())
    })
    .await;
    let status = schedule_status(&s, "short-history").await;
    let latest = status["latestCalculation"].as_str().unwrap().to_string();
    eventually(20, "old runs to be deleted", || async {
        let children = children(&s, "short-history").await;
        let finished: Vec<&Value> = children
            .iter()
            .filter(|c| c["status"]["state"] == "Completed")
            .collect();
        (finished.len() <= 2 && children.len() <= 3).then_some(())
    })
    .await;
    let left = names(&children(&s, "short-history").await);
    assert!(!left.iter().any(|n| n == "short-history-0-0"), "{left:?}");
    assert!(
        get(&s, "MetricCalculation", &latest).await.is_some(),
        "the latest run {latest} is kept"
    );
}

/// The run index in a child's name (`NAME-ITERATION-RUN`).
fn run_index(name: &str) -> u64 {
    name.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_controller_down_across_two_fire_times_makes_one_catch_up_run() {
    let interval = SignedDuration::from_secs(4);
    let s = setup("catch-up", "  scheduleIntervals: [4s]").await;
    let fire = |run: u64| s.start + interval * (run as i32 + 1);
    let controller = s.controller();
    wait_for_state(&s, "catch-up-0-0", "Completed").await;
    drop(controller);
    let before = names(&children(&s, "catch-up").await);
    let last = before.iter().map(|n| run_index(n)).max().unwrap();
    // The next two runs come due while no controller runs; restart a second after the
    // second of them, well before the one after.
    let restart = fire(last + 2) + SignedDuration::from_secs(1);
    let wait = restart.duration_since(Timestamp::now());
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    let _controller = s.controller();

    let status = eventually(30, "the catch-up run", || async {
        let status = schedule_status(&s, "catch-up").await;
        (condition(&status, "RunsSkipped")["status"] == "True").then_some(status)
    })
    .await;
    let catch_up = format!("catch-up-0-{}", last + 2);
    assert_eq!(status["latestCalculation"], catch_up.as_str());
    let made = names(&children(&s, "catch-up").await);
    let new: Vec<&String> = made.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(
        new,
        [&catch_up],
        "one catch-up run, the skipped one not made"
    );
    let message = condition(&status, "RunsSkipped")["message"]
        .as_str()
        .unwrap();
    assert!(message.starts_with("1 earlier run(s)"), "{message}");
    let completed = wait_for_state(&s, &catch_up, "Completed").await;
    assert_eq!(ts(&completed["spec"]["endTime"]), fire(last + 2));
    // Its results are cumulative: everything exposed before its fire time.
    for variant in ["control", "treatment"] {
        let (count, sum) = expected(s.start, fire(last + 2), variant);
        assert_eq!(stats(&completed, variant)["count"], count);
        assert_eq!(stats(&completed, variant)["sum"].as_f64(), Some(sum));
    }
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = s.cluster.api();
    let skipped = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("RunsSkipped"));
    assert!(skipped, "no RunsSkipped Event");
}

#[tokio::test]
async fn a_retrigger_recomputes_the_newest_run_as_a_new_iteration() {
    let s = setup("redo", "  scheduleIntervals: [4s]").await;
    let _controller = s.controller();
    wait_for_state(&s, "redo-0-0", "Completed").await;
    s.tally_cli(&["retrigger", "smc/redo"]).await;
    let rerun = wait_for_state(&s, "redo-1-0", "Completed").await;
    assert_eq!(rerun["status"]["superseeds"], "redo-0-0");
    assert_eq!(rerun["status"]["scheduleIteration"], 1);
    assert_eq!(
        ts(&rerun["spec"]["endTime"]),
        s.start + SignedDuration::from_secs(4)
    );
    let old = get(&s, "MetricCalculation", "redo-0-0").await.unwrap();
    assert_eq!(old["status"]["supersededBy"], "redo-1-0");
    // The old result stays readable.
    assert!(old["status"]["metricResults"].is_object());
    let schedule = get(&s, "ScheduledMetricCalculation", "redo").await.unwrap();
    assert_eq!(schedule["status"]["iteration"], 1);
    assert!(
        schedule["metadata"]["annotations"]
            .get("tally.dev/retrigger")
            .is_none(),
        "the retrigger annotation is removed"
    );
    // Later runs belong to the new iteration; the retrigger is not repeated.
    wait_for_state(&s, "redo-1-1", "Completed").await;
    let made = names(&children(&s, "redo").await);
    assert!(!made.iter().any(|n| n.starts_with("redo-2-")), "{made:?}");
}

#[tokio::test]
async fn the_schedule_ends_at_its_end_time() {
    let s = setup("ending", "  scheduleIntervals: [2s]").await;
    // The end is set after setup knows the start: runs fire at +2 s and +4 s only.
    let end = s.start + SignedDuration::from_secs(5);
    s.tally_api("ScheduledMetricCalculation")
        .patch(
            "ending",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "scheduleEndTime": end.to_string() } })),
        )
        .await
        .unwrap();
    let _controller = s.controller();
    let status = eventually(40, "the schedule to end", || async {
        let status = schedule_status(&s, "ending").await;
        (status["state"] == "Cancelled").then_some(status)
    })
    .await;
    let ended = condition(&status, "Active");
    assert_eq!(ended["reason"], "ScheduleEnded");
    // At the end time, not right after the last run (about a second earlier).
    let ended_at: Timestamp = ended["lastTransitionTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ended_at >= end, "ended at {ended_at}, before {end}");
    assert!(status["status"]["cancelled"].is_object());
    assert!(status["nextScheduledRunTime"].is_null());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        names(&children(&s, "ending").await),
        ["ending-0-0", "ending-0-1"]
    );
}

#[tokio::test]
async fn a_calculation_of_a_runs_name_that_the_schedule_does_not_own_is_not_adopted() {
    let foreign = r#"
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {name: taken-0-0}
spec:
  metric: live-revenue
  exposureTable: live-exposures
  startTime: "2026-01-01T00:00:00Z"
  endTime: "2026-01-02T00:00:00Z"
"#;
    let s = setup_with(
        "taken",
        "live-revenue",
        foreign,
        "  scheduleIntervals: [2s]",
    )
    .await;
    let _controller = s.controller();
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = s.cluster.api();
    let note = eventually(30, "a RunNameTaken Event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("RunNameTaken")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("taken")
            })
            .and_then(|e| e.note)
    })
    .await;
    assert!(note.contains("taken-0-0"), "{note}");
    let status = schedule_status(&s, "taken").await;
    assert!(status["latestCalculation"].is_null(), "{status:#}");
    let calculation = get(&s, "MetricCalculation", "taken-0-0").await.unwrap();
    assert!(calculation["metadata"]["ownerReferences"].is_null());
    // Once it is out of the way, the schedule makes its run under that name.
    s.tally_api("MetricCalculation")
        .delete("taken-0-0", &Default::default())
        .await
        .unwrap();
    let made = eventually(30, "a run of the schedule", || async {
        let made = names(&children(&s, "taken").await);
        (!made.is_empty()).then_some(made)
    })
    .await;
    let latest = eventually(30, "the run in status", || async {
        let status = schedule_status(&s, "taken").await;
        status["latestCalculation"].as_str().map(str::to_string)
    })
    .await;
    assert!(made.contains(&latest), "{made:?} {latest}");
}

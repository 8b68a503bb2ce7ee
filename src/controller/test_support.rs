//! What the controller's tests share: caches as a watch fills them, a scripted API
//! server, and the example's resources.

use std::sync::Arc;

use kube::Client;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::Event;
use serde_json::Value;

use super::plumbing::references::Watched;
use crate::api::{MetricCalculation, ScheduledMetricCalculation};
use crate::plan::Catalog;

/// A cache holding `objects`, as if its watch had delivered them.
pub(crate) fn cache<K: Watched>(objects: impl IntoIterator<Item = K>) -> Store<K> {
    let (store, mut writer) = reflector::store();
    for object in objects {
        writer.apply_watcher_event(&Event::Apply(object));
    }
    store
}

/// A client whose API server answers GETs of the objects in `served` (by path)
/// and 404 otherwise, and the paths it was asked for.
pub(crate) fn api_server(
    served: std::collections::BTreeMap<String, Value>,
) -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
    let (service, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = asked.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            record.lock().unwrap().push(path.clone());
            let (code, body) = match served.get(&path) {
                Some(object) => (200, object.clone()),
                None => (
                    404,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("{path} not found")}),
                ),
            };
            respond.send_response(
                http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), asked)
}

/// The example's resources, namespace `default`.
pub(crate) fn example() -> (Catalog, MetricCalculation) {
    let manifests = crate::cli::manifest::load(&[std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/checkout-experiment"
    ))])
    .unwrap();
    let calculation = manifests.calculations[0].1.clone();
    let mut catalog = manifests.catalog("default").unwrap().clone();
    // A cluster's Warehouse declares where its data is; `tally run` infers it.
    let data = std::mem::take(&mut catalog.local_data_directories);
    for warehouse in catalog.warehouses.values_mut() {
        Arc::make_mut(warehouse)
            .spec
            .duckdb
            .get_or_insert_with(Default::default)
            .data_directories = data.clone();
    }
    (catalog, calculation)
}

/// The schedule `shop/daily`: daily runs of `revenue` from 1 November 2026.
pub(crate) fn schedule() -> ScheduledMetricCalculation {
    let mut schedule: ScheduledMetricCalculation = serde_json::from_value(serde_json::json!({
        "apiVersion": "tally.dev/v1alpha1",
        "kind": "ScheduledMetricCalculation",
        "metadata": {"name": "daily", "namespace": "shop", "uid": "u-1"},
        "spec": {
            "metricCalculationSpec": {"metric": "revenue", "exposureTable": "exposures"},
            "scheduleStartTime": "2026-11-01T00:00:00Z",
            "scheduleIntervals": ["1d"]
        }
    }))
    .unwrap();
    schedule.metadata.generation = Some(1);
    schedule
}

/// One request the API server expects, and its answer.
pub(crate) struct Exchange {
    method: &'static str,
    path: String,
    status: u16,
    body: Value,
}

impl Exchange {
    pub(crate) fn new(
        method: &'static str,
        path: impl Into<String>,
        status: u16,
        body: Value,
    ) -> Self {
        Self {
            method,
            path: path.into(),
            status,
            body,
        }
    }
}

/// A `Status` body, as the API server answers a refused request.
pub(crate) fn status_body(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "code": code, "message": message})
}

/// A client whose API server expects exactly `script`, in order, and answers each
/// request with its canned response (the `ApiServerVerifier` of kube-rs's
/// `controller-rs`). The handle yields the JSON body of each request; it fails when a
/// request differs from the script or the script is not played through. A request
/// past the script's end fails in the code under test.
pub(crate) fn scripted(script: Vec<Exchange>) -> (Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (service, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let verifier = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (index, expected) in script.into_iter().enumerate() {
            let (request, respond) =
                tokio::time::timeout(std::time::Duration::from_secs(5), handle.next_request())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "request {index} ({} {}) never came",
                            expected.method, expected.path
                        )
                    })
                    .unwrap_or_else(|| panic!("the client went away before request {index}"));
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                (expected.method, expected.path.as_str()),
                "request {index}"
            );
            let body = request.into_body().collect_bytes().await.unwrap();
            bodies.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            respond.send_response(
                http::Response::builder()
                    .status(expected.status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&expected.body).unwrap(),
                    ))
                    .unwrap(),
            );
        }
        bodies
    });
    (Client::new(service, "default"), verifier)
}

/// A controller context on `client`, whose caches hold `catalog`.
pub(crate) fn context(client: Client, catalog: &Catalog) -> super::Context {
    super::Context {
        client: client.clone(),
        events: super::plumbing::events::EventPublisher::new(client, "tally-controller", None),
        defaults: super::JobDefaults::default(),
        min_schedule_interval: jiff::SignedDuration::from_secs(60),
        references: super::plumbing::references::References::holding(catalog),
        backoff: super::plumbing::backoff::Backoff::new(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(10),
        ),
        metrics: Arc::default(),
        job_refusals: Default::default(),
    }
}

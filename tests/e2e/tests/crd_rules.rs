//! The CEL rules of the CRDs reject what they should and accept what they should,
//! evaluated on the checked-in CRDs (`crds/`, which `tally`'s own tests keep equal to
//! `tally crds`) by the Kubernetes CEL library's rules, without an API server.

use kube_cel::Validator;
use serde_json::{Value, json};

/// The checked-in CRD of `kind`'s schema.
fn schema(kind: &str) -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    let crd = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| serde_yaml::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap())
        .find(|crd| crd["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind} in {}", dir.display()));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The rule messages a resource violates.
fn violations(kind: &str, object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(kind), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn assert_accepted(kind: &str, object: Value) {
    let errors = violations(kind, &object);
    assert!(
        errors.is_empty(),
        "{kind} should be accepted: {errors:?}\n{object:#}"
    );
}

fn assert_rejected(kind: &str, object: Value, message: &str) {
    let errors = violations(kind, &object);
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "{kind} should be rejected with {message:?}, got {errors:?}\n{object:#}"
    );
}

fn resource(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "tally.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

#[test]
fn a_postgres_warehouse_needs_its_settings_and_one_ca_source() {
    let postgres = json!({"host": "db", "database": "analytics", "user": "tally",
                          "passwordSecretRef": {"name": "credentials", "key": "password"}});
    assert_accepted(
        "Warehouse",
        resource(
            "Warehouse",
            json!({"engine": "postgres", "postgres": postgres}),
        ),
    );
    assert_accepted(
        "Warehouse",
        resource("Warehouse", json!({"engine": "duckdb"})),
    );
    assert_rejected(
        "Warehouse",
        resource("Warehouse", json!({"engine": "postgres"})),
        "needs spec.postgres",
    );
    let mut both = postgres.clone();
    both["caCertificate"] = json!({"secretKeyRef": {"name": "ca", "key": "ca.crt"},
                                   "configMapKeyRef": {"name": "ca", "key": "ca.crt"}});
    assert_rejected(
        "Warehouse",
        resource("Warehouse", json!({"engine": "postgres", "postgres": both})),
        "exactly one of secretKeyRef or configMapKeyRef",
    );
}

fn calculation(start: &str, end: &str) -> Value {
    resource(
        "MetricCalculation",
        json!({"metric": "m", "exposureTable": "e", "startTime": start, "endTime": end}),
    )
}

#[test]
fn calculation_end_must_follow_start() {
    assert_accepted(
        "MetricCalculation",
        calculation("2026-10-01T00:00:00Z", "2026-10-08T00:00:00Z"),
    );
    assert_rejected(
        "MetricCalculation",
        calculation("2026-10-08T00:00:00Z", "2026-10-01T00:00:00Z"),
        "endTime must be after startTime",
    );
    assert_rejected(
        "MetricCalculation",
        calculation("2026-10-08T00:00:00Z", "2026-10-08T00:00:00Z"),
        "endTime must be after startTime",
    );
    let mut within = calculation("2026-10-01T00:00:00Z", "2026-10-08T00:00:00Z");
    within["spec"]["exposureEndTime"] = json!("2026-10-05T00:00:00Z");
    assert_accepted("MetricCalculation", within.clone());
    within["spec"]["exposureEndTime"] = json!("2026-10-09T00:00:00Z");
    assert_rejected(
        "MetricCalculation",
        within,
        "exposureEndTime must be after startTime",
    );
}

#[test]
fn exposure_groups_must_contain_the_control() {
    let mut groups = calculation("2026-10-01T00:00:00Z", "2026-10-08T00:00:00Z");
    groups["spec"]["exposureGroups"] = json!(["control", "treatment-b"]);
    assert_accepted("MetricCalculation", groups.clone());
    groups["spec"]["exposureGroups"] = json!(["treatment-a", "treatment-b"]);
    assert_rejected(
        "MetricCalculation",
        groups.clone(),
        "exposureGroups must contain the control variant",
    );
    groups["spec"]["analysis"] = json!({"control": "treatment-a"});
    assert_accepted("MetricCalculation", groups);

    assert_accepted(
        "ScheduledMetricCalculation",
        schedule(json!({"metricCalculationSpec": {
            "metric": "m", "exposureTable": "e", "exposureGroups": ["control", "b"]}})),
    );
    assert_rejected(
        "ScheduledMetricCalculation",
        schedule(json!({"metricCalculationSpec": {
            "metric": "m", "exposureTable": "e", "exposureGroups": ["a", "b"]}})),
        "metricCalculationSpec.exposureGroups must contain the control variant",
    );
}

fn table(source: Value) -> Value {
    resource(
        "FactTable",
        json!({"source": source, "entityColumn": "user_id", "timestampColumn": "ts"}),
    )
}

#[test]
fn table_source_needs_exactly_one_kind() {
    assert_accepted("FactTable", table(json!({"table": "analytics.purchases"})));
    assert_accepted("FactTable", table(json!({"files": "data/*.parquet"})));
    assert_accepted(
        "ExposureTable",
        resource(
            "ExposureTable",
            json!({
                "source": {"sql": "SELECT 1"}, "entityColumn": "u", "timestampColumn": "t", "variantColumn": "v"
            }),
        ),
    );
    assert_rejected("FactTable", table(json!({})), "exactly one of source.table");
    assert_rejected(
        "FactTable",
        table(json!({"table": "t", "sql": "SELECT 1"})),
        "exactly one of source.table",
    );
    assert_rejected(
        "DimensionTable",
        resource(
            "DimensionTable",
            json!({
                "source": {"table": "t", "files": "f.csv"}, "entityColumn": "u", "dimensions": [{"name": "country"}]
            }),
        ),
        "exactly one of source.table",
    );
}

fn metric(spec: Value) -> Value {
    resource("Metric", spec)
}

fn sum_of(measurement: &str) -> Value {
    json!({"factTable": "purchases", "measurement": measurement, "aggregation": "Sum"})
}

#[test]
fn metric_type_needs_its_block() {
    assert_accepted(
        "Metric",
        metric(json!({"type": "Average", "average": {"measurement": sum_of("amount")}})),
    );
    assert_accepted(
        "Metric",
        metric(
            json!({"type": "Ratio", "ratio": {"numerator": sum_of("amount"), "denominator": sum_of("items")}}),
        ),
    );
    assert_rejected(
        "Metric",
        metric(json!({"type": "Average"})),
        "type Average needs spec.average",
    );
    assert_rejected(
        "Metric",
        metric(json!({"type": "Ratio", "average": {"measurement": sum_of("amount")}})),
        "type Ratio needs spec.ratio",
    );
    assert_rejected(
        "Metric",
        metric(
            json!({"type": "Average", "average": {"measurement": sum_of("amount")},
                      "ratio": {"numerator": sum_of("a"), "denominator": sum_of("b")}}),
        ),
        "type Average needs spec.average and no spec.ratio",
    );
}

#[test]
fn measurement_is_required_unless_counting() {
    let count = json!({"factTable": "purchases", "aggregation": "Count"});
    assert_accepted(
        "Metric",
        metric(json!({"type": "Average", "average": {"measurement": count}})),
    );
    let sum = json!({"factTable": "purchases", "aggregation": "Sum"});
    assert_rejected(
        "Metric",
        metric(json!({"type": "Average", "average": {"measurement": sum}})),
        "measurement is required unless aggregation is Count",
    );
}

#[test]
fn cap_bounds_are_ordered() {
    let with_cap = |cap: Value| {
        let mut m = sum_of("amount");
        m["cap"] = cap;
        metric(json!({"type": "Average", "average": {"measurement": m}}))
    };
    assert_accepted("Metric", with_cap(json!({"max": 200.0})));
    assert_accepted("Metric", with_cap(json!({"min": 0.0, "max": 200.0})));
    assert_rejected(
        "Metric",
        with_cap(json!({"min": 10.0, "max": 1.0})),
        "cap.min must not exceed cap.max",
    );
    assert_rejected(
        "Metric",
        with_cap(json!({})),
        "a cap needs min, max or both",
    );
}

#[test]
fn durations_are_checked() {
    let with_window = |window: Value| {
        metric(
            json!({"type": "Average", "average": {"measurement": sum_of("amount")}, "window": window}),
        )
    };
    assert_accepted(
        "Metric",
        with_window(json!({"offset": "0s", "length": "7d"})),
    );
    assert_accepted(
        "Metric",
        with_window(json!({"offset": "1h30m", "length": "1.5d"})),
    );
    assert_rejected(
        "Metric",
        with_window(json!({"length": "0d"})),
        "must be a positive duration",
    );
    assert_rejected(
        "Metric",
        with_window(json!({"length": "-1d"})),
        "must be a positive duration",
    );
    assert_rejected(
        "Metric",
        with_window(json!({"offset": "1 day"})),
        "must be a duration",
    );
    let cuped = |window: &str| {
        metric(
            json!({"type": "Average", "average": {"measurement": sum_of("amount")},
                      "varianceReduction": {"preExposureWindow": window}}),
        )
    };
    assert_accepted("Metric", cuped("14d"));
    assert_rejected("Metric", cuped("0s"), "must be a positive duration");
}

fn schedule(spec_extra: Value) -> Value {
    let mut spec = json!({
        "metricCalculationSpec": {"metric": "m", "exposureTable": "e"},
        "scheduleStartTime": "2026-10-01T00:00:00Z",
        "scheduleIntervals": ["1d"],
    });
    for (key, value) in spec_extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    resource("ScheduledMetricCalculation", spec)
}

#[test]
fn schedule_rules() {
    assert_accepted("ScheduledMetricCalculation", schedule(json!({})));
    assert_accepted(
        "ScheduledMetricCalculation",
        schedule(
            json!({"scheduleEndTime": "2026-11-01T00:00:00Z", "scheduleIntervals": ["1d", "7d"]}),
        ),
    );
    assert_rejected(
        "ScheduledMetricCalculation",
        schedule(json!({"scheduleEndTime": "2026-09-01T00:00:00Z"})),
        "scheduleEndTime must be after scheduleStartTime",
    );
    assert_rejected(
        "ScheduledMetricCalculation",
        schedule(json!({"scheduleIntervals": []})),
        "scheduleIntervals must not be empty",
    );
    assert_rejected(
        "ScheduledMetricCalculation",
        schedule(json!({"scheduleIntervals": ["1d", "0h"]})),
        "must be a positive duration",
    );
}

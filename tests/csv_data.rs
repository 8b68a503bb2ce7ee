//! CSV files as users hand them over, through the real path (`tally run`): columns
//! typed from the whole file, timestamps with and without a UTC offset, counts of
//! non-numeric columns.

use std::path::{Path, PathBuf};

use serde_json::Value;

use tally::cli::{self, OutputFormat};

/// A fresh directory with `exposures.csv` (users 1–3 in control, 4–6 in treatment,
/// exposed on 2026-10-01 at 10:00 UTC), the given `facts.csv`, and manifests for one
/// calculation of `metric` (the spec of an Average metric on FactTable `facts`).
/// A fresh, empty directory named after `name`.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-csv-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn experiment(name: &str, facts: &str, metric: &str) -> PathBuf {
    let dir = fresh_dir(name);
    let mut exposures = String::from("user_id,ts,variant\n");
    for user in 1..=6 {
        let variant = if user <= 3 { "control" } else { "treatment" };
        exposures.push_str(&format!("{user},2026-10-01T10:00:00Z,{variant}\n"));
    }
    std::fs::write(dir.join("exposures.csv"), exposures).unwrap();
    std::fs::write(dir.join("facts.csv"), facts).unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        format!(
            r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {{name: exp}}
spec:
  source: {{files: exposures.csv}}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {{name: facts}}
spec:
  source: {{files: facts.csv}}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{{name: amount}}, {{name: orders, column: order_id}}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {{name: m}}
spec:
  type: Average
{metric}
---
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {{name: mc}}
spec:
  metric: m
  exposureTable: exp
  startTime: "2026-10-01T00:00:00Z"
  endTime: "2026-10-10T00:00:00Z"
"#
        ),
    )
    .unwrap();
    dir
}

fn status(dir: &Path) -> Value {
    let output = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Json)
        .unwrap_or_else(|e| panic!("{e}"));
    let items: Vec<Value> = serde_json::from_str(&output).unwrap();
    std::fs::remove_dir_all(dir).ok();
    items[0]["status"].clone()
}

/// (count, sum, countMissingRows) of a variant's overall bucket.
fn overall(status: &Value, variant: &str) -> (i64, f64, i64) {
    let bucket = status["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["variant"] == variant && b["dimensions"].as_array().unwrap().is_empty())
        .unwrap_or_else(|| panic!("no overall bucket for {variant}: {status:#}"));
    let s = &bucket["summaryStats"]["averageSummaryStats"];
    (
        s["count"].as_i64().unwrap(),
        s["sum"].as_f64().unwrap(),
        s["countMissingRows"].as_i64().unwrap(),
    )
}

#[test]
fn count_and_count_distinct_read_a_text_column_as_it_is() {
    let facts = "user_id,ts,amount,order_id\n\
                 1,2026-10-02T00:00:00Z,1,o-1\n\
                 2,2026-10-02T00:00:00Z,2,o-2\n\
                 2,2026-10-02T01:00:00Z,2,\n\
                 2,2026-10-02T02:00:00Z,2,o-2\n\
                 4,2026-10-03T00:00:00Z,3,o-4\n";
    for (aggregation, control_sum) in [("Count", 3.0), ("CountDistinct", 2.0)] {
        let dir = experiment(
            &format!("count-{aggregation}"),
            facts,
            &format!(
                "  average:\n    measurement: {{factTable: facts, measurement: orders, aggregation: {aggregation}}}"
            ),
        );
        let status = status(&dir);
        // User 2's row with no order id is not counted, and is a null row.
        assert_eq!(
            overall(&status, "control"),
            (3, control_sum, 1),
            "{aggregation}"
        );
        assert_eq!(overall(&status, "treatment"), (3, 1.0, 0), "{aggregation}");
    }
}

const SUM_OF_AMOUNT: &str =
    "  average:\n    measurement: {factTable: facts, measurement: amount, aggregation: Sum}";

/// `rows` copies of a fact of user 99, who was never exposed: filler that pushes what
/// follows past the rows a sampling CSV reader looks at.
fn filler(rows: usize, ts: &str) -> String {
    format!("99,{ts},1\n").repeat(rows)
}

#[test]
fn columns_are_typed_from_the_whole_file() {
    let facts = format!(
        "user_id,ts,amount\n{}\
         1,2026-10-03T00:00:00Z,0.4\n\
         2,2026-10-03T00:00:00Z,1.4\n\
         3,2026-10-03T00:00:00Z,2.6\n\
         4,2026-10-03T00:00:00Z,3.25\n",
        filler(30_000, "2026-10-02T00:00:00Z")
    );
    let status = status(&experiment("sniff", &facts, SUM_OF_AMOUNT));
    let (count, sum, _) = overall(&status, "control");
    assert_eq!(count, 3);
    assert!((sum - 4.4).abs() < 1e-9, "decimals kept: {sum}");
    let (_, sum, _) = overall(&status, "treatment");
    assert!((sum - 3.25).abs() < 1e-9, "decimals kept: {sum}");
}

#[test]
fn a_utc_offset_on_any_row_counts_and_times_without_one_are_utc() {
    // Exposure is at 10:00 UTC. 11:00+02:00 is 09:00 UTC, before it: not counted.
    // 09:30-01:00 is 10:30 UTC: counted. Zone-less 10:15 is UTC: counted.
    let rows = "1,2026-10-01T11:00:00+02:00,100\n\
                2,2026-10-01T09:30:00-01:00,20\n\
                3,2026-10-01 10:15:00,3\n\
                3,2026-10-01 09:59:59,1000\n";
    for (name, leading) in [
        ("offsets-first", String::new()),
        // The offsets come after 30000 zone-less rows, where a sample would not see them.
        ("offsets-late", filler(30_000, "2026-10-02 00:00:00")),
    ] {
        let facts = format!("user_id,ts,amount\n{leading}{rows}");
        let status = status(&experiment(name, &facts, SUM_OF_AMOUNT));
        assert_eq!(overall(&status, "control"), (3, 23.0, 0), "{name}");
    }

    // Exposure times with offsets: 12:00+02:00 is 10:00 UTC, so user 1's fact at 10:30
    // UTC counts and user 4's exposure (12:00 UTC) comes after its fact at 11:00 UTC.
    let dir = experiment(
        "exposure-offsets",
        "user_id,ts,amount\n1,2026-10-01T10:30:00Z,5\n4,2026-10-01T11:00:00Z,7\n",
        SUM_OF_AMOUNT,
    );
    std::fs::write(
        dir.join("exposures.csv"),
        "user_id,ts,variant\n\
         1,2026-10-01T12:00:00+02:00,control\n\
         4,2026-10-01 12:00:00,treatment\n",
    )
    .unwrap();
    let status = status(&dir);
    assert_eq!(overall(&status, "control"), (1, 5.0, 0));
    assert_eq!(overall(&status, "treatment"), (1, 0.0, 0));
}

#[test]
fn text_times_in_parquet_honour_their_offsets() {
    let dir = experiment("parquet-text-times", "", SUM_OF_AMOUNT);
    let db = duckdb::Connection::open_in_memory().unwrap();
    db.execute_batch(&format!(
        "COPY (SELECT * FROM (VALUES
            (1, '2026-10-01T11:00:00+02:00', 100.0),
            (2, '2026-10-01T09:30:00-01:00', 20.0),
            (3, '2026-10-01 10:15:00', 3.0)) t(user_id, ts, amount))
         TO '{}' (FORMAT parquet)",
        dir.join("facts.parquet").display()
    ))
    .unwrap();
    let manifests = std::fs::read_to_string(dir.join("manifests.yaml")).unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        manifests.replace("{files: facts.csv}", "{files: facts.parquet}"),
    )
    .unwrap();
    let status = status(&dir);
    assert_eq!(overall(&status, "control"), (3, 23.0, 0));
}

fn table(dir: &Path) -> String {
    let output = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Table)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_dir_all(dir).ok();
    output
}

#[test]
fn the_table_warns_of_an_empty_control_and_of_an_empty_experiment() {
    let facts = "user_id,ts,amount\n1,2026-10-02T00:00:00Z,1\n";
    let dir = experiment("empty-control", facts, SUM_OF_AMOUNT);
    std::fs::write(
        dir.join("exposures.csv"),
        "user_id,ts,variant\n4,2026-10-01T10:00:00Z,treatment\n",
    )
    .unwrap();
    let manifests = std::fs::read_to_string(dir.join("manifests.yaml")).unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        format!("{manifests}  exposureGroups: [control, treatment]\n"),
    )
    .unwrap();
    let output = table(&dir);
    assert!(
        output.contains("warning: no entity in the control variant \"control\""),
        "{output}"
    );

    // Every exposure falls before startTime.
    let dir = experiment("empty-window", facts, SUM_OF_AMOUNT);
    std::fs::write(
        dir.join("exposures.csv"),
        "user_id,ts,variant\n1,2026-09-01T10:00:00Z,control\n",
    )
    .unwrap();
    let output = table(&dir);
    assert!(
        output.contains("warning: no entity was exposed in the exposure window"),
        "{output}"
    );
}

fn run_error(dir: &Path) -> String {
    let error = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Table)
        .expect_err("the calculation should fail");
    std::fs::remove_dir_all(dir).ok();
    error.to_string()
}

#[test]
fn a_missing_column_or_file_is_reported_against_the_table_that_names_it() {
    let facts = "user_id,ts,amount\n1,2026-10-02T00:00:00Z,1\n";
    let dir = experiment("no-entity-column", facts, SUM_OF_AMOUNT);
    std::fs::write(
        dir.join("exposures.csv"),
        "uid,ts,variant\n1,2026-10-01T10:00:00Z,control\n",
    )
    .unwrap();
    let message = run_error(&dir);
    assert!(
        message.contains(&format!(
            "ExposureTable/exp: spec.entityColumn: column \"user_id\" not found in {}",
            dir.join("exposures.csv").display()
        )),
        "{message}"
    );
    assert!(message.contains("(columns: uid, ts, variant)"), "{message}");

    let dir = experiment("no-measurement-column", "user_id,ts,value\n", SUM_OF_AMOUNT);
    let message = run_error(&dir);
    assert!(
        message
            .contains("FactTable/facts: spec.measurements[0].column: column \"amount\" not found"),
        "{message}"
    );

    let dir = experiment("no-matching-file", facts, SUM_OF_AMOUNT);
    let manifests = std::fs::read_to_string(dir.join("manifests.yaml")).unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        manifests.replace("{files: facts.csv}", "{files: \"missing-*.csv\"}"),
    )
    .unwrap();
    let message = run_error(&dir);
    assert!(
        message.contains(&format!(
            "FactTable/facts: spec.source.files: no file matches \"{}\"",
            dir.join("missing-*.csv").display()
        )),
        "{message}"
    );
}

/// Control entities per value of `dimension` in `status`.
fn control_per_value(status: &Value, dimension: &str) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = status["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["variant"] == "control")
        .filter_map(|b| {
            let d = b["dimensions"].as_array()?.first()?;
            (d["dimension"] == dimension).then(|| {
                (
                    d["value"].as_str().unwrap_or("<null>").to_string(),
                    b["summaryStats"]["averageSummaryStats"]["count"]
                        .as_i64()
                        .unwrap(),
                )
            })
        })
        .collect();
    out.sort();
    out
}

#[test]
fn ties_on_first_exposure_or_validity_time_do_not_depend_on_row_order() {
    let dir = fresh_dir("ties");
    // Users 1 and 2 have two exposure rows at the same first time, in opposite orders;
    // and two dimension rows valid from the same time, in opposite orders.
    std::fs::write(
        dir.join("exposures.csv"),
        "user_id,ts,variant,platform\n\
         1,2026-10-01T10:00:00Z,control,web\n\
         1,2026-10-01T10:00:00Z,control,android\n\
         2,2026-10-01T10:00:00Z,control,android\n\
         2,2026-10-01T10:00:00Z,control,web\n\
         3,2026-10-01T10:00:00Z,treatment,ios\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("users.csv"),
        "user_id,valid_from,country\n\
         1,2026-09-01T00:00:00Z,DE\n\
         1,2026-09-01T00:00:00Z,FR\n\
         2,2026-09-01T00:00:00Z,FR\n\
         2,2026-09-01T00:00:00Z,DE\n\
         3,2026-09-01T00:00:00Z,SE\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("facts.csv"),
        "user_id,ts,amount\n1,2026-10-02T00:00:00Z,5\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {name: exp}
spec:
  source: {files: exposures.csv}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
  dimensions: [{name: platform}]
---
apiVersion: tally.dev/v1alpha1
kind: DimensionTable
metadata: {name: users}
spec:
  source: {files: users.csv}
  entityColumn: user_id
  timestampColumn: valid_from
  dimensions: [{name: country}]
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {name: facts}
spec:
  source: {files: facts.csv}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{name: amount}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: m}
spec:
  type: Average
  average: {measurement: {factTable: facts, measurement: amount, aggregation: Sum}}
---
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {name: mc}
spec:
  metric: m
  exposureTable: exp
  startTime: "2026-10-01T00:00:00Z"
  endTime: "2026-10-10T00:00:00Z"
  splitDimensions: [{name: platform}, {name: country, dimensionTable: users}]
"#,
    )
    .unwrap();
    let status = status(&dir);
    // First exposure: the smallest value. Validity: the largest, as for duplicates.
    assert_eq!(
        control_per_value(&status, "platform"),
        [("android".to_string(), 2)]
    );
    assert_eq!(
        control_per_value(&status, "country"),
        [("FR".to_string(), 2)]
    );
}

#[test]
fn an_infinite_measurement_or_an_overflowing_square_is_an_error_not_a_result() {
    for (name, amount) in [("inf", "inf"), ("overflow", "1e200")] {
        let facts = format!(
            "user_id,ts,amount\n1,2026-10-02T00:00:00Z,{amount}\n4,2026-10-02T00:00:00Z,1\n"
        );
        let dir = experiment(&format!("non-finite-{name}"), &facts, SUM_OF_AMOUNT);
        let error = run_error(&dir);
        assert!(
            error.contains("infinite or not a number") && error.contains("cap the measurement"),
            "{name}: {error}"
        );
    }
}

#[test]
fn a_misspelt_field_stops_the_run_naming_file_resource_and_field() {
    let facts = "user_id,ts,amount\n1,2026-10-02T00:00:00Z,5\n";
    let dir = experiment(
        "misspelt",
        facts,
        "  average:\n    measurement: {factTable: facts, measurement: amount, aggregation: Sum, filters: \"amount > 3\"}",
    );
    let error = run_error(&dir);
    assert!(
        error.contains("manifests.yaml")
            && error.contains("Metric/m")
            && error.contains("spec.average.measurement.filters: unknown field")
            && error.contains("filter,"),
        "{error}"
    );
}

#[test]
fn an_exposure_row_without_a_variant_still_marks_the_first_exposure() {
    let facts = "user_id,ts,amount\n1,2026-10-01T09:00:00Z,5\n3,2026-10-02T00:00:00Z,7\n";
    let dir = experiment("null-variant", facts, SUM_OF_AMOUNT);
    // User 1 is first seen at 08:00 with no variant, then at 10:00 in control: its
    // window opens at 08:00, so the 09:00 purchase counts.
    std::fs::write(
        dir.join("exposures.csv"),
        "user_id,ts,variant\n\
         1,2026-10-01T08:00:00Z,\n\
         1,2026-10-01T10:00:00Z,control\n\
         2,2026-10-01T10:00:00Z,treatment\n\
         3,2026-10-01T10:00:00Z,\n",
    )
    .unwrap();
    let status = status(&dir);
    assert_eq!(overall(&status, "control"), (1, 5.0, 0));
    // User 3 never had a variant: in no bucket, and not a multiple-variant entity.
    assert_eq!(overall(&status, "treatment"), (1, 0.0, 0));
    assert_eq!(status["analysis"]["multipleVariantEntities"], 0);
}

#[test]
fn facts_that_match_no_row_in_any_window_are_said_to_leave_no_values() {
    // Every purchase is after the calculation's endTime: zeros that say nothing.
    let facts = "user_id,ts,amount,order_id\n\
                 1,2026-10-20T00:00:00Z,1,o-1\n\
                 4,2026-10-21T00:00:00Z,3,o-4\n";
    for (aggregation, replaced) in [("Sum", true), ("Mean", false)] {
        let dir = experiment(
            &format!("no-values-{aggregation}"),
            facts,
            &format!(
                "  average:\n    measurement: {{factTable: facts, measurement: amount, aggregation: {aggregation}}}"
            ),
        );
        let table = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Table)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            table.contains("none of the 6 exposed entities has a value of the metric"),
            "{aggregation}: {table}"
        );
        let status = status(&dir);
        assert_eq!(
            status["analysis"]["entitiesWithoutValue"], 6,
            "{aggregation}"
        );
        // A sum fills the missing with 0 and counts them; a mean leaves them out.
        let expected = if replaced { (3, 0.0, 0) } else { (0, 0.0, 0) };
        assert_eq!(overall(&status, "control"), expected, "{aggregation}");
    }
    // One matching row is a result.
    let dir = experiment(
        "some-values",
        "user_id,ts,amount,order_id\n1,2026-10-02T00:00:00Z,1,o-1\n",
        "  average:\n    measurement: {factTable: facts, measurement: amount, aggregation: Sum}",
    );
    let table = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Table).unwrap();
    assert!(!table.contains("has a value of the metric"), "{table}");
    std::fs::remove_dir_all(&dir).ok();
}

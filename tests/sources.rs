//! Sources and dimensions the reference cases do not cover, on a tiny hand-computed
//! experiment: Parquet globs, a DuckDB database file named by the Warehouse (with a
//! schema-qualified table), split dimensions from the exposure table (value on the
//! first exposure row) and from a time-varying dimension table.

use std::path::Path;

use serde_json::Value;

use tally::cli::{self, OutputFormat};

fn execute(db: &duckdb::Connection, sql: &str) {
    db.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
}

fn write_fixture(dir: &Path) {
    let db = duckdb::Connection::open(dir.join("warehouse.duckdb")).unwrap();
    execute(
        &db,
        "CREATE SCHEMA analytics;
         CREATE TABLE analytics.purchases (user_id VARCHAR, ts TIMESTAMP, amount DOUBLE);
         INSERT INTO analytics.purchases VALUES
           ('u1', '2026-01-01 09:00:00', 5),     -- before u1's exposure: not counted
           ('u1', '2026-01-02 11:00:00', 10),
           ('u2', '2026-01-03 00:00:00', 20),
           ('u2', '2026-01-04 00:00:00', NULL),  -- a null row
           ('u3', '2026-01-05 12:00:00', 100),   -- u3 saw both variants
           ('u5', '2026-01-07 00:00:00', 7),
           ('u5', '2026-01-11 00:00:00', 1000);  -- after endTime",
    );
    // Exposures split over two Parquet files, read through one glob.
    let exposures = |rows: &str, file: &str| {
        execute(
            &db,
            &format!(
                "COPY (SELECT * FROM (VALUES {rows}) t(user_id, ts, variant, platform))
                 TO '{}' (FORMAT parquet)",
                dir.join(file).display()
            ),
        )
    };
    exposures(
        "('u1', TIMESTAMP '2026-01-02 10:00:00', 'control', 'ios'),
         ('u1', TIMESTAMP '2026-01-03 00:00:00', 'control', 'web'),
         ('u2', TIMESTAMP '2026-01-02 12:00:00', 'treatment', 'android'),
         (NULL, TIMESTAMP '2026-01-02 12:00:00', 'treatment', 'android')",
        "exposures-1.parquet",
    );
    exposures(
        "('u3', TIMESTAMP '2026-01-04 00:00:00', 'treatment', 'web'),
         ('u3', TIMESTAMP '2026-01-05 00:00:00', 'control', 'web'),
         ('u4', TIMESTAMP '2026-01-03 00:00:00', 'control', NULL),
         ('u5', TIMESTAMP '2026-01-06 00:00:00', 'treatment', 'web')",
        "exposures-2.parquet",
    );
    drop(db);
    std::fs::write(
        dir.join("tiers.csv"),
        "user_id,valid_from,tier\n\
         u1,2026-01-01T00:00:00Z,silver\n\
         u1,2026-01-02T11:00:00Z,gold\n\
         u2,2026-01-01T00:00:00Z,gold\n\
         u5,2026-01-07T00:00:00Z,gold\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        r#"
apiVersion: tally.dev/v1alpha1
kind: Warehouse
metadata: {name: wh}
spec:
  engine: duckdb
  duckdb: {database: warehouse.duckdb}
---
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {name: exposures}
spec:
  warehouse: wh
  source: {files: "exposures-*.parquet"}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
  dimensions: [{name: platform}]
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {name: purchases}
spec:
  warehouse: wh
  source: {table: analytics.purchases}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{name: revenue, column: amount}]
---
apiVersion: tally.dev/v1alpha1
kind: DimensionTable
metadata: {name: tiers}
spec:
  warehouse: wh
  source: {files: tiers.csv}
  entityColumn: user_id
  timestampColumn: valid_from
  dimensions: [{name: tier}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: revenue}
spec:
  type: Average
  average:
    measurement: {factTable: purchases, measurement: revenue, aggregation: Sum}
---
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {name: revenue}
spec:
  metric: revenue
  exposureTable: exposures
  startTime: "2026-01-01T00:00:00Z"
  endTime: "2026-01-10T00:00:00Z"
  splitDimensions:
    - {name: platform}
    - {name: tier, dimensionTable: tiers}
"#,
    )
    .unwrap();
}

/// (count, countMissing, countMissingRows, sum, sumOfSquares) of a bucket.
fn bucket(
    status: &Value,
    variant: &str,
    dimension: Option<(&str, &str)>,
) -> (i64, i64, i64, f64, f64) {
    let buckets = status["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap();
    let found = buckets
        .iter()
        .find(|b| {
            b["variant"] == variant
                && match dimension {
                    None => b["dimensions"].as_array().unwrap().is_empty(),
                    Some((d, v)) => {
                        b["dimensions"][0]["dimension"] == d && b["dimensions"][0]["value"] == v
                    }
                }
        })
        .unwrap_or_else(|| panic!("no bucket {variant} {dimension:?} in {buckets:#?}"));
    let s = &found["summaryStats"]["averageSummaryStats"];
    (
        s["count"].as_i64().unwrap(),
        s["countMissing"].as_i64().unwrap(),
        s["countMissingRows"].as_i64().unwrap(),
        s["sum"].as_f64().unwrap(),
        s["sumOfSquares"].as_f64().unwrap(),
    )
}

#[test]
fn parquet_globs_database_tables_and_dimensions() {
    let dir = std::env::temp_dir().join(format!("tally-sources-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    write_fixture(&dir);

    let output = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Json).unwrap();
    let items: Vec<Value> = serde_json::from_str(&output).unwrap();
    let status = &items[0]["status"];

    // u1 = 10 (its pre-exposure purchase does not count), u4 has no purchase (0, missing).
    assert_eq!(bucket(status, "control", None), (2, 1, 0, 10.0, 100.0));
    // u2 = 20 with one null row, u5 = 7 (its purchase after endTime does not count).
    assert_eq!(bucket(status, "treatment", None), (2, 0, 1, 27.0, 449.0));
    assert_eq!(status["analysis"]["multipleVariantEntities"], 1);
    assert_eq!(
        status["analysis"]["sampleRatioMismatch"]["counts"]["control"],
        2
    );

    // Platform from the first exposure row; a null platform is "(null)".
    assert_eq!(
        bucket(status, "control", Some(("platform", "ios"))),
        (1, 0, 0, 10.0, 100.0)
    );
    assert_eq!(
        bucket(status, "control", Some(("platform", "(null)"))),
        (1, 1, 0, 0.0, 0.0)
    );
    assert_eq!(
        bucket(status, "treatment", Some(("platform", "android"))),
        (1, 0, 1, 20.0, 400.0)
    );
    assert_eq!(
        bucket(status, "treatment", Some(("platform", "web"))),
        (1, 0, 0, 7.0, 49.0)
    );

    // Tier in force at first exposure: u1 was still silver; u5's row starts later.
    assert_eq!(
        bucket(status, "control", Some(("tier", "silver"))),
        (1, 0, 0, 10.0, 100.0)
    );
    assert_eq!(
        bucket(status, "control", Some(("tier", "(null)"))),
        (1, 1, 0, 0.0, 0.0)
    );
    assert_eq!(
        bucket(status, "treatment", Some(("tier", "gold"))),
        (1, 0, 1, 20.0, 400.0)
    );
    assert_eq!(
        bucket(status, "treatment", Some(("tier", "(null)"))),
        (1, 0, 0, 7.0, 49.0)
    );
    let bucket_count = status["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(bucket_count, 2 + 4 + 4, "no empty buckets");

    std::fs::remove_dir_all(&dir).ok();
}

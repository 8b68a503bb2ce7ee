//! CSV files as users hand them over, through the real path (`tally run`): columns
//! typed from the whole file, timestamps with and without a UTC offset, counts of
//! non-numeric columns.

use std::path::{Path, PathBuf};

use serde_json::Value;

use tally::cli::{self, OutputFormat};

/// A fresh directory with `exposures.csv` (users 1–3 in control, 4–6 in treatment,
/// exposed on 2026-10-01 at 10:00 UTC), the given `facts.csv`, and manifests for one
/// calculation of `metric` (the spec of an Average metric on FactTable `facts`).
fn experiment(name: &str, facts: &str, metric: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-csv-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
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
    let output = cli::run(&[dir.join("manifests.yaml")], OutputFormat::Json)
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

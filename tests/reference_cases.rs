//! Every reference case in `testdata/cases` through the real path:
//! case → Tally resources → plan → SQL → DuckDB → statistics → status, compared with
//! `expected.json` within the tolerances its README states.

mod common;

use std::path::Path;

use serde_json::{Value, json};

use common::{case_dirs, compare_to_expected, testdata_dir};
use tally::api::{DimensionTable, ExposureTable, FactTable, Metric, MetricCalculation};
use tally::plan::{self, Catalog};

fn aggregation(name: &str) -> &'static str {
    match name {
        "sum" => "Sum",
        "count" => "Count",
        "countDistinct" => "CountDistinct",
        "mean" => "Mean",
        "max" => "Max",
        "min" => "Min",
        other => panic!("case uses an unknown aggregation {other}"),
    }
}

fn operator(symbol: &str) -> &'static str {
    match symbol {
        ">" => "GreaterThan",
        ">=" => "GreaterThanOrEqual",
        "<" => "LessThan",
        "<=" => "LessThanOrEqual",
        "==" | "=" => "Equal",
        other => panic!("case uses an unknown operator {other}"),
    }
}

fn table_name(file: &str) -> String {
    file.split('.').next().unwrap_or(file).replace('_', "-")
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "cases"})
}

/// The Tally resources that express a case.
fn resources(case: &Value, data: &Path) -> (Catalog, MetricCalculation) {
    let mut catalog = Catalog::default();
    // As `tally run` does for the files its manifests name.
    catalog
        .local_data_directories
        .push(data.display().to_string());
    let exposure = &case["exposure"];
    catalog.add_exposure_table(
        serde_json::from_value::<ExposureTable>(json!({
            "apiVersion": "tally.dev/v1alpha1", "kind": "ExposureTable",
            "metadata": meta("exposures"),
            "spec": {
                "source": {"files": data.join(exposure["file"].as_str().unwrap()).display().to_string()},
                "entityColumn": exposure["entityColumn"],
                "timestampColumn": exposure["timestampColumn"],
                "variantColumn": exposure["variantColumn"],
            }
        }))
        .unwrap(),
    );

    let metric = &case["metric"];
    let filter = metric.get("filter").cloned();
    let mut measurement = |side: &Value| -> Value {
        let file = side["file"].as_str().unwrap();
        let name = table_name(file);
        let column = side["column"].as_str();
        // One FactTable per file, declaring every column the case measures on it.
        let mut measurements: Vec<Value> = catalog
            .fact_tables
            .get(&name)
            .map(|t| {
                t.spec
                    .measurements
                    .iter()
                    .map(|m| serde_json::to_value(m).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(column) = column
            && !measurements.iter().any(|m| m["name"] == column)
        {
            measurements.push(json!({"name": column}));
        }
        catalog.add_fact_table(
            serde_json::from_value::<FactTable>(json!({
                "apiVersion": "tally.dev/v1alpha1", "kind": "FactTable",
                "metadata": meta(&name),
                "spec": {
                    "source": {"files": data.join(file).display().to_string()},
                    "entityColumn": side["entityColumn"],
                    "timestampColumn": side["timestampColumn"],
                    "measurements": measurements,
                }
            }))
            .unwrap(),
        );
        let mut out = json!({"factTable": name, "aggregation": aggregation(side["aggregation"].as_str().unwrap())});
        if let Some(column) = column {
            out["measurement"] = json!(column);
        }
        if let Some(filter) = &filter {
            out["filter"] = filter.clone();
        }
        if let Some(cap) = metric.get("cap") {
            out["cap"] = cap.clone();
        }
        if let Some(threshold) = metric.get("threshold") {
            out["threshold"] = json!({
                "operator": operator(threshold["operator"].as_str().unwrap()),
                "value": threshold["value"],
            });
        }
        out
    };
    let mut spec = match metric["type"].as_str().unwrap() {
        "average" => {
            json!({"type": "Average", "average": {"measurement": measurement(&metric["measurement"])}})
        }
        "ratio" => json!({"type": "Ratio", "ratio": {
            "numerator": measurement(&metric["numerator"]),
            "denominator": measurement(&metric["denominator"]),
        }}),
        other => panic!("unknown metric type {other}"),
    };
    if let Some(window) = metric.get("window") {
        spec["window"] = window.clone();
    }
    if let Some(vr) = metric.get("varianceReduction") {
        spec["varianceReduction"] = vr.clone();
    }
    catalog.add_metric(
        serde_json::from_value::<Metric>(json!({
            "apiVersion": "tally.dev/v1alpha1", "kind": "Metric",
            "metadata": meta("metric"), "spec": spec,
        }))
        .unwrap(),
    );

    let calc = &case["calculation"];
    let mut split_dimensions = Vec::new();
    for dimension in calc
        .get("splitDimensions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = dimension["name"].as_str().unwrap();
        match dimension["source"].as_str().unwrap() {
            "dimensionTable" => {
                let file = dimension["file"].as_str().unwrap();
                let table = table_name(file);
                catalog.add_dimension_table(
                    serde_json::from_value::<DimensionTable>(json!({
                        "apiVersion": "tally.dev/v1alpha1", "kind": "DimensionTable",
                        "metadata": meta(&table),
                        "spec": {
                            "source": {"files": data.join(file).display().to_string()},
                            "entityColumn": dimension["entityColumn"],
                            "dimensions": [{"name": name, "column": dimension["column"]}],
                        }
                    }))
                    .unwrap(),
                );
                split_dimensions.push(json!({"name": name, "dimensionTable": table}));
            }
            other => panic!("unknown dimension source {other}"),
        }
    }
    let mut mc = json!({
        "apiVersion": "tally.dev/v1alpha1", "kind": "MetricCalculation",
        "metadata": meta(case["name"].as_str().unwrap().replace('_', "-").as_str()),
        "spec": {
            "metric": "metric",
            "exposureTable": "exposures",
            "startTime": calc["startTime"],
            "endTime": calc["endTime"],
            "analysis": {"control": calc["control"]},
            "splitDimensions": split_dimensions,
        }
    });
    if let Some(end) = calc.get("exposureEndTime") {
        mc["spec"]["exposureEndTime"] = end.clone();
    }
    if let Some(groups) = calc.get("exposureGroups") {
        mc["spec"]["exposureGroups"] = groups.clone();
    }
    (catalog, serde_json::from_value(mc).unwrap())
}

#[test]
fn reference_cases_match_expected_results() {
    let cases = case_dirs();
    assert!(
        cases.len() >= 11,
        "expected the shared reference cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for dir in &cases {
        let case: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let data = testdata_dir()
            .join("data")
            .join(case["data"].as_str().unwrap());
        let (catalog, calculation) = resources(&case, &data);
        let resolved = plan::resolve(&calculation, &catalog)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let plan = plan::compile(&resolved);
        let status = tally::cli::run_plan(&plan)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", dir.display(), plan.sql));
        let actual = serde_json::to_value(&status).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for problem in compare_to_expected(&expected, &actual) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every file under `a` has a byte-identical twin under `b`, and no other file is there.
fn tree_differences(a: &Path, b: &Path) -> Vec<String> {
    fn files(root: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(root).unwrap().to_path_buf();
                    out.insert(relative, std::fs::read(&path).unwrap());
                }
            }
        }
        out
    }
    let (left, right) = (files(a), files(b));
    let mut differences = Vec::new();
    for (path, bytes) in &left {
        match right.get(path) {
            None => differences.push(format!("{} only in {}", path.display(), a.display())),
            Some(other) if other != bytes => {
                differences.push(format!("{} differs", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in right.keys().filter(|path| !left.contains_key(*path)) {
        differences.push(format!("{} only in {}", path.display(), b.display()));
    }
    differences
}

/// The repository carries the shared reference data so that a fresh clone tests
/// itself; where the shared folder is beside the repository, the copy must not drift.
#[test]
fn repository_testdata_is_the_shared_copy() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata");
    assert!(repository.join("cases").is_dir(), "testdata/ is missing");
    if !shared.is_dir() {
        println!("SKIPPED: no ../shared/testdata beside the repository to compare with");
        return;
    }
    let differences = tree_differences(&shared, &repository);
    assert!(
        differences.is_empty(),
        "testdata/ differs from ../shared/testdata (copy it again):\n{}",
        differences.join("\n")
    );
}

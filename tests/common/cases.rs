//! The reference cases of `testdata/cases` as Tally resources.

use std::path::Path;

use serde_json::{Value, json};

use tally::api::{DimensionTable, ExposureTable, FactTable, Metric, MetricCalculation};
use tally::plan::Catalog;

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

pub fn table_name(file: &str) -> String {
    file.split('.').next().unwrap_or(file).replace('_', "-")
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "cases"})
}

/// Where a case's tables are read from: a data file's `spec.source`.
pub type SourceOf<'a> = &'a dyn Fn(&str) -> Value;

/// A case's data files as `files` sources under `data`, as `tally run` reads them.
pub fn files_in(data: &Path) -> impl Fn(&str) -> Value + '_ {
    move |file| json!({"files": data.join(file).display().to_string()})
}

/// The Tally resources that express a case, its tables read through `source`.
pub fn resources(case: &Value, data: &Path, source: SourceOf) -> (Catalog, MetricCalculation) {
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
                "source": source(exposure["file"].as_str().unwrap()),
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
                    "source": source(file),
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
                            "source": source(file),
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

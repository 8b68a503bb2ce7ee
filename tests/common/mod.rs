//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cases;
pub mod postgres;

use std::path::PathBuf;

use serde_json::Value;

/// The repository's `testdata/` (a copy of the shared reference data), or
/// `TALLY_TESTDATA`.
pub fn testdata_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TALLY_TESTDATA") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    assert!(
        dir.join("cases").is_dir(),
        "reference data not found at {}: set TALLY_TESTDATA to a copy of it",
        dir.display()
    );
    dir
}

pub fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata_dir().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// How close a figure must be: exact for counts, 1e-9 for sums and moments, 1e-6 for
/// analysis figures (testdata/README.md).
fn tolerance(path: &str) -> Option<f64> {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let is_count = leaf.starts_with("count")
        || leaf == "postCount"
        || leaf == "multipleVariantEntities"
        || path.contains(".counts.");
    if is_count {
        None
    } else if path.starts_with("analysis") {
        Some(1e-6)
    } else {
        Some(1e-9)
    }
}

/// Relative closeness; the sums may also be within 1e-9 absolute near zero, as the
/// README allows. Analysis figures (tiny differences, p-values) are relative only.
fn close(path: &str, expected: f64, actual: f64, tolerance: f64) -> bool {
    let difference = (expected - actual).abs();
    let scale = expected.abs().max(actual.abs());
    difference <= tolerance * scale || (!path.starts_with("analysis") && difference <= 1e-9)
}

fn bucket_key(bucket: &Value) -> String {
    format!("{}|{}", bucket["variant"], bucket["dimensions"])
}

/// Every number in `expected` against `actual`; arrays of buckets and comparisons are
/// matched by key, not position. Returns the mismatches.
pub fn compare_to_expected(expected: &Value, actual: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for section in ["times", "metricResults", "analysis"] {
        compare(section, &expected[section], &actual[section], &mut problems);
    }
    problems
}

fn compare(path: &str, expected: &Value, actual: &Value, problems: &mut Vec<String>) {
    match expected {
        Value::Object(map) => {
            if !actual.is_object() {
                problems.push(format!("{path}: expected an object, found {actual}"));
                return;
            }
            for (key, value) in map {
                compare(&format!("{path}.{key}"), value, &actual[key], problems);
            }
        }
        Value::Array(items) => {
            let Some(actual_items) = actual.as_array() else {
                problems.push(format!("{path}: expected an array, found {actual}"));
                return;
            };
            if actual_items.len() != items.len() {
                problems.push(format!(
                    "{path}: expected {} items, found {}",
                    items.len(),
                    actual_items.len()
                ));
            }
            let keyed = |v: &Value| -> Option<String> {
                if v.get("summaryStats").is_some() {
                    Some(bucket_key(v))
                } else {
                    v.get("variant").map(|variant| variant.to_string())
                }
            };
            for (i, item) in items.iter().enumerate() {
                let found = match keyed(item) {
                    Some(key) => actual_items
                        .iter()
                        .find(|a| keyed(a).as_deref() == Some(&key)),
                    None => actual_items.get(i),
                };
                match found {
                    Some(found) => compare(
                        &format!("{path}[{}]", keyed(item).unwrap_or(i.to_string())),
                        item,
                        found,
                        problems,
                    ),
                    None => problems.push(format!(
                        "{path}: no item matching {}",
                        keyed(item).unwrap_or_default()
                    )),
                }
            }
        }
        Value::Number(n) => {
            let expected = n.as_f64().unwrap_or(f64::NAN);
            let Some(actual) = actual.as_f64() else {
                problems.push(format!("{path}: expected {expected}, found {actual}"));
                return;
            };
            match tolerance(path) {
                None if expected != actual => problems.push(format!(
                    "{path}: expected exactly {expected}, found {actual}"
                )),
                Some(tol) if !close(path, expected, actual, tol) => problems.push(format!(
                    "{path}: expected {expected}, found {actual} (relative tolerance {tol:e})"
                )),
                _ => {}
            }
        }
        Value::String(s) if path.starts_with("times") => {
            let parse = |t: &str| t.parse::<jiff::Timestamp>().ok();
            if parse(s).is_none() || parse(s) != actual.as_str().and_then(parse) {
                problems.push(format!("{path}: expected {s}, found {actual}"));
            }
        }
        other => {
            if other != actual {
                problems.push(format!("{path}: expected {other}, found {actual}"));
            }
        }
    }
}

//! Every reference case in `testdata/cases` through the real path:
//! case → Tally resources → plan → SQL → DuckDB → statistics → status, compared with
//! `expected.json` within the tolerances its README states.

mod common;

use std::path::Path;

use serde_json::Value;

use common::cases::{files_in, resources};
use common::{case_dirs, compare_to_expected, testdata_dir};
use tally::plan;

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
        let (catalog, calculation) = resources(&case, &data, &files_in(&data));
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

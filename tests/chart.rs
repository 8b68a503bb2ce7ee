//! The Helm chart ships the generated CRDs unchanged and the version it is built from.
//! (Rendering, validation and installation are tested in `tests/e2e/tests/chart.rs`.)

use std::path::Path;

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn chart_crds_equal_the_generated_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (generated, chart) = (root.join("crds"), root.join("charts/tally/crds"));
    let fix = "copy them: `cp crds/*.yaml charts/tally/crds/`";
    assert_eq!(
        yaml_files(&chart),
        yaml_files(&generated),
        "charts/tally/crds/ holds other files than crds/; {fix}"
    );
    for name in yaml_files(&generated) {
        let expected = std::fs::read(generated.join(&name)).unwrap();
        let actual = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            expected == actual,
            "charts/tally/crds/{name} differs from crds/{name}; {fix}"
        );
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/tally/Chart.yaml");
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let app_version = chart["appVersion"]
        .as_str()
        .expect("Chart.yaml has an appVersion string");
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "charts/tally/Chart.yaml appVersion must be the tally version (the default image tag)"
    );
}

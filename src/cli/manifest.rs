//! Loading Tally resources from manifest files (`tally run`, `tally sql`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

use crate::api::unknown_fields::first_unknown_field;
use crate::api::{
    API_VERSION, DimensionTable, ExposureTable, FactTable, GROUP, Metric, MetricCalculation,
    ScheduledMetricCalculation, TableSource, Warehouse,
};
use crate::plan::{Catalog, data_access};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: document {document}: invalid YAML: {message}")]
    Yaml {
        path: String,
        document: usize,
        message: String,
    },
    #[error("{path}: {kind}/{name}: {field}: {message}")]
    Invalid {
        path: String,
        kind: String,
        name: String,
        field: String,
        message: String,
    },
    #[error("{path}: {kind}/{name} is defined twice (also in {first})")]
    Duplicate {
        path: String,
        kind: String,
        name: String,
        first: String,
    },
}

/// Everything loaded, by namespace.
#[derive(Debug, Default)]
pub struct Manifests {
    pub catalogs: BTreeMap<String, Catalog>,
    /// Calculations in the order they were found, with the file each came from.
    pub calculations: Vec<(PathBuf, MetricCalculation)>,
    pub schedules: Vec<(PathBuf, ScheduledMetricCalculation)>,
    seen: BTreeMap<(String, String, String), String>,
}

/// Loads every `.yaml`, `.yml` and `.json` file in `paths` (directories recursively,
/// in name order). Resources of other API groups are skipped.
/// Why `name` is not a Kubernetes object name (an RFC 1123 subdomain of at most `max`
/// characters: lowercase letters, digits, '-' and '.', starting and ending with a
/// letter or digit), or `None` when it is one.
pub fn dns_name_problem(name: &str, max: usize) -> Option<String> {
    if name.len() > max {
        return Some(format!("{name:?} is longer than {max} characters"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alphanumeric =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(allowed)
        || !alphanumeric(name.chars().next())
        || !alphanumeric(name.chars().last())
        || name
            .split('.')
            .any(|label| !alphanumeric(label.chars().next()) || !alphanumeric(label.chars().last()))
    {
        return Some(format!(
            "{name:?} is not a valid name: use lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit"
        ));
    }
    None
}

pub fn load(paths: &[PathBuf]) -> Result<Manifests, ManifestError> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut manifests = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ManifestError::Read {
            path: file.display().to_string(),
            message: e.to_string(),
        })?;
        manifests.add_text(&file, &text)?;
    }
    Ok(manifests)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let error = |e: std::io::Error| ManifestError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let metadata = std::fs::metadata(path).map_err(error)?;
    if metadata.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(error)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || is_manifest {
                collect_files(&entry, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Resolves a relative path against the manifest's directory, to an absolute path:
/// DuckDB reads only under absolute data directories.
fn relative_to(manifest: &Path, path: &str) -> String {
    let candidate = Path::new(path);
    if candidate.is_absolute() {
        return path.to_string();
    }
    let base = manifest.parent().unwrap_or(Path::new("."));
    let joined = base.join(candidate);
    std::path::absolute(&joined)
        .map(|absolute| lexically_normal(&absolute))
        .unwrap_or(joined)
        .display()
        .to_string()
}

/// `path` without `.` and with each `..` taking away the component before it: the
/// form data directories are compared in (`manifests/../data` is `data`).
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

impl Manifests {
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        let path = file.display().to_string();
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value: serde_yaml::Value =
                serde::Deserialize::deserialize(document).map_err(|e| ManifestError::Yaml {
                    path: path.clone(),
                    document: index + 1,
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            self.add_document(file, index + 1, value)?;
        }
        Ok(())
    }

    fn add_document(
        &mut self,
        file: &Path,
        document: usize,
        value: serde_yaml::Value,
    ) -> Result<(), ManifestError> {
        let path = file.display().to_string();
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        if api_version.split('/').next() != Some(GROUP) {
            return Ok(());
        }
        let invalid = |field: &str, message: String| ManifestError::Invalid {
            path: path.clone(),
            kind: kind.clone(),
            name: if name.is_empty() {
                format!("(document {document})")
            } else {
                name.clone()
            },
            field: field.to_string(),
            message,
        };
        if api_version != API_VERSION {
            return Err(invalid(
                "apiVersion",
                format!("{api_version} is not served; use {API_VERSION}"),
            ));
        }
        if name.is_empty() {
            return Err(invalid("metadata.name", "is required".into()));
        }
        // What the API server refuses, refused here too: a manifest that runs with
        // `tally run` must apply to a cluster.
        if let Some(problem) = dns_name_problem(&name, 253) {
            return Err(invalid("metadata.name", problem));
        }
        if let Some(namespace) = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            && let Some(problem) = dns_name_problem(namespace, 63).or_else(|| {
                namespace
                    .contains('.')
                    .then(|| "may not contain '.'".to_string())
            })
        {
            return Err(invalid("metadata.namespace", problem));
        }
        // What kubectl's strict field validation refuses: a misspelt field would
        // otherwise be dropped, and a different metric computed without a word.
        if let Ok(object) = serde_json::to_value(&value)
            && let Some((field, known)) = first_unknown_field(&kind, &object)
        {
            return Err(invalid(
                &field,
                format!("unknown field; known here: {}", known.join(", ")),
            ));
        }
        fn typed<T: DeserializeOwned>(
            value: serde_yaml::Value,
            invalid: impl Fn(&str, String) -> ManifestError,
        ) -> Result<T, ManifestError> {
            serde_path_to_error::deserialize(value).map_err(|e| {
                let field = e.path().to_string();
                invalid(&field, e.into_inner().to_string())
            })
        }
        let namespace = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string();
        let key = (namespace.clone(), kind.clone(), name.clone());
        if let Some(first) = self.seen.get(&key) {
            return Err(ManifestError::Duplicate {
                path,
                kind,
                name,
                first: first.clone(),
            });
        }
        self.seen.insert(key, path.clone());
        let catalog = self.catalogs.entry(namespace.clone()).or_default();
        let with_namespace = |meta: &mut kube::api::ObjectMeta| {
            meta.namespace.get_or_insert_with(|| namespace.clone());
        };
        let check_files = |source: &mut TableSource| -> Result<(), ManifestError> {
            if let Some(files) = &source.files {
                let resolved = relative_to(file, files);
                if !data_access::is_glob(&resolved) && !Path::new(&resolved).exists() {
                    return Err(invalid(
                        "spec.source.files",
                        format!("no such file: {resolved}"),
                    ));
                }
                source.files = Some(resolved);
            }
            Ok(())
        };
        // What a person's own manifests name on their own machine may be read.
        if let Some(files) = ["ExposureTable", "FactTable", "DimensionTable"]
            .contains(&kind.as_str())
            .then(|| {
                value
                    .get("spec")?
                    .get("source")?
                    .get("files")?
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
        {
            let directory = data_access::files_directory(&relative_to(file, &files)).to_string();
            if !catalog.local_data_directories.contains(&directory) {
                catalog.local_data_directories.push(directory);
            }
        }
        match kind.as_str() {
            "Warehouse" => {
                let mut r: Warehouse = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                if let Some(db) = r.spec.duckdb.as_mut().and_then(|d| d.database.as_mut()) {
                    *db = relative_to(file, db);
                    if !Path::new(db.as_str()).exists() {
                        return Err(invalid(
                            "spec.duckdb.database",
                            format!("no such file: {db}"),
                        ));
                    }
                }
                catalog.add_warehouse(r);
            }
            "ExposureTable" => {
                let mut r: ExposureTable = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                check_files(&mut r.spec.source)?;
                catalog.add_exposure_table(r);
            }
            "FactTable" => {
                let mut r: FactTable = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                check_files(&mut r.spec.source)?;
                catalog.add_fact_table(r);
            }
            "DimensionTable" => {
                let mut r: DimensionTable = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                check_files(&mut r.spec.source)?;
                catalog.add_dimension_table(r);
            }
            "Metric" => {
                let mut r: Metric = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                catalog.add_metric(r);
            }
            "MetricCalculation" => {
                let mut r: MetricCalculation = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                self.calculations.push((file.to_path_buf(), r));
            }
            "ScheduledMetricCalculation" => {
                let mut r: ScheduledMetricCalculation = typed(value, invalid)?;
                with_namespace(&mut r.metadata);
                self.schedules.push((file.to_path_buf(), r));
            }
            _ => return Err(invalid("kind", format!("{kind} is not a {GROUP} kind"))),
        }
        Ok(())
    }

    /// The file that defined `resource` (`Kind/name`) in `namespace`.
    pub fn file_of(&self, namespace: &str, resource: &str) -> Option<&str> {
        let (kind, name) = resource.split_once('/')?;
        self.seen
            .get(&(namespace.to_string(), kind.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// The catalog of a namespace, if anything was loaded into it.
    pub fn catalog(&self, namespace: &str) -> Option<&Catalog> {
        self.catalogs.get(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_the_api_server_checks_them() {
        for good in ["checkout", "checkout-revenue-2", "a.b-c.d", "0"] {
            assert_eq!(dns_name_problem(good, 253), None, "{good}");
        }
        for bad in [
            "Checkout",
            "checkout_revenue",
            "-a",
            "a-",
            "a..b",
            "a.-b",
            "ä",
            "",
        ] {
            assert!(dns_name_problem(bad, 253).is_some(), "{bad:?}");
        }
        assert!(dns_name_problem(&"a".repeat(254), 253).is_some());
        assert_eq!(dns_name_problem(&"a".repeat(63), 63), None);
    }

    #[test]
    fn tally_run_refuses_a_name_the_api_server_would() {
        let mut manifests = Manifests::default();
        let error = manifests
            .add_text(
                Path::new("m.yaml"),
                "apiVersion: tally.dev/v1alpha1\nkind: Metric\nmetadata: {name: Revenue_Total}\nspec: {type: Average}\n",
            )
            .unwrap_err()
            .to_string();
        assert!(error.contains("metadata.name"), "{error}");
        assert!(error.contains("Revenue_Total"), "{error}");
        let error = manifests
            .add_text(
                Path::new("m.yaml"),
                "apiVersion: tally.dev/v1alpha1\nkind: Metric\nmetadata: {name: revenue, namespace: Team.A}\nspec: {type: Average}\n",
            )
            .unwrap_err()
            .to_string();
        assert!(error.contains("metadata.namespace"), "{error}");
    }
}

//! `tally sql`, `tally plan` and `tally crds`: what the manifests compile to, and the
//! CRDs.

use std::{fmt::Write as _, path::PathBuf};

use kube::ResourceExt;

use super::CliError;
use super::run::compile_all;
use crate::api;
use crate::plan::CalculationPlan;

/// `tally sql`: the SQL of every calculation.
pub fn sql(paths: &[PathBuf], dialect: Option<api::Engine>) -> Result<String, CliError> {
    let mut out = String::new();
    for (calculation, plan) in compile_all(paths, &[], dialect)? {
        let _ = writeln!(
            out,
            "-- MetricCalculation {}\n{};\n",
            calculation.name_any(),
            plan.sql.trim_end()
        );
    }
    Ok(out)
}

/// `tally plan`: every calculation's plan, as the JSON a Job receives.
pub fn plans(paths: &[PathBuf]) -> Result<String, CliError> {
    let plans: Vec<CalculationPlan> = compile_all(paths, &[], None)?
        .into_iter()
        .map(|(_, plan)| plan)
        .collect();
    let mut text = serde_json::to_string_pretty(&plans).unwrap_or_default();
    text.push('\n');
    Ok(text)
}

/// `tally crds`: every CRD as YAML, or one file per kind into a directory.
pub fn crds(output_dir: Option<&PathBuf>) -> Result<String, CliError> {
    let mut all = String::new();
    for crd in api::crds() {
        let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
        match output_dir {
            Some(dir) => {
                let file = dir.join(format!(
                    "{}.yaml",
                    crd.spec.names.singular.clone().unwrap_or_default()
                ));
                std::fs::write(&file, &yaml).map_err(|e| CliError::Write {
                    path: file.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            None => {
                let _ = write!(all, "---\n{yaml}");
            }
        }
    }
    Ok(all)
}

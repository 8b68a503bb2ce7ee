//! `tally run`: every MetricCalculation of the manifests, run in-process on its
//! warehouse, printed for people (a table) or as the status the controller writes.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::CliError;
use super::manifest;
use crate::api::{
    self, Analysis, Effect, MetricCalculation, MetricCalculationStatus, MetricResults,
};
use crate::engine::Cancellation;
use crate::execute;
use crate::job_contract;
use crate::plan::{self, CalculationPlan, Catalog};

/// Loads manifests and compiles every MetricCalculation in them; nothing runs yet, so
/// bad input fails before any output.
/// Compiles every calculation in the manifests; `allowed_directories` are read by
/// every calculation besides its Warehouse's data directories and the directories of
/// the manifests' `files` sources.
/// `dialect` compiles every calculation in that engine's dialect instead of its
/// Warehouse's.
pub fn compile_all(
    paths: &[PathBuf],
    allowed_directories: &[PathBuf],
    dialect: Option<api::Engine>,
) -> Result<Vec<(MetricCalculation, CalculationPlan)>, CliError> {
    let manifests = manifest::load(paths)?;
    if manifests.calculations.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(CliError::NothingToRun(shown.join(", ")));
    }
    let empty = Catalog::default();
    manifests
        .calculations
        .iter()
        .map(|(path, calculation)| {
            let namespace = calculation.namespace().unwrap_or_else(|| "default".into());
            let mut catalog = manifests.catalog(&namespace).unwrap_or(&empty).clone();
            for directory in allowed_directories {
                let directory = std::path::absolute(directory)
                    .unwrap_or_else(|_| directory.clone())
                    .display()
                    .to_string();
                if !catalog.local_data_directories.contains(&directory) {
                    catalog.local_data_directories.push(directory);
                }
            }
            let catalog = &catalog;
            // The file to fix is the one that defines the resource at fault, which
            // need not be the calculation's.
            let mut resolved =
                plan::resolve(calculation, catalog).map_err(|error| CliError::Plan {
                    path: manifests
                        .file_of(&namespace, error.resource())
                        .map(str::to_string)
                        .unwrap_or_else(|| path.display().to_string()),
                    error,
                })?;
            if let Some(engine) = dialect {
                resolved.engine.engine = engine;
            }
            Ok((calculation.clone(), plan::compile(&resolved)))
        })
        .collect()
}

/// Runs one plan in-process and returns the status the controller would write.
pub fn run_plan(plan: &CalculationPlan) -> Result<MetricCalculationStatus, CliError> {
    let mut status = MetricCalculationStatus {
        start_time: Some(Time(Timestamp::now())),
        ..MetricCalculationStatus::default()
    };
    let result = execute::run(plan, &Cancellation::default()).map_err(|error| CliError::Run {
        calculation: plan.calculation.clone(),
        error,
    })?;
    job_contract::complete(
        &mut status,
        Some(plan.sql.clone()),
        result,
        Timestamp::now(),
    );
    Ok(status)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

/// `tally run`: every calculation, output only once all have succeeded.
pub fn run(
    paths: &[PathBuf],
    allowed_directories: &[PathBuf],
    format: OutputFormat,
) -> Result<String, CliError> {
    let plans = compile_all(paths, allowed_directories, None)?;
    let mut outputs = Vec::new();
    for (calculation, plan) in &plans {
        let status = run_plan(plan)?;
        outputs.push((calculation, status));
    }
    Ok(match format {
        OutputFormat::Table => outputs
            .iter()
            .map(|(calculation, status)| render_table(calculation, status))
            .collect::<Vec<_>>()
            .join("\n"),
        OutputFormat::Yaml => outputs
            .iter()
            .map(|(calculation, status)| {
                let object =
                    serde_json::to_value(with_status(calculation, status)).unwrap_or_default();
                format!("---\n{}", super::yaml::to_string(&object))
            })
            .collect(),
        OutputFormat::Json => {
            let items: Vec<MetricCalculation> = outputs
                .iter()
                .map(|(calculation, status)| with_status(calculation, status))
                .collect();
            let mut text = serde_json::to_string_pretty(&items).unwrap_or_default();
            text.push('\n');
            text
        }
    })
}

fn with_status(
    calculation: &MetricCalculation,
    status: &MetricCalculationStatus,
) -> MetricCalculation {
    let mut out = calculation.clone();
    out.status = Some(status.clone());
    out
}

fn number(value: f64) -> String {
    if value == 0.0 || (value.abs() >= 0.001 && value.abs() < 1e7) {
        format!("{value:.4}")
    } else {
        format!("{value:.4e}")
    }
}

fn signed(value: f64) -> String {
    let text = number(value);
    if value >= 0.0 {
        format!("+{text}")
    } else {
        text
    }
}

fn effect_text(effect: &Effect) -> String {
    match (effect.ci_lower, effect.ci_upper) {
        (Some(lower), Some(upper)) => format!(
            "{} [{}, {}]",
            signed(effect.difference),
            signed(lower),
            signed(upper)
        ),
        _ => signed(effect.difference),
    }
}

fn p_value_text(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.0001 => "<0.0001".into(),
        Some(p) => format!("{p:.4}"),
        None => "-".into(),
    }
}

/// The value shown per variant: the mean of an average, the ratio of sums of a ratio.
fn headline(results: &MetricResults, variant: &str) -> Option<f64> {
    let stats = &results
        .metric_bucket_stats
        .iter()
        .find(|b| b.variant == variant && b.dimensions.is_empty())?
        .summary_stats;
    if let Some(a) = &stats.average_summary_stats {
        return a.mean;
    }
    stats
        .ratio_summary_stats
        .as_ref()
        .map(|r| r.numerator_sum / r.denominator_sum)
        .filter(|v| v.is_finite())
}

/// A readable summary of one calculation.
pub fn render_table(calculation: &MetricCalculation, status: &MetricCalculationStatus) -> String {
    let mut out = String::new();
    let spec = &calculation.spec.calculation;
    let _ = writeln!(
        out,
        "MetricCalculation {}/{} — metric {}",
        calculation.namespace().unwrap_or_default(),
        calculation.name_any(),
        spec.metric
    );
    if let Some(times) = &status.times {
        let _ = writeln!(
            out,
            "exposures {} → {}, facts {} → {}",
            times.exposure_start_time.0,
            times.exposure_end_time.0,
            times.fact_start_time.0,
            times.fact_end_time.0
        );
    }
    let (Some(results), Some(analysis)) = (&status.metric_results, &status.analysis) else {
        return out;
    };
    let control = spec.control();
    let counts = entity_counts(analysis);
    let mut rows = vec![[
        "variant".to_string(),
        "entities".to_string(),
        "value".to_string(),
        "effect vs control [95% CI]".to_string(),
        "relative".to_string(),
        "p-value".to_string(),
    ]];
    for (variant, entities) in &counts {
        let value = headline(results, variant)
            .map(number)
            .unwrap_or_else(|| "-".into());
        let comparison = analysis.comparisons.iter().find(|c| &c.variant == variant);
        let (effect, relative, p) = match comparison {
            Some(c) => (
                c.absolute
                    .as_ref()
                    .map(effect_text)
                    .unwrap_or_else(|| "-".into()),
                c.relative
                    .as_ref()
                    .map(|r| format!("{:+.2}%", r.difference * 100.0))
                    .unwrap_or_else(|| "-".into()),
                p_value_text(c.absolute.as_ref().and_then(|a| a.p_value)),
            ),
            None if variant == control => ("(control)".into(), String::new(), String::new()),
            None => ("-".into(), "-".into(), "-".into()),
        };
        rows.push([
            variant.clone(),
            entities.to_string(),
            value,
            effect,
            relative,
            p,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    for warning in warnings(analysis, control) {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

/// Data-quality warnings worth a reader's attention.
/// Entities per variant; an expected variant without any counts 0.
fn entity_counts(analysis: &Analysis) -> BTreeMap<String, i64> {
    analysis
        .sample_ratio_mismatch
        .as_ref()
        .map(|s| s.counts.clone())
        .unwrap_or_default()
}

pub fn warnings(analysis: &Analysis, control: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(srm) = &analysis.sample_ratio_mismatch
        && let Some(p) = srm.p_value
        && p < 0.001
    {
        out.push(format!(
            "sample ratio mismatch (p = {p:.2e}): the variants' entity counts differ from an equal split more than chance explains; check assignment and exposure logging before trusting the effects"
        ));
    }
    if analysis.multiple_variant_entities > 0 {
        out.push(format!(
            "{} entities were exposed to more than one variant and are excluded",
            analysis.multiple_variant_entities
        ));
    }
    let counts = entity_counts(analysis);
    if counts.values().all(|n| *n == 0) {
        // Nothing else is worth saying: every figure is empty.
        out.push(
            "no entity was exposed in the exposure window: check startTime, exposureEndTime, the exposure table's time column and exposureGroups".to_string(),
        );
        return out;
    }
    out.extend(analysis.no_values_warning());
    if counts.get(control).copied().unwrap_or(0) == 0 {
        out.push(format!(
            "no entity in the control variant {control:?}: no effects computed"
        ));
    }
    for (variant, n) in &counts {
        if variant != control && *n == 0 {
            out.push(format!(
                "no entity in the variant {variant:?}: it has no figures"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SampleRatioMismatch;

    fn analysis(counts: &[(&str, i64)]) -> Analysis {
        Analysis {
            comparisons: Vec::new(),
            multiple_variant_entities: 0,
            sample_ratio_mismatch: (!counts.is_empty()).then(|| SampleRatioMismatch {
                counts: counts.iter().map(|(v, n)| (v.to_string(), *n)).collect(),
                p_value: None,
            }),
            entities_without_value: 0,
        }
    }

    #[test]
    fn empty_variants_and_empty_experiments_are_warned_about() {
        let no_one = warnings(&analysis(&[]), "control");
        assert_eq!(no_one.len(), 1);
        assert!(no_one[0].starts_with("no entity was exposed"), "{no_one:?}");
        let all_zero = warnings(&analysis(&[("control", 0), ("treatment", 0)]), "control");
        assert_eq!(all_zero, no_one);

        // An expected control with no entity is counted as 0, and still warned about.
        let empty_control = warnings(&analysis(&[("control", 0), ("treatment", 5)]), "control");
        assert_eq!(
            empty_control,
            ["no entity in the control variant \"control\": no effects computed"]
        );
        let absent_control = warnings(&analysis(&[("treatment", 5)]), "control");
        assert_eq!(absent_control, empty_control);

        let empty_treatment = warnings(
            &analysis(&[("control", 5), ("other", 0), ("treatment", 5)]),
            "control",
        );
        assert_eq!(
            empty_treatment,
            ["no entity in the variant \"other\": it has no figures"]
        );
        assert!(warnings(&analysis(&[("control", 5), ("treatment", 5)]), "control").is_empty());
    }
}

//! `tally bench`: calculation time against a bare scan of the same fact columns.
//!
//! Generates synthetic Parquet (N entities, M facts, two variants) with DuckDB, then
//! times, on the same DuckDB, (a) `SELECT max, sum, max` over the three fact columns
//! the calculation reads (entity, amount, timestamp) and (b) the compiled SQL of an
//! average metric with CUPED and of a ratio metric. The ratio (b)/(a) is the figure of
//! merit; it is printed for M/2 and M facts so its growth with data can be seen.

use std::{fmt::Write as _, path::Path, time::Instant};

use crate::api::DuckDbSettings;
use crate::engine::{self, Cancellation, EngineError, duckdb::Session};
use crate::plan::{self, CalculationPlan, Catalog, quote_literal};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("generating data: {0}")]
    Generate(EngineError),
    #[error("running {what}: {error}")]
    Run { what: String, error: EngineError },
    #[error("building the benchmark's resources: {0}")]
    Resources(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// DuckDB that reads and writes the benchmark's own directory, and nothing else.
fn settings(dir: &Path) -> DuckDbSettings {
    DuckDbSettings {
        data_directories: vec![
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .display()
                .to_string(),
        ],
        ..DuckDbSettings::default()
    }
}

fn sql(dir: &Path, statement: &str) -> Result<(), BenchError> {
    engine::duckdb::run(&settings(dir), statement, &Cancellation::default())
        .map(|_| ())
        .map_err(BenchError::Generate)
}

fn quoted(path: &Path) -> String {
    quote_literal(&path.display().to_string())
}

/// How the synthetic data names entities. DuckDB aggregates dense integer ids into a
/// perfect hash table; any other id takes its general hash aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EntityIds {
    /// 0 to N − 1.
    Integer,
    /// `u000000042`: strings, as most warehouses key users.
    String,
}

impl EntityIds {
    fn sql(self, id: &str) -> String {
        match self {
            EntityIds::Integer => format!("CAST({id} AS BIGINT)"),
            EntityIds::String => format!("'u' || lpad(CAST({id} AS VARCHAR), 9, '0')"),
        }
    }
}

/// Writes exposures (one per entity, over 14 days) and `facts` purchase rows spread
/// over the 14 days before and the 21 days from the experiment's start.
fn generate(dir: &Path, entities: u64, facts: u64, ids: EntityIds) -> Result<(), BenchError> {
    sql(
        dir,
        &format!(
        "COPY (SELECT {id} AS user_id,
                 TIMESTAMP '2026-10-15 00:00:00' + to_microseconds(CAST(hash(i) % 1209600000000 AS BIGINT)) AS ts,
                 CASE WHEN hash(i + 1) % 2 = 0 THEN 'control' ELSE 'treatment' END AS variant
          FROM range({entities}) t(i))
         TO {} (FORMAT parquet)",
        quoted(&dir.join("exposures.parquet")),
        id = ids.sql("i"),
    ))?;
    sql(
        dir,
        &format!(
        "COPY (SELECT {id} AS user_id,
                 TIMESTAMP '2026-10-01 00:00:00' + to_microseconds(CAST(hash(j + 7) % 3024000000000 AS BIGINT)) AS ts,
                 round(CAST(hash(j + 13) % 10000 AS DOUBLE) / 100, 2) AS amount
          FROM range({facts}) t(j))
         TO {} (FORMAT parquet)",
        quoted(&dir.join("facts.parquet")),
        id = ids.sql(&format!("hash(j) % {entities}")),
    ))
}

fn plans(dir: &Path) -> Result<Vec<(&'static str, CalculationPlan)>, BenchError> {
    let yaml = format!(
        r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {{name: exposures, namespace: bench}}
spec:
  source: {{files: {exposures}}}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {{name: purchases, namespace: bench}}
spec:
  source: {{files: {facts}}}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{{name: amount}}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {{name: revenue-cuped, namespace: bench}}
spec:
  type: Average
  average:
    measurement: {{factTable: purchases, measurement: amount, aggregation: Sum}}
  varianceReduction: {{preExposureWindow: 14d}}
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {{name: order-value, namespace: bench}}
spec:
  type: Ratio
  ratio:
    numerator: {{factTable: purchases, measurement: amount, aggregation: Sum}}
    denominator: {{factTable: purchases, aggregation: Count}}
"#,
        exposures = dir.join("exposures.parquet").display(),
        facts = dir.join("facts.parquet").display(),
    );
    let mut manifests = crate::manifest::Manifests::default();
    manifests
        .add_text(&dir.join("bench.yaml"), &yaml)
        .map_err(|e| BenchError::Resources(e.to_string()))?;
    let empty = Catalog::default();
    let catalog = manifests.catalog("bench").unwrap_or(&empty);
    let mut out = Vec::new();
    for (label, metric) in [
        ("average + CUPED", "revenue-cuped"),
        ("ratio", "order-value"),
    ] {
        let calculation: crate::api::MetricCalculation = serde_yaml::from_str(&format!(
            r#"
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {{name: {metric}, namespace: bench}}
spec:
  metric: {metric}
  exposureTable: exposures
  startTime: "2026-10-15T00:00:00Z"
  endTime: "2026-11-05T00:00:00Z"
"#
        ))
        .map_err(|e| BenchError::Resources(e.to_string()))?;
        let resolved = plan::resolve(&calculation, catalog)
            .map_err(|e| BenchError::Resources(e.to_string()))?;
        out.push((label, plan::compile(&resolved)));
    }
    Ok(out)
}

/// A dev build compiles DuckDB at opt-level 1: its times are not the ones users get.
const BUILD: &str = if cfg!(debug_assertions) {
    "dev build (build with --release for representative ratios)"
} else {
    "release build"
};

/// The fastest of `repeat` runs on one open database, in seconds: the first run also
/// pays for reading the Parquet metadata and growing the engine's memory.
fn best_of(session: &Session, repeat: u32, what: &str, statement: &str) -> Result<f64, BenchError> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        session
            .query(statement, &Cancellation::default())
            .map_err(|error| BenchError::Run {
                what: what.to_string(),
                error,
            })?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn run(
    dir: &Path,
    entities: u64,
    facts: u64,
    repeat: u32,
    ids: EntityIds,
) -> Result<String, BenchError> {
    let mut report = String::new();
    let _ = writeln!(
        report,
        "tally bench: {entities} entities ({ids:?} ids), two variants; best of {repeat} runs; DuckDB with {} threads; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        BUILD
    );
    let _ = writeln!(
        report,
        "{:>12}  {:<16} {:>10} {:>10} {:>8} {:>12}",
        "facts", "metric", "scan s", "metric s", "ratio", "ns/fact"
    );
    for size in [facts / 2, facts] {
        let sub = dir.join(format!("facts-{size}"));
        std::fs::create_dir_all(&sub).map_err(|e| BenchError::Io {
            path: sub.display().to_string(),
            message: e.to_string(),
        })?;
        generate(&sub, entities, size, ids)?;
        let session = Session::open(&settings(&sub)).map_err(|error| BenchError::Run {
            what: "opening DuckDB".to_string(),
            error,
        })?;
        let scan = best_of(
            &session,
            repeat,
            "the bare scan",
            // `count(user_id)` would not do: with no nulls in the file's statistics
            // DuckDB answers it as `count(*)` and never reads the column.
            &format!(
                "SELECT max(user_id), sum(amount), CAST(max(ts) AS VARCHAR) FROM read_parquet({})",
                quoted(&sub.join("facts.parquet"))
            ),
        )?;
        for (label, plan) in plans(&sub)? {
            let seconds = best_of(&session, repeat, label, &plan.sql)?;
            let _ = writeln!(
                report,
                "{size:>12}  {label:<16} {scan:>10.3} {seconds:>10.3} {:>7.2}x {:>12.1}",
                seconds / scan,
                seconds * 1e9 / size as f64
            );
        }
        drop(session);
        std::fs::remove_dir_all(&sub).ok();
    }
    Ok(report)
}

//! `tally bench`: calculation time against a bare scan of the same fact columns.
//!
//! Generates synthetic Parquet (N entities, M facts, two variants) with DuckDB, then
//! times, on the same DuckDB, (a) `SELECT max, sum, max` over the three fact columns
//! the calculation reads (entity, amount, timestamp) and (b) the compiled SQL of an
//! average metric with CUPED and of a ratio metric. The ratio (b)/(a) is the figure of
//! merit; it is printed for M/2 and M facts so its growth with data can be seen.
//! Beside them, the facts summed per entity (a `GROUP BY` of the fact table alone):
//! the least a calculation must do, so its ratio is the engine's floor.
//!
//! With a [`PostgresTarget`], the same data is also loaded into PostgreSQL (schema
//! `tally_bench`) and timed there the same way, its ratio printed beside DuckDB's.

use std::{fmt::Write as _, path::Path, time::Instant};

use crate::api::DuckDbSettings;
use crate::engine::{self, Cancellation, EngineError, QueryResult, duckdb::Session};
use crate::plan::{self, CalculationPlan, Catalog, EngineSettings, quote_literal};

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
    #[error("loading the data into PostgreSQL: {0}")]
    Load(String),
}

/// The PostgreSQL server `--engine postgres` loads the data into; the password is
/// `PGPASSWORD`'s.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

/// The schema the benchmark's tables are created in.
const PG_SCHEMA: &str = "tally_bench";

impl PostgresTarget {
    fn warehouse(&self) -> String {
        format!(
            "apiVersion: tally.dev/v1alpha1\nkind: Warehouse\nmetadata: {{name: postgres, namespace: bench}}\n\
             spec:\n  engine: postgres\n  postgres: {{host: {:?}, port: {}, database: {:?}, user: {:?}, sslMode: disable}}\n",
            self.host, self.port, self.database, self.user
        )
    }

    /// Creates the tables and copies the generated CSV files into them.
    fn load(&self, dir: &Path, ids: EntityIds) -> Result<(), BenchError> {
        let load = |e: tokio_postgres::Error| BenchError::Load(e.to_string());
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .options("-c TimeZone=UTC");
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
        let id = match ids {
            EntityIds::Integer => "BIGINT",
            EntityIds::String => "TEXT",
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::Load(e.to_string()))?;
        runtime.block_on(async {
            use futures::SinkExt;
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(load)?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA};
                     DROP TABLE IF EXISTS {PG_SCHEMA}.exposures, {PG_SCHEMA}.facts;
                     CREATE TABLE {PG_SCHEMA}.exposures (user_id {id}, ts TIMESTAMPTZ, variant TEXT);
                     CREATE TABLE {PG_SCHEMA}.facts (user_id {id}, ts TIMESTAMPTZ, amount DOUBLE PRECISION);"
                ))
                .await
                .map_err(load)?;
            for table in ["exposures", "facts"] {
                let path = dir.join(format!("{table}.csv"));
                let io = |e: std::io::Error| BenchError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                };
                let mut file = std::fs::File::open(&path).map_err(io)?;
                let sink = client
                    .copy_in(&format!(
                        "COPY {PG_SCHEMA}.{table} FROM STDIN (FORMAT csv, HEADER true)"
                    ))
                    .await
                    .map_err(load)?;
                futures::pin_mut!(sink);
                loop {
                    let mut chunk = vec![0; 8 << 20];
                    let read = std::io::Read::read(&mut file, &mut chunk).map_err(io)?;
                    if read == 0 {
                        break;
                    }
                    chunk.truncate(read);
                    sink.send(std::io::Cursor::new(chunk)).await.map_err(load)?;
                }
                sink.finish().await.map_err(load)?;
                client
                    .batch_execute(&format!("ANALYZE {PG_SCHEMA}.{table}"))
                    .await
                    .map_err(load)?;
            }
            Ok(())
        })
    }
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
/// over the 14 days before and the 21 days from the experiment's start, as Parquet
/// and, for a load elsewhere, as CSV.
fn generate(
    dir: &Path,
    entities: u64,
    facts: u64,
    ids: EntityIds,
    csv: bool,
) -> Result<(), BenchError> {
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
    ))?;
    if csv {
        for table in ["exposures", "facts"] {
            sql(
                dir,
                &format!(
                    "COPY (SELECT * FROM read_parquet({})) TO {} (HEADER)",
                    quoted(&dir.join(format!("{table}.parquet"))),
                    quoted(&dir.join(format!("{table}.csv")))
                ),
            )?;
        }
    }
    Ok(())
}

/// The benchmark's calculations, on the Parquet files or, with a target, on its tables.
fn plans(
    dir: &Path,
    postgres: Option<&PostgresTarget>,
) -> Result<Vec<(&'static str, CalculationPlan)>, BenchError> {
    let (exposures, facts, warehouse) = match postgres {
        None => (
            format!("files: {}", dir.join("exposures.parquet").display()),
            format!("files: {}", dir.join("facts.parquet").display()),
            String::new(),
        ),
        Some(target) => (
            format!("table: {PG_SCHEMA}.exposures"),
            format!("table: {PG_SCHEMA}.facts"),
            format!("---\n{}", target.warehouse()),
        ),
    };
    let in_warehouse = if postgres.is_some() {
        "\n  warehouse: postgres"
    } else {
        ""
    };
    let yaml = format!(
        r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {{name: exposures, namespace: bench}}
spec:{in_warehouse}
  source: {{{exposures}}}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {{name: purchases, namespace: bench}}
spec:{in_warehouse}
  source: {{{facts}}}
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
{warehouse}"#,
    );
    let mut manifests = super::manifest::Manifests::default();
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
fn best_of(
    query: &dyn Fn(&str) -> Result<QueryResult, EngineError>,
    repeat: u32,
    what: &str,
    statement: &str,
) -> Result<f64, BenchError> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        query(statement).map_err(|error| BenchError::Run {
            what: what.to_string(),
            error,
        })?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One engine's times at one size: the bare scan, the facts summed per entity (the
/// least any calculation must do: it joins them to the entities and aggregates them
/// per entity), and each metric.
struct Timings {
    scan: f64,
    per_entity: f64,
    metrics: Vec<(&'static str, f64)>,
}

/// The facts' amounts summed per entity, and the groups counted: `facts` is the
/// engine's name of the fact table.
fn per_entity_sql(facts: &str) -> String {
    format!(
        "SELECT count(*) AS groups, sum(total) AS total FROM (SELECT user_id, sum(amount) AS total FROM {facts} GROUP BY user_id) AS per_entity"
    )
}

fn time_duckdb(dir: &Path, repeat: u32) -> Result<Timings, BenchError> {
    let session = Session::open(&settings(dir)).map_err(|error| BenchError::Run {
        what: "opening DuckDB".to_string(),
        error,
    })?;
    let query = |statement: &str| session.query(statement, &Cancellation::default());
    let scan = best_of(
        &query,
        repeat,
        "the bare scan",
        // `count(user_id)` would not do: with no nulls in the file's statistics
        // DuckDB answers it as `count(*)` and never reads the column.
        &format!(
            "SELECT max(user_id), sum(amount), CAST(max(ts) AS VARCHAR) FROM read_parquet({})",
            quoted(&dir.join("facts.parquet"))
        ),
    )?;
    let per_entity = best_of(
        &query,
        repeat,
        "the per-entity sum",
        &per_entity_sql(&format!(
            "read_parquet({})",
            quoted(&dir.join("facts.parquet"))
        )),
    )?;
    let mut metrics = Vec::new();
    for (label, plan) in plans(dir, None)? {
        metrics.push((label, best_of(&query, repeat, label, &plan.sql)?));
    }
    Ok(Timings {
        scan,
        per_entity,
        metrics,
    })
}

fn time_postgres(
    dir: &Path,
    repeat: u32,
    target: &PostgresTarget,
    ids: EntityIds,
) -> Result<Timings, BenchError> {
    target.load(dir, ids)?;
    let plans = plans(dir, Some(target))?;
    let engine: EngineSettings = plans
        .first()
        .map(|(_, plan)| plan.engine.clone())
        .ok_or_else(|| BenchError::Resources("no calculation".into()))?;
    let session =
        engine::postgres::Session::open(&engine, &Cancellation::default()).map_err(|error| {
            BenchError::Run {
                what: "connecting to PostgreSQL".to_string(),
                error,
            }
        })?;
    let query = |statement: &str| session.query(statement, &Cancellation::default());
    let scan = best_of(
        &query,
        repeat,
        "the bare scan on PostgreSQL",
        &format!(
            "SELECT max(user_id) AS a, sum(amount) AS b, CAST(max(ts) AS TEXT) AS c FROM {PG_SCHEMA}.facts"
        ),
    )?;
    let per_entity = best_of(
        &query,
        repeat,
        "the per-entity sum on PostgreSQL",
        &per_entity_sql(&format!("{PG_SCHEMA}.facts")),
    )?;
    let mut metrics = Vec::new();
    for (label, plan) in &plans {
        metrics.push((*label, best_of(&query, repeat, label, &plan.sql)?));
    }
    Ok(Timings {
        scan,
        per_entity,
        metrics,
    })
}

pub fn run(
    dir: &Path,
    entities: u64,
    facts: u64,
    repeat: u32,
    ids: EntityIds,
    postgres: Option<&PostgresTarget>,
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
    let _ = write!(
        report,
        "{:>12}  {:<16} {:>10} {:>10} {:>8} {:>12}",
        "facts", "metric", "scan s", "metric s", "ratio", "ns/fact"
    );
    if postgres.is_some() {
        let _ = write!(
            report,
            "  {:>10} {:>10} {:>8} {:>10}",
            "pg scan s", "pg metric", "pg ratio", "pg/duckdb"
        );
    }
    report.push('\n');
    for size in [facts / 2, facts] {
        let sub = dir.join(format!("facts-{size}"));
        std::fs::create_dir_all(&sub).map_err(|e| BenchError::Io {
            path: sub.display().to_string(),
            message: e.to_string(),
        })?;
        generate(&sub, entities, size, ids, postgres.is_some())?;
        let duckdb = time_duckdb(&sub, repeat)?;
        let on_postgres = postgres
            .map(|target| time_postgres(&sub, repeat, target, ids))
            .transpose()?;
        for (i, (label, seconds)) in duckdb.metrics.iter().enumerate() {
            let ratio = seconds / duckdb.scan;
            let _ = write!(
                report,
                "{size:>12}  {label:<16} {:>10.3} {seconds:>10.3} {ratio:>7.2}x {:>12.1}",
                duckdb.scan,
                seconds * 1e9 / size as f64
            );
            if let Some((_, pg_seconds)) = on_postgres.as_ref().and_then(|pg| pg.metrics.get(i))
                && let Some(pg) = &on_postgres
            {
                let pg_ratio = pg_seconds / pg.scan;
                let _ = write!(
                    report,
                    "  {:>10.3} {pg_seconds:>10.3} {pg_ratio:>7.2}x {:>9.2}x",
                    pg.scan,
                    pg_ratio / ratio
                );
            }
            report.push('\n');
        }
        let _ = write!(
            report,
            "{size:>12}  {:<16} {:>10} {:>10.3} {:>7.2}x",
            "per-entity sum",
            "",
            duckdb.per_entity,
            duckdb.per_entity / duckdb.scan
        );
        if let Some(pg) = &on_postgres {
            let _ = write!(
                report,
                "{:>13}  {:>10} {:>10.3} {:>7.2}x {:>9.2}x",
                "",
                "",
                pg.per_entity,
                pg.per_entity / pg.scan,
                (pg.per_entity / pg.scan) / (duckdb.per_entity / duckdb.scan)
            );
        }
        report.push('\n');
        std::fs::remove_dir_all(&sub).ok();
    }
    Ok(report)
}
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum BenchEngine {
    Duckdb,
    Postgres,
}

/// `tally bench`: the data in `dir` (default: under the system temp dir), timed on
/// DuckDB and, with `--engine postgres`, on `postgres` too.
pub fn command(
    dir: Option<std::path::PathBuf>,
    entities: u64,
    facts: u64,
    repeat: u32,
    ids: EntityIds,
    engine: BenchEngine,
    postgres: PostgresTarget,
) -> Result<String, super::CliError> {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("tally-bench"));
    let postgres = (engine == BenchEngine::Postgres).then_some(postgres);
    Ok(run(&dir, entities, facts, repeat, ids, postgres.as_ref())?)
}

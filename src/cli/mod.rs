//! The `tally` command line: one file per command group. `run` (and `sql`, `plan`,
//! `crds` in `inspect`) need no cluster; `controller` and `worker` start the operator
//! and a calculation Job's entrypoint; `annotate` asks a cluster to cancel, resume or
//! retrigger; `bench` times calculations. `manifest` reads manifests from files and
//! `yaml` prints results.

pub mod annotate;
pub mod bench;
mod controller;
mod inspect;
pub mod manifest;
mod run;
mod worker;
pub mod yaml;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

pub use inspect::{crds, plans, sql};
pub use run::{OutputFormat, compile_all, render_table, run, run_plan, warnings};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("{path}: {error}")]
    Plan {
        path: String,
        error: crate::plan::PlanError,
    },
    #[error("{calculation}: {error}")]
    Run {
        calculation: String,
        error: crate::execute::RunError,
    },
    #[error("no MetricCalculation found in {0}")]
    NothingToRun(String),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    #[error("could not write {path}: {message}")]
    Write { path: String, message: String },
}

/// Tally: experiment metrics on Kubernetes.
#[derive(Parser)]
#[command(name = "tally", version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run every MetricCalculation in the manifests on its warehouse (embedded DuckDB by
    /// default) and print the results. No cluster needed.
    Run {
        /// Manifest files or directories (multi-document YAML).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// `table` for people; `yaml`/`json` print each calculation with the status the
        /// controller writes.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        /// A directory `sql` sources and filters may read files from. DuckDB reads
        /// only under the Warehouses' `dataDirectories` and the directories of the
        /// manifests' `files` sources, as in a cluster; repeat to allow several.
        #[arg(long = "allow-dir", value_name = "DIR")]
        allow_dirs: Vec<PathBuf>,
    },
    /// Print the SQL every MetricCalculation in the manifests compiles to.
    Sql {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The SQL dialect; default: that of each calculation's Warehouse.
        #[arg(long, value_enum)]
        dialect: Option<Dialect>,
    },
    /// Time calculations against a bare scan of the same data (synthetic Parquet).
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        entities: u64,
        /// Fact rows; the benchmark also runs half as many.
        #[arg(long, default_value_t = 20_000_000)]
        facts: u64,
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// Entity ids of the synthetic data.
        #[arg(long, value_enum, default_value = "integer")]
        ids: bench::EntityIds,
        /// Where to write the data (default: a directory under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also load the data into PostgreSQL and time it there, beside DuckDB.
        #[arg(long, value_enum, default_value = "duckdb")]
        engine: bench::BenchEngine,
        /// The PostgreSQL server of `--engine postgres` (password: PGPASSWORD). Its
        /// user must be able to create the schema `tally_bench`.
        #[arg(long, default_value = "127.0.0.1")]
        pg_host: String,
        #[arg(long, default_value_t = 5432)]
        pg_port: u16,
        #[arg(long, default_value = "postgres")]
        pg_database: String,
        #[arg(long, default_value = "postgres")]
        pg_user: String,
    },
    /// Print the plan of every MetricCalculation as JSON: what a calculation's Job
    /// receives in TALLY_PLAN.
    Plan {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the plan in TALLY_PLAN and write its result to the ConfigMap of the Job
    /// TALLY_JOB_NAME in TALLY_NAMESPACE (the entrypoint of calculation Jobs).
    Worker,
    /// Run the operator against the cluster in KUBECONFIG or the in-cluster config.
    Controller {
        /// The image of calculation Jobs, unless their Warehouse sets one.
        #[arg(long, env = "TALLY_WORKER_IMAGE")]
        worker_image: Option<String>,
        /// The service account of calculation Jobs, unless their Warehouse sets one.
        #[arg(long, env = "TALLY_WORKER_SERVICE_ACCOUNT")]
        worker_service_account: Option<String>,
        /// The namespaces to reconcile (comma-separated or repeated), each watched on
        /// its own so that RBAC may grant the controller only these; every namespace
        /// when none is given.
        #[arg(long, env = "TALLY_NAMESPACES", value_delimiter = ',', value_parser = controller::namespace_name)]
        namespaces: Vec<String>,
        /// How many objects of each kind are reconciled at once; the rest wait in the
        /// queue. Bounds the controller's memory during a burst.
        #[arg(long, env = "TALLY_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// The shortest interval a schedule may ask for between runs (e.g. 1m, 30s):
        /// a shorter one is the schedule's error, not a flood of Jobs.
        #[arg(long, env = "TALLY_MIN_SCHEDULE_INTERVAL", default_value = "1m")]
        min_schedule_interval: crate::api::PositiveDuration,
        #[arg(long, value_enum, default_value = "text")]
        log_format: controller::LogFormat,
        #[command(flatten)]
        election: controller::ElectionArgs,
        #[command(flatten)]
        policy: Box<controller::PolicyArgs>,
        #[command(flatten)]
        resources: Box<controller::WorkerResourceArgs>,
        /// Serve /healthz, /readyz and /metrics (Prometheus) on this address: HOST:PORT,
        /// or :PORT for every interface.
        #[arg(long, env = "TALLY_HTTP_ADDRESS")]
        http_address: Option<crate::controller::telemetry::ListenAddress>,
    },
    /// Cancel a calculation or a schedule (sets tally.dev/cancel): `mc/NAME` or `smc/NAME`.
    Cancel {
        /// KIND/NAME, e.g. mc/checkout-conversion or smc/daily-revenue.
        target: String,
        /// Default: the namespace of the kubeconfig context.
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Resume a cancelled schedule (sets tally.dev/resume): `smc/NAME`.
    Resume {
        target: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Recompute a schedule's newest run as a new iteration that supersedes it (sets
    /// tally.dev/retrigger): `smc/NAME`.
    Retrigger {
        target: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Print the CustomResourceDefinitions as YAML (or write one file per kind).
    Crds {
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Dialect {
    Duckdb,
    Postgres,
}

/// Runs the command the arguments name.
pub fn main() -> ExitCode {
    match Args::parse().command {
        Command::Run {
            files,
            output,
            allow_dirs,
        } => print(run(&files, &allow_dirs, output)),
        Command::Sql { files, dialect } => print(sql(
            &files,
            dialect.map(|d| match d {
                Dialect::Duckdb => crate::api::Engine::DuckDb,
                Dialect::Postgres => crate::api::Engine::Postgres,
            }),
        )),
        Command::Plan { files } => print(plans(&files)),
        Command::Crds { output_dir } => print(crds(output_dir.as_ref())),
        Command::Bench {
            entities,
            facts,
            repeat,
            ids,
            dir,
            engine,
            pg_host,
            pg_port,
            pg_database,
            pg_user,
        } => print(bench::command(
            dir,
            entities,
            facts,
            repeat,
            ids,
            engine,
            bench::PostgresTarget {
                host: pg_host,
                port: pg_port,
                database: pg_database,
                user: pg_user,
            },
        )),
        Command::Worker => worker::command(),
        Command::Controller {
            worker_image,
            worker_service_account,
            namespaces,
            concurrency,
            min_schedule_interval,
            log_format,
            election,
            policy,
            resources,
            http_address,
        } => controller::command(
            worker_image,
            worker_service_account,
            resources.requirements(),
            crate::controller::Limits {
                concurrency,
                min_schedule_interval: min_schedule_interval.as_signed(),
            },
            crate::controller::Scope::of(&namespaces),
            log_format,
            election,
            policy,
            http_address,
        ),
        Command::Cancel { target, namespace } => {
            annotate::command(&target, namespace, annotate::Request::Cancel)
        }
        Command::Resume { target, namespace } => {
            annotate::command(&target, namespace, annotate::Request::Resume)
        }
        Command::Retrigger { target, namespace } => {
            annotate::command(&target, namespace, annotate::Request::Retrigger)
        }
    }
}

/// Prints a command's output, or its error.
fn print(output: Result<String, CliError>) -> ExitCode {
    match output {
        Ok(text) => {
            use std::io::Write;
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                // A reader that stops early (`| head`) is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: writing the output: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime of the commands that talk to a cluster.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            None
        }
    }
}

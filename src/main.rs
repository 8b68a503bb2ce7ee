use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use tally::cli::{self, OutputFormat};

/// Tally: experiment metrics on Kubernetes.
#[derive(Parser)]
#[command(name = "tally", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        ids: tally::bench::EntityIds,
        /// Where to write the data (default: a directory under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also load the data into PostgreSQL and time it there, beside DuckDB.
        #[arg(long, value_enum, default_value = "duckdb")]
        engine: BenchEngine,
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
        #[arg(long, env = "TALLY_NAMESPACES", value_delimiter = ',', value_parser = namespace_name)]
        namespaces: Vec<String>,
        /// How many objects of each kind are reconciled at once; the rest wait in the
        /// queue. Bounds the controller's memory during a burst.
        #[arg(long, env = "TALLY_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// The shortest interval a schedule may ask for between runs (e.g. 1m, 30s):
        /// a shorter one is the schedule's error, not a flood of Jobs.
        #[arg(long, env = "TALLY_MIN_SCHEDULE_INTERVAL", default_value = "1m")]
        min_schedule_interval: tally::api::PositiveDuration,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        #[command(flatten)]
        election: ElectionArgs,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
        #[command(flatten)]
        resources: Box<WorkerResourceArgs>,
        /// Serve /healthz, /readyz and /metrics (Prometheus) on this address: HOST:PORT,
        /// or :PORT for every interface.
        #[arg(long, env = "TALLY_HTTP_ADDRESS")]
        http_address: Option<tally::controller::telemetry::ListenAddress>,
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

/// What a Warehouse's `job` settings may ask of calculation Jobs, which the controller
/// creates with its own rights.
#[derive(clap::Args)]
struct PolicyArgs {
    /// An image repository (no tag) a Warehouse's job.image may name, besides the
    /// worker image's; repeat for several.
    #[arg(long = "allowed-worker-image-repository", value_name = "REPOSITORY")]
    image_repositories: Vec<String>,
    /// A ServiceAccount a Warehouse's job.serviceAccountName may name, besides the
    /// worker's; repeat for several.
    #[arg(long = "allowed-worker-service-account", value_name = "NAME")]
    service_accounts: Vec<String>,
    /// A volume type (configMap, secret, persistentVolumeClaim, …) a Warehouse's
    /// job.volumes may use; repeat for several. Default: configMap, secret, emptyDir,
    /// persistentVolumeClaim, csi, projected, downwardAPI. hostPath is never allowed.
    #[arg(long = "allowed-volume-type", value_name = "TYPE")]
    volume_types: Vec<String>,
    /// A node label a Warehouse's job.nodeSelector may select on; repeat for several.
    #[arg(long = "allowed-node-selector-key", value_name = "LABEL")]
    node_selector_keys: Vec<String>,
    /// A taint key a Warehouse's job.tolerations may tolerate; repeat for several.
    #[arg(long = "allowed-toleration-key", value_name = "KEY")]
    toleration_keys: Vec<String>,
}

impl PolicyArgs {
    fn policy(self) -> tally::controller::JobPolicy {
        let defaults = tally::controller::JobPolicy::default();
        tally::controller::JobPolicy {
            image_repositories: self.image_repositories,
            service_accounts: self.service_accounts,
            volume_types: if self.volume_types.is_empty() {
                defaults.volume_types
            } else {
                self.volume_types
            },
            node_selector_keys: self.node_selector_keys,
            toleration_keys: self.toleration_keys,
        }
    }
}

/// The worker container's requests and limits, unless a Warehouse sets
/// `job.resources`. An empty value leaves that one out. DuckDB's `memory_limit` and
/// `threads` follow the limits.
#[derive(clap::Args)]
struct WorkerResourceArgs {
    #[arg(long, env = "TALLY_WORKER_CPU_REQUEST", default_value = tally::controller::DEFAULT_CPU_REQUEST)]
    worker_cpu_request: String,
    #[arg(long, env = "TALLY_WORKER_MEMORY_REQUEST", default_value = tally::controller::DEFAULT_MEMORY_REQUEST)]
    worker_memory_request: String,
    #[arg(long, env = "TALLY_WORKER_CPU_LIMIT", default_value = "")]
    worker_cpu_limit: String,
    #[arg(long, env = "TALLY_WORKER_MEMORY_LIMIT", default_value = tally::controller::DEFAULT_MEMORY_LIMIT)]
    worker_memory_limit: String,
}

impl WorkerResourceArgs {
    fn requirements(&self) -> k8s_openapi::api::core::v1::ResourceRequirements {
        tally::controller::resource_requirements(
            &self.worker_cpu_request,
            &self.worker_memory_request,
            &self.worker_cpu_limit,
            &self.worker_memory_limit,
        )
    }
}

/// A namespace name, as the API server requires it.
fn namespace_name(value: &str) -> Result<String, String> {
    match tally::manifest::dns_name_problem(value, 63) {
        None if !value.contains('.') => Ok(value.to_string()),
        None => Err(format!(
            "{value:?} is not a namespace name: it may not contain '.'"
        )),
        Some(problem) => Err(problem),
    }
}

/// Leader election, so that several replicas of the controller can run.
#[derive(clap::Args)]
struct ElectionArgs {
    /// Reconcile only while holding the leader election Lease; without it, exactly one
    /// controller may run against a cluster.
    #[arg(long)]
    leader_elect: bool,
    /// The Lease's name.
    #[arg(long, default_value = "tally-controller")]
    leader_election_lease: String,
    /// The Lease's namespace (default: the Pod's, else the kubeconfig context's).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Seconds a leader's Lease stays valid unrenewed: how long the other replicas
    /// wait after a leader dies without releasing it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    leader_election_lease_duration: u64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum BenchEngine {
    Duckdb,
    Postgres,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dialect {
    Duckdb,
    Postgres,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Worker => return worker(),
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
        } => {
            return controller(
                worker_image,
                worker_service_account,
                resources.requirements(),
                tally::controller::Limits {
                    concurrency,
                    min_schedule_interval: min_schedule_interval.as_signed(),
                },
                tally::controller::Scope::of(&namespaces),
                log_format,
                election,
                policy,
                http_address,
            );
        }
        Command::Cancel { target, namespace } => {
            return annotate(&target, namespace, tally::annotate::Request::Cancel);
        }
        Command::Resume { target, namespace } => {
            return annotate(&target, namespace, tally::annotate::Request::Resume);
        }
        Command::Retrigger { target, namespace } => {
            return annotate(&target, namespace, tally::annotate::Request::Retrigger);
        }
        _ => {}
    }
    let output = match args.command {
        Command::Run {
            files,
            output,
            allow_dirs,
        } => cli::run(&files, &allow_dirs, output),
        Command::Sql { files, dialect } => cli::sql(
            &files,
            dialect.map(|d| match d {
                Dialect::Duckdb => tally::api::Engine::DuckDb,
                Dialect::Postgres => tally::api::Engine::Postgres,
            }),
        ),
        Command::Crds { output_dir } => cli::crds(output_dir.as_ref()),
        Command::Plan { files } => cli::plans(&files),
        Command::Worker
        | Command::Controller { .. }
        | Command::Cancel { .. }
        | Command::Resume { .. }
        | Command::Retrigger { .. } => unreachable!("handled above"),
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
        } => {
            let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("tally-bench"));
            let postgres =
                (engine == BenchEngine::Postgres).then_some(tally::bench::PostgresTarget {
                    host: pg_host,
                    port: pg_port,
                    database: pg_database,
                    user: pg_user,
                });
            tally::bench::run(&dir, entities, facts, repeat, ids, postgres.as_ref())
                .map_err(cli::CliError::from)
        }
    };
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

fn worker() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tally::worker::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            runtime.block_on(tally::worker::report_failure(&error));
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn controller(
    image: Option<String>,
    service_account: Option<String>,
    worker_resources: k8s_openapi::api::core::v1::ResourceRequirements,
    limits: tally::controller::Limits,
    scopes: Vec<tally::controller::Scope>,
    format: LogFormat,
    election: ElectionArgs,
    policy: Box<PolicyArgs>,
    http_address: Option<tally::controller::telemetry::ListenAddress>,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("error: connecting to the cluster: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut defaults = tally::controller::JobDefaults::default();
        if let Some(image) = image {
            defaults.image = image;
        }
        defaults.service_account_name = service_account;
        defaults.policy = policy.policy();
        defaults.resources = worker_resources;
        let stop = tally::controller::Stop::on_signal();
        let metrics = std::sync::Arc::new(tally::controller::telemetry::Metrics::default());
        if let Some(address) = http_address {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // Reconciling goes on without it; the kubelet's probes will report it.
                if let Err(error) = tally::controller::telemetry::serve(address, metrics).await {
                    tracing::error!(%error, "cannot serve /healthz, /readyz and /metrics");
                }
            });
        }
        tracing::info!(worker_image = %defaults.image, "tally controller starting");
        if election.leader_elect {
            let election = tally::controller::leader::Election {
                namespace: election
                    .leader_election_namespace
                    .unwrap_or_else(|| client.default_namespace().to_string()),
                lease: election.leader_election_lease,
                identity: tally::controller::leader::identity(
                    &std::env::var("POD_NAME")
                        .or_else(|_| std::env::var("HOSTNAME"))
                        .unwrap_or_else(|_| "tally-controller".to_string()),
                ),
                lease_duration: Duration::from_secs(election.leader_election_lease_duration),
            };
            if let Err(error) = tally::controller::run_elected(
                client, defaults, limits, scopes, election, stop, metrics,
            )
            .await
            {
                tracing::error!(%error, "tally controller stopped");
                return ExitCode::FAILURE;
            }
        } else {
            tally::controller::run(client, defaults, limits, scopes, stop, metrics).await;
        }
        tracing::info!("tally controller stopped");
        ExitCode::SUCCESS
    });
    // Watches still waiting on the network must not hold the exit up.
    runtime.shutdown_background();
    code
}

fn annotate(
    target: &str,
    namespace: Option<String>,
    request: tally::annotate::Request,
) -> ExitCode {
    // A typo fails here, before any cluster is contacted.
    let annotation = match tally::annotate::prepare(target, request) {
        Ok(annotation) => annotation,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let result = match tally::annotate::Cluster::connect().await {
            Ok(cluster) => tally::annotate::annotate(&cluster, namespace.as_deref(), annotation)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

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

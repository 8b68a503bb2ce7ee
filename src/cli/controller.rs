//! `tally controller`: its flags, and starting the operator with them.

use std::{process::ExitCode, time::Duration};

use super::runtime;

/// What a Warehouse's `job` settings may ask of calculation Jobs, which the controller
/// creates with its own rights.
#[derive(clap::Args)]
pub struct PolicyArgs {
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
    fn policy(self) -> crate::controller::JobPolicy {
        let defaults = crate::controller::JobPolicy::default();
        crate::controller::JobPolicy {
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
pub struct WorkerResourceArgs {
    #[arg(long, env = "TALLY_WORKER_CPU_REQUEST", default_value = crate::controller::DEFAULT_CPU_REQUEST)]
    worker_cpu_request: String,
    #[arg(long, env = "TALLY_WORKER_MEMORY_REQUEST", default_value = crate::controller::DEFAULT_MEMORY_REQUEST)]
    worker_memory_request: String,
    #[arg(long, env = "TALLY_WORKER_CPU_LIMIT", default_value = "")]
    worker_cpu_limit: String,
    #[arg(long, env = "TALLY_WORKER_MEMORY_LIMIT", default_value = crate::controller::DEFAULT_MEMORY_LIMIT)]
    worker_memory_limit: String,
}

impl WorkerResourceArgs {
    pub fn requirements(&self) -> k8s_openapi::api::core::v1::ResourceRequirements {
        crate::controller::resource_requirements(
            &self.worker_cpu_request,
            &self.worker_memory_request,
            &self.worker_cpu_limit,
            &self.worker_memory_limit,
        )
    }
}

/// A namespace name, as the API server requires it.
pub fn namespace_name(value: &str) -> Result<String, String> {
    match super::manifest::dns_name_problem(value, 63) {
        None if !value.contains('.') => Ok(value.to_string()),
        None => Err(format!(
            "{value:?} is not a namespace name: it may not contain '.'"
        )),
        Some(problem) => Err(problem),
    }
}

/// Leader election, so that several replicas of the controller can run.
#[derive(clap::Args)]
pub struct ElectionArgs {
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
pub enum LogFormat {
    Text,
    Json,
}

#[allow(clippy::too_many_arguments)]
pub fn command(
    image: Option<String>,
    service_account: Option<String>,
    worker_resources: k8s_openapi::api::core::v1::ResourceRequirements,
    limits: crate::controller::Limits,
    scopes: Vec<crate::controller::Scope>,
    format: LogFormat,
    election: ElectionArgs,
    policy: Box<PolicyArgs>,
    http_address: Option<crate::controller::telemetry::ListenAddress>,
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
        let mut defaults = crate::controller::JobDefaults::default();
        if let Some(image) = image {
            defaults.image = image;
        }
        defaults.service_account_name = service_account;
        defaults.policy = policy.policy();
        defaults.resources = worker_resources;
        let stop = crate::controller::Stop::on_signal();
        let metrics = std::sync::Arc::new(crate::controller::telemetry::Metrics::default());
        if let Some(address) = http_address {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // Reconciling goes on without it; the kubelet's probes will report it.
                if let Err(error) = crate::controller::telemetry::serve(address, metrics).await {
                    tracing::error!(%error, "cannot serve /healthz, /readyz and /metrics");
                }
            });
        }
        tracing::info!(worker_image = %defaults.image, "tally controller starting");
        if election.leader_elect {
            let election = crate::controller::leader::Election {
                namespace: election
                    .leader_election_namespace
                    .unwrap_or_else(|| client.default_namespace().to_string()),
                lease: election.leader_election_lease,
                identity: crate::controller::leader::identity(
                    &std::env::var("POD_NAME")
                        .or_else(|_| std::env::var("HOSTNAME"))
                        .unwrap_or_else(|_| "tally-controller".to_string()),
                ),
                lease_duration: Duration::from_secs(election.leader_election_lease_duration),
            };
            if let Err(error) = crate::controller::run_elected(
                client, defaults, limits, scopes, election, stop, metrics,
            )
            .await
            {
                tracing::error!(%error, "tally controller stopped");
                return ExitCode::FAILURE;
            }
        } else {
            crate::controller::run(client, defaults, limits, scopes, stop, metrics).await;
        }
        tracing::info!("tally controller stopped");
        ExitCode::SUCCESS
    });
    // Watches still waiting on the network must not hold the exit up.
    runtime.shutdown_background();
    code
}

//! An in-process Kubernetes API server emulator for end-to-end tests, with a garbage
//! collector, a Job controller and a "kubelet" that runs containers as local processes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_emulator::EmulatorError> {
//! let emu = kube_emulator::Emulator::builder()
//!     .image("ghcr.io/example/tally:dev", "/path/to/target/debug/tally")
//!     .start()
//!     .await?;
//! emu.apply_path("crds/")?; // CRDs are served as soon as they are applied
//! let kubeconfig = emu.kubeconfig_path(); // hand to kube::Config / KUBECONFIG / kubectl
//! # let _ = kubeconfig;
//! // ... run the controller against it ...
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! See README.md for what is (and is not) emulated.

pub mod defaults;
pub mod deployments;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod gc;
pub mod jobs;
pub mod patch;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;

pub use error::{ApiError, ApiResult};
pub use faults::{Fault, Faults};
pub use store::Store;

use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot bind 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("invalid YAML document: {0}")]
    Yaml(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Configures an [`Emulator`].
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    port: u16,
    kubeconfig: Option<PathBuf>,
    images: HashMap<String, PathBuf>,
    event_log_capacity: usize,
    event_history: Duration,
    bookmark_interval: Duration,
    job_backoff: Duration,
    env_passthrough: Vec<String>,
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        EmulatorBuilder {
            port: 0,
            kubeconfig: None,
            images: HashMap::new(),
            event_log_capacity: 10_000,
            event_history: Duration::from_secs(75),
            bookmark_interval: Duration::from_secs(1),
            job_backoff: Duration::ZERO,
            env_passthrough: vec![
                "RUST_LOG".into(),
                "RUST_BACKTRACE".into(),
                "LLVM_PROFILE_FILE".into(),
            ],
        }
    }
}

impl EmulatorBuilder {
    /// Listen on this port (default: a random free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Write the kubeconfig here (default: a file in the emulator's temporary directory).
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// Containers using `image` run `executable` as their entrypoint (see README).
    pub fn image(mut self, image: impl Into<String>, executable: impl Into<PathBuf>) -> Self {
        self.images.insert(image.into(), executable.into());
        self
    }

    /// How many events the watch log keeps before compacting the oldest.
    pub fn event_log_capacity(mut self, n: usize) -> Self {
        self.event_log_capacity = n;
        self
    }

    /// Events younger than this are kept beyond `event_log_capacity` (up to
    /// [`store::LOG_CEILING`]), as the API server's watch cache keeps 75 s of history
    /// (the default). `Duration::ZERO` compacts by count alone.
    pub fn event_history(mut self, d: Duration) -> Self {
        self.event_history = d;
        self
    }

    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Delay before the Job controller replaces a failed Pod (Kubernetes: 10s doubling).
    pub fn job_backoff(mut self, d: Duration) -> Self {
        self.job_backoff = d;
        self
    }

    /// Host environment variables passed on to container processes.
    pub fn pass_env(mut self, name: impl Into<String>) -> Self {
        self.env_passthrough.push(name.into());
        self
    }

    pub async fn start(self) -> Result<Emulator, EmulatorError> {
        Emulator::start_with(self).await
    }
}

/// A running emulator. Dropping it stops the server and kills container processes;
/// [`Emulator::shutdown`] does the same and waits for the processes to be gone.
pub struct Emulator {
    addr: std::net::SocketAddr,
    kubeconfig: PathBuf,
    store: Arc<Store>,
    faults: Arc<Faults>,
    kubelet: Arc<jobs::Kubelet>,
    shutdown: tokio_watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Emulator {
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// Starts an emulator with default settings and no image map.
    pub async fn start() -> Result<Emulator, EmulatorError> {
        EmulatorBuilder::default().start().await
    }

    async fn start_with(b: EmulatorBuilder) -> Result<Emulator, EmulatorError> {
        let listener = TcpListener::bind(("127.0.0.1", b.port))
            .await
            .map_err(|source| EmulatorError::Bind {
                port: b.port,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                port: b.port,
                source,
            })?;
        let dir = tempfile::Builder::new()
            .prefix("kube-emulator-")
            .tempdir()
            .map_err(EmulatorError::TempDir)?;
        let kubeconfig = b
            .kubeconfig
            .clone()
            .unwrap_or_else(|| dir.path().join("kubeconfig"));
        write_kubeconfig(&kubeconfig, &format!("http://{addr}"))?;
        let store = Store::new(b.event_log_capacity, b.event_history);
        let faults = Arc::new(Faults::default());
        let (shutdown, shutdown_rx) = tokio_watch::channel(false);
        let logs = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let ctx = Arc::new(server::Ctx {
            store: store.clone(),
            faults: faults.clone(),
            addr: addr.to_string(),
            bookmark_every: b.bookmark_interval,
            shutdown: shutdown_rx.clone(),
            logs: logs.clone(),
        });
        let kubelet = Arc::new(jobs::Kubelet::new(jobs::KubeletConfig {
            images: b.images.clone(),
            kubeconfig: kubeconfig.clone(),
            server: format!("http://{addr}"),
            work_dir: dir.path().join("pods"),
            env_passthrough: b.env_passthrough.clone(),
            logs,
        }));
        let tasks = vec![
            tokio::spawn(serve(listener, ctx, shutdown_rx.clone())),
            tokio::spawn(gc::run(store.clone(), shutdown_rx.clone())),
            tokio::spawn(deployments::run(store.clone(), shutdown_rx.clone())),
            tokio::spawn(jobs::run_job_controller(
                store.clone(),
                b.job_backoff,
                shutdown_rx.clone(),
            )),
            tokio::spawn(kubelet.clone().run(store.clone(), shutdown_rx)),
        ];
        Ok(Emulator {
            addr,
            kubeconfig,
            store,
            faults,
            kubelet,
            shutdown,
            tasks,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The kubeconfig pointing at this emulator (context `kube-emulator`, namespace default).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Direct access to storage, for assertions that should not go through HTTP.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Compacts the watch event log now: watches from any older resourceVersion get
    /// an in-stream 410 Expired, and outstanding list `continue` tokens expire.
    pub fn compact(&self) {
        self.store.with(|s| s.compact());
    }

    /// Creates or updates every document of a (multi-document) YAML string through
    /// server-side apply with field manager `kube-emulator`, in order; CRDs are served
    /// as soon as they are applied.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, EmulatorError> {
        use serde::Deserialize;
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).map_err(|e| EmulatorError::Yaml(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            out.push(self.apply_value(&v)?);
        }
        Ok(out)
    }

    /// Applies every `*.yaml`/`*.yml` file in a directory (sorted by name), or one file.
    pub fn apply_path(&self, path: impl AsRef<Path>) -> Result<Vec<Value>, EmulatorError> {
        let path = path.as_ref();
        let mut files = Vec::new();
        if path.is_dir() {
            let rd = std::fs::read_dir(path)
                .map_err(|e| EmulatorError::Yaml(format!("{}: {e}", path.display())))?;
            for e in rd.flatten() {
                let p = e.path();
                if matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml") | Some("yml")
                ) {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| EmulatorError::Yaml(format!("{}: {e}", f.display())))?;
            out.extend(self.apply_yaml(&text)?);
        }
        Ok(out)
    }

    fn apply_value(&self, v: &Value) -> Result<Value, EmulatorError> {
        let api_version = v["apiVersion"].as_str().unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let body = serde_json::to_vec(v).unwrap_or_default();
        let out = self.store.with(|s| {
            let def = s.registry.by_kind(group, kind).cloned().ok_or_else(|| {
                ApiError::page_not_found(&format!(
                    "no matches for kind \"{kind}\" in version \"{api_version}\""
                ))
            })?;
            let namespace = def.namespaced.then(|| {
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            });
            let t = store::Target {
                res: def.key(),
                version: version.to_string(),
                namespace,
            };
            let opts = store::WriteOpts {
                field_manager: Some("kube-emulator".into()),
                force: true,
                ..Default::default()
            };
            s.patch(
                &t,
                &name,
                patch::PatchType::Apply,
                &body,
                &opts,
                store::Sub::Main,
            )
        })?;
        Ok(out)
    }

    /// Stops serving, ends watches and terminates container processes.
    pub async fn shutdown(mut self) {
        self.stop();
        self.kubelet.kill_all().await;
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    fn stop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
        self.kubelet.kill_all_now();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn write_kubeconfig(path: &Path, server: &str) -> Result<(), EmulatorError> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-emulator\n  cluster:\n    server: {server}\ncontexts:\n- name: kube-emulator\n  context:\n    cluster: kube-emulator\n    user: kube-emulator\n    namespace: default\ncurrent-context: kube-emulator\nusers:\n- name: kube-emulator\n  user: {{}}\n"
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| EmulatorError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| EmulatorError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })
}

async fn serve(
    listener: TcpListener,
    ctx: Arc<server::Ctx>,
    mut shutdown: tokio_watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let ctx = ctx.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| server::handle(ctx.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

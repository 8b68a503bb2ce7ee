//! A real Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from the upstream Go modules
//! pinned in `tests/cluster/go.mod` by `tests/cluster/build.sh` (cached between runs).
//!
//! [`ControlPlane::start`] generates a CA, serving and client certificates and a
//! ServiceAccount signing key in a temporary directory, starts each process on random
//! free loopback ports with its log in that directory, and returns once the API server
//! is ready and both controller processes are healthy. The API server runs with
//! RBAC and Node authorization and the default admission plugins (Pod Security among
//! them); the admin user of [`ControlPlane::kubeconfig_path`] is in `system:masters`.
//!
//! Dropping the [`ControlPlane`] (or [`ControlPlane::shutdown`]) stops every process,
//! SIGTERM and then SIGKILL, and removes the directory; set `TALLY_E2E_KEEP_DIR` to
//! keep it (its path is printed) for reading the logs afterwards.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the processes get to become ready (a cold start on a busy two-core machine
/// takes tens of seconds).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The Service network; its first address is the `kubernetes` Service's.
const SERVICE_CIDR: &str = "10.0.0.0/24";
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The admin user of [`ControlPlane::kubeconfig_path`].
pub const ADMIN_USER: &str = "tally-e2e-admin";
/// The environment variable that keeps the temporary directory (logs, certificates).
pub const KEEP_DIR_ENV: &str = "TALLY_E2E_KEEP_DIR";
const LOG_TAIL_LINES: usize = 40;
/// The front proxy's client certificate's name.
const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Go is not installed and no built control plane is cached: a test may skip.
    #[error("go is not installed and no control plane is cached: {0}")]
    GoUnavailable(String),
    #[error("building the control plane (tests/cluster/build.sh) failed ({status}):\n{stderr}")]
    Build { status: ExitStatus, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("writing a kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
    #[error("a client for the API server: {0}")]
    ClientConfig(#[from] KubeconfigError),
    #[error("a client for the API server: {0}")]
    Client(#[from] kube::Error),
    #[error("{process} exited while starting ({status}); the end of {log}:\n{tail}")]
    Exited {
        process: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{process} was not ready within {timeout:?} (last: {last}); the end of {log}:\n{tail}")]
    NotReady {
        process: &'static str,
        timeout: Duration,
        last: String,
        log: PathBuf,
        tail: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A running control plane; see the module documentation.
pub struct ControlPlane {
    /// Started processes, in start order (stopped in reverse).
    processes: Vec<Process>,
    dir: Option<tempfile::TempDir>,
    bin_dir: PathBuf,
    server: String,
    kubeconfig: PathBuf,
}

struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ControlPlane {
    /// Builds (or finds cached) binaries and starts the control plane. Returns
    /// [`Error::GoUnavailable`] when that is impossible because Go is missing.
    ///
    /// The processes are killed when the thread that started them ends, so call this
    /// from a thread that outlives the [`ControlPlane`] (a test's own thread or a
    /// runtime worker; not `spawn_blocking`).
    pub async fn start() -> Result<ControlPlane> {
        let bin_dir = build().await?;
        let dir = tempfile::Builder::new()
            .prefix("tally-control-plane-")
            .tempdir()
            .map_err(io_error("creating the control plane's directory"))?;
        let mut plane = ControlPlane {
            processes: Vec::new(),
            bin_dir,
            server: String::new(),
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir: Some(dir),
        };
        plane.launch().await?;
        Ok(plane)
    }

    /// The admin kubeconfig (user [`ADMIN_USER`], group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory of the certificates, kubeconfigs, etcd's data and the logs
    /// (`<process>.log`).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// The CA certificate that signed the API server's serving and all client
    /// certificates.
    pub fn ca_path(&self) -> PathBuf {
        self.dir().join("pki/ca.crt")
    }

    /// The directory of the control plane's binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Writes a kubeconfig at `path` that authenticates as the bearer of `token` (a
    /// ServiceAccount's, from the TokenRequest API), so that RBAC authorizes every
    /// call made with it.
    pub fn write_token_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<()> {
        write_kubeconfig_for(
            path,
            &self.server,
            &self.ca_path(),
            user,
            json!({"token": token}),
        )
    }

    /// The running processes: name (`etcd`, `kube-apiserver`, ...) and process ID.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name, p.child.id()))
            .collect()
    }

    /// A client of the admin kubeconfig.
    pub async fn client(&self) -> Result<Client> {
        admin_client(&self.kubeconfig).await
    }

    /// Stops every process and removes the directory (as dropping does).
    pub fn shutdown(mut self) {
        self.stop();
    }

    async fn launch(&mut self) -> Result<()> {
        let dir = self.dir().to_path_buf();
        let pki = dir.join("pki");
        mkdir(&pki)?;
        write_pki(&pki)?;

        let [etcd_client, etcd_peer, apiserver, kcm, scheduler] = free_ports()?;
        let loopback = Ipv4Addr::LOCALHOST;
        self.server = format!("https://{loopback}:{apiserver}");
        for user in ["admin", "controller-manager", "scheduler"] {
            write_kubeconfig(
                &dir.join(format!("{user}.kubeconfig")),
                &self.server,
                &pki,
                user,
            )?;
        }
        let path = |p: &str| dir.join(p).display().to_string();

        let etcd_url = format!("http://{loopback}:{etcd_client}");
        let peer_url = format!("http://{loopback}:{etcd_peer}");
        self.spawn(
            "etcd",
            &[
                "--name=tally-e2e".into(),
                format!("--data-dir={}", path("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=tally-e2e={peer_url}"),
                // A throwaway store: no fsync, much faster on a busy disk.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        self.wait_until("etcd", deadline, || async move {
            let body = http_get_loopback(etcd_client, "/health").await?;
            body.contains(r#""health":"true""#)
                .then_some(())
                .ok_or(body)
        })
        .await?;

        self.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={loopback}"),
                format!("--advertise-address={loopback}"),
                format!("--secure-port={apiserver}"),
                format!("--cert-dir={}", path("apiserver-certs")),
                format!("--tls-cert-file={}", path("pki/apiserver.crt")),
                format!("--tls-private-key-file={}", path("pki/apiserver.key")),
                format!("--client-ca-file={}", path("pki/ca.crt")),
                "--authorization-mode=Node,RBAC".into(),
                // Added to the default plugins, PodSecurity among them.
                "--enable-admission-plugins=NodeRestriction".into(),
                // Privileged Pods pass the API server's own check, so Pod Security
                // admission is what rejects them where a namespace enforces it.
                "--allow-privileged=true".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", path("pki/sa.pub")),
                format!("--service-account-signing-key-file={}", path("pki/sa.key")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!(
                    "--requestheader-client-ca-file={}",
                    path("pki/front-proxy-ca.crt")
                ),
                format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
                "--requestheader-username-headers=X-Remote-User".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                format!(
                    "--proxy-client-cert-file={}",
                    path("pki/front-proxy-client.crt")
                ),
                format!(
                    "--proxy-client-key-file={}",
                    path("pki/front-proxy-client.key")
                ),
                // The `kubernetes` Endpoints may not hold a loopback address.
                "--endpoint-reconciler-type=none".into(),
                "--v=1".into(),
            ],
        )?;
        let admin = admin_client(&self.kubeconfig).await?;
        self.wait_until("kube-apiserver", deadline, || {
            let admin = admin.clone();
            async move {
                let request = http::Request::get("/readyz")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                match admin.request_text(request).await {
                    Ok(body) if body.trim() == "ok" => Ok(()),
                    Ok(body) => Err(body),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await?;

        let controller_manager = dir.join("controller-manager.kubeconfig");
        let kcm_kubeconfig = controller_manager.display();
        self.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={kcm_kubeconfig}"),
                format!("--authentication-kubeconfig={kcm_kubeconfig}"),
                format!("--authorization-kubeconfig={kcm_kubeconfig}"),
                format!("--bind-address={loopback}"),
                format!("--secure-port={kcm}"),
                format!("--cert-dir={}", path("controller-manager-certs")),
                "--controllers=*".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", path("pki/sa.key")),
                format!("--root-ca-file={}", path("pki/ca.crt")),
                format!("--cluster-signing-cert-file={}", path("pki/ca.crt")),
                format!("--cluster-signing-key-file={}", path("pki/ca.key")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--v=1".into(),
            ],
        )?;
        let scheduler_kubeconfig = dir.join("scheduler.kubeconfig");
        let scheduler_kubeconfig = scheduler_kubeconfig.display();
        self.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={scheduler_kubeconfig}"),
                format!("--authentication-kubeconfig={scheduler_kubeconfig}"),
                format!("--authorization-kubeconfig={scheduler_kubeconfig}"),
                format!("--bind-address={loopback}"),
                format!("--secure-port={scheduler}"),
                "--leader-elect=false".into(),
                "--v=1".into(),
            ],
        )?;
        for (name, port) in [
            ("kube-controller-manager", kcm),
            ("kube-scheduler", scheduler),
        ] {
            let health = health_client(port)?;
            self.wait_until(name, deadline, || {
                let health = health.clone();
                async move {
                    let request = http::Request::get("/healthz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    match health.request_text(request).await {
                        Ok(body) if body.trim() == "ok" => Ok(()),
                        Ok(body) => Err(body),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<()> {
        let log = self.dir().join(format!("{name}.log"));
        let out = File::create(&log).map_err(io_error(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_error(format!("opening {}", log.display())))?;
        let mut command = Command::new(self.bin_dir.join(name));
        command
            .args(args)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of this process.
        // The child gets SIGKILL when the thread that spawned it ends, so no process
        // outlives a test binary killed before `Drop` could run.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(io_error(format!("starting {name}")))?;
        self.processes.push(Process { name, child, log });
        Ok(())
    }

    /// Polls `check` every 250 ms until it succeeds, failing when `deadline` passes or
    /// any started process exits.
    async fn wait_until<F, Fut>(
        &mut self,
        name: &'static str,
        deadline: Instant,
        mut check: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        loop {
            self.check_running()?;
            let last = match tokio::time::timeout(Duration::from_secs(5), check()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(last)) => last,
                Err(_) => "no answer within 5s".to_owned(),
            };
            if Instant::now() >= deadline {
                let log = self.dir().join(format!("{name}.log"));
                return Err(Error::NotReady {
                    process: name,
                    timeout: START_TIMEOUT,
                    last,
                    tail: log_tail(&log),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An error naming the first started process that has exited.
    fn check_running(&mut self) -> Result<()> {
        for process in &mut self.processes {
            let status = process
                .child
                .try_wait()
                .map_err(io_error(format!("waiting for {}", process.name)))?;
            if let Some(status) = status {
                return Err(Error::Exited {
                    process: process.name,
                    status,
                    tail: log_tail(&process.log),
                    log: process.log.clone(),
                });
            }
        }
        Ok(())
    }

    /// Stops the processes one at a time, the last started first (so the API server
    /// still has etcd while it shuts down): SIGTERM, then SIGKILL after
    /// [`STOP_GRACE`]. Then the directory goes.
    fn stop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            if let Ok(None) = process.child.try_wait() {
                signal(&process.child, libc::SIGTERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(process.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = process.child.try_wait() {
                eprintln!("{} did not stop on SIGTERM: SIGKILL", process.name);
                // Errors only when it has exited meanwhile.
                let _ = process.child.kill();
            }
            let _ = process.child.wait();
        }
        self.processes.clear();
        if let Some(dir) = self.dir.take() {
            if std::env::var_os(KEEP_DIR_ENV).is_some() {
                eprintln!("control plane directory kept: {}", dir.keep().display());
            } else if let Err(e) = dir.close() {
                eprintln!("removing the control plane's directory: {e}");
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own unreaped child's pid; it cannot name another
        // process while the child is not yet waited for.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Runs `tests/cluster/build.sh`: the directory of the built (or cached) binaries.
async fn build() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster/build.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_error(format!("running {}", script.display())))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.code() == Some(3) {
        return Err(Error::GoUnavailable(stderr.trim().to_owned()));
    }
    let bin = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()));
    match bin {
        Some(bin) if output.status.success() && bin.is_dir() => Ok(bin),
        _ => Err(Error::Build {
            status: output.status,
            stderr: tail(&stderr, LOG_TAIL_LINES),
        }),
    }
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_error(format!("creating {}", path.display())))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(io_error(format!("writing {}", path.display())))
}

/// The CA, the API server's serving certificate, a client certificate for each
/// kubeconfig user and the ServiceAccount signing key, as PEM files in `pki`.
fn write_pki(pki: &Path) -> Result<()> {
    let ca = write_ca(pki, "ca", "tally-e2e-ca")?;

    let mut serving = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(SERVICE_IP)));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    write(
        &pki.join("apiserver.crt"),
        &serving.signed_by(&key, &ca)?.pem(),
    )?;
    write(&pki.join("apiserver.key"), &key.serialize_pem())?;

    write_client_cert(pki, "admin", &ca, ADMIN_USER, Some("system:masters"))?;
    write_client_cert(
        pki,
        "controller-manager",
        &ca,
        "system:kube-controller-manager",
        None,
    )?;
    write_client_cert(pki, "scheduler", &ca, "system:kube-scheduler", None)?;

    // The front proxy (the API server itself, proxying to aggregated APIs) has a CA
    // of its own: any certificate of the client CA could otherwise claim any user in
    // request headers.
    let front_proxy_ca = write_ca(pki, "front-proxy-ca", "tally-e2e-front-proxy-ca")?;
    write_client_cert(
        pki,
        "front-proxy-client",
        &front_proxy_ca,
        FRONT_PROXY_CLIENT,
        None,
    )?;

    // ECDSA P-256: the API server signs ServiceAccount tokens with it (ES256), as the
    // controller manager does legacy token Secrets. The verifying key is a separate
    // PKIX file: the API server reads no public key out of a PKCS#8 private key.
    let sa = KeyPair::generate()?;
    write(&pki.join("sa.key"), &sa.serialize_pem())?;
    write(&pki.join("sa.pub"), &sa.public_key_pem())?;
    Ok(())
}

/// A self-signed CA, `<file>.crt` and `<file>.key` in `pki`.
fn write_ca(pki: &Path, file: &str, name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    write(&pki.join(format!("{file}.key")), &key.serialize_pem())?;
    let ca = CertifiedIssuer::self_signed(ca, key)?;
    write(&pki.join(format!("{file}.crt")), &ca.pem())?;
    Ok(ca)
}

/// A client certificate of `ca` for `user` (in `group`), `<file>.crt` and
/// `<file>.key` in `pki`.
fn write_client_cert(
    pki: &Path,
    file: &str,
    ca: &CertifiedIssuer<'_, KeyPair>,
    user: &str,
    group: Option<&str>,
) -> Result<()> {
    let mut client = CertificateParams::default();
    client.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        client
            .distinguished_name
            .push(DnType::OrganizationName, group);
    }
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    write(
        &pki.join(format!("{file}.crt")),
        &client.signed_by(&key, ca)?.pem(),
    )?;
    write(&pki.join(format!("{file}.key")), &key.serialize_pem())
}

/// A kubeconfig for the API server at `server` as the user whose certificate is
/// `pki/<user>.crt`.
fn write_kubeconfig(path: &Path, server: &str, pki: &Path, user: &str) -> Result<()> {
    let file = |name: String| pki.join(name).display().to_string();
    let credentials = json!({
        "client-certificate": file(format!("{user}.crt")),
        "client-key": file(format!("{user}.key")),
    });
    write_kubeconfig_for(path, server, &pki.join("ca.crt"), user, credentials)
}

/// A kubeconfig for the API server at `server`, trusting the CA at `ca`, as `user`
/// with `credentials` (a kubeconfig `user` entry).
fn write_kubeconfig_for(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    credentials: serde_json::Value,
) -> Result<()> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "tally-e2e",
            "cluster": {
                "server": server,
                "certificate-authority": ca.display().to_string(),
            },
        }],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{
            "name": "tally-e2e",
            "context": {"cluster": "tally-e2e", "user": user},
        }],
        "current-context": "tally-e2e",
    });
    write(path, &serde_yaml::to_string(&config)?)
}

async fn admin_client(kubeconfig: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// An anonymous client for a controller process's health endpoint, which serves a
/// self-signed certificate.
fn health_client(port: u16) -> Result<Client> {
    let url = format!("https://{}:{port}", Ipv4Addr::LOCALHOST);
    let uri = url.parse::<http::Uri>().map_err(|e| Error::Io {
        what: format!("the URL {url}"),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut config = kube::Config::new(uri);
    config.accept_invalid_certs = true;
    Ok(Client::try_from(config)?)
}

/// Five distinct free loopback ports, free when this returns. They are drawn below
/// Linux's default ephemeral range (32768-60999): the kernel picks the local ports of
/// outgoing connections (the API server opens hundreds to etcd) from that range, and
/// one could otherwise take a port reserved for a process not yet started.
fn free_ports() -> Result<[u16; 5]> {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new();
    let mut listeners = Vec::new();
    for attempt in 0..1000u64 {
        if listeners.len() == 5 {
            break;
        }
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        let port = 10_000 + (hasher.finish() % 22_000) as u16;
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            listeners.push(listener);
        }
    }
    // Whatever the kernel gives, should that range be taken.
    while listeners.len() < 5 {
        listeners.push(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(io_error("reserving loopback ports"))?,
        );
    }
    let mut ports = [0; 5];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(io_error("reserving loopback ports"))?
            .port();
    }
    Ok(ports)
}

/// The body of a plain HTTP/1.0 GET to `127.0.0.1:port`, or why there is none.
async fn http_get_loopback(port: u16, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The last lines of a log file (its last 64 KiB at most), or why it cannot be read.
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => tail(&text, LOG_TAIL_LINES),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

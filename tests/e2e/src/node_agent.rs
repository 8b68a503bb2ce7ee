//! A node agent for the test control plane: it does what a kubelet does for the Pods
//! the scheduler binds to its Node, with local processes instead of a container
//! runtime.
//!
//! [`NodeAgent::start`] unpacks an OCI image layout (the image `image/build.sh`
//! builds) into a root filesystem once, registers a Ready Node and keeps its Lease and
//! status fresh, and watches the Pods bound to the Node. Each container runs as a
//! process in its own process group and private mount namespace: the image root
//! bind-mounted (read-only with `readOnlyRootFilesystem`), a fresh `/proc`, a minimal
//! `/dev` (null, zero, random, urandom and the container's termination-log file), the
//! Pod's volumes at their mount paths, then `chroot` into the image root and the
//! container's user and groups. Volumes are emptyDir, configMap, secret, downwardAPI
//! and projected (configMap, secret, downwardAPI and ServiceAccount tokens from the
//! TokenRequest API bound to the Pod: what the ServiceAccount admission plugin
//! injects). The network is the host's: `KUBERNETES_SERVICE_HOST`/`PORT` point at
//! the API server on loopback and the Pod's IP is 127.0.0.1.
//!
//! Pod status follows the kubelet's: `Pending` (with a waiting reason such as
//! `CreateContainerConfigError` while a referenced ConfigMap or Secret is missing,
//! retried every second) → `Running` → `Succeeded`/`Failed` with each container's
//! `terminated` state (exit code, reason, the termination message file's content,
//! times). A Pod marked for deletion gets SIGTERM, SIGKILL after its grace period,
//! and is then deleted with grace period 0 (the kubelet's final delete).
//!
//! What it does not do: resource limits, seccomp and capability sets beyond what
//! dropping to a non-root user implies (it sets `no_new_privs` when
//! `allowPrivilegeEscalation` is false), probes, `subPath`, token refresh, image
//! pulls (every container runs the one image root, whatever its `image` says) and
//! network isolation.
//!
//! The pure parts — [`expand`], [`container_env`], [`volume_files`],
//! [`running_status`], [`terminated_status`] — take what the agent fetched from the
//! API server as a [`Resolved`], so they are tested without a cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, Node, Pod, Secret, ServiceAccount, Volume,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, ResourceExt};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the Node's Lease is renewed and its status heartbeats.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The Lease's duration (what the kubelet uses).
const LEASE_SECONDS: i32 = 40;
/// How often a Pod that cannot start yet (missing ConfigMap/Secret) is retried.
const RETRY: Duration = Duration::from_secs(1);
/// The longest termination message kept (the kubelet's limit).
const MAX_MESSAGE: usize = 4096;
/// The default grace period of a Pod.
const DEFAULT_GRACE: i64 = 30;

/// Why the node agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the image layout {layout}: {problem}")]
    Layout { layout: PathBuf, problem: String },
    #[error("the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("the API server's URL {0:?} has no host and port")]
    ServerUrl(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Why a container cannot be created yet: the `waiting` reason and message the Pod
/// shows (`CreateContainerConfigError`, `CreateContainerError`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    fn config(message: impl Into<String>) -> Waiting {
        Waiting {
            reason: "CreateContainerConfigError".into(),
            message: message.into(),
        }
    }

    fn create(message: impl Into<String>) -> Waiting {
        Waiting {
            reason: "CreateContainerError".into(),
            message: message.into(),
        }
    }
}

// ------------------------------------------------------------------------- the image

/// What the image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub user: String,
}

/// An image unpacked into a root filesystem.
#[derive(Debug, Clone)]
pub struct Image {
    /// The root filesystem.
    pub root: PathBuf,
    pub config: ImageConfig,
    /// The manifest's digest.
    pub digest: String,
    /// How long unpacking took; `None` when an earlier unpack was reused.
    pub unpack_time: Option<Duration>,
}

fn read_json(layout: &Path, path: &Path) -> Result<Value> {
    let text = fs::read(path).map_err(io_error(format!("reading {}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| Error::Layout {
        layout: layout.to_path_buf(),
        problem: format!("{} is not JSON: {e}", path.display()),
    })
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| Error::Layout {
        layout: layout.to_path_buf(),
        problem: format!("malformed digest {digest:?}"),
    })?;
    let safe = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !safe(algorithm) || !safe(hex) {
        return Err(Error::Layout {
            layout: layout.to_path_buf(),
            problem: format!("malformed digest {digest:?}"),
        });
    }
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Reads an OCI layout's image manifest (the first of `index.json`, following one
/// nested index) and config.
fn read_manifest(layout: &Path) -> Result<(String, Value, ImageConfig)> {
    let bad = |problem: String| Error::Layout {
        layout: layout.to_path_buf(),
        problem,
    };
    let mut index = read_json(layout, &layout.join("index.json"))?;
    for _ in 0..3 {
        let descriptor = index["manifests"]
            .get(0)
            .cloned()
            .ok_or_else(|| bad("the index lists no manifest".into()))?;
        let digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| bad("a manifest descriptor has no digest".into()))?
            .to_string();
        let document = read_json(layout, &blob_path(layout, &digest)?)?;
        let media_type = descriptor["mediaType"]
            .as_str()
            .or_else(|| document["mediaType"].as_str())
            .unwrap_or_default();
        if media_type.contains("index") || media_type.contains("manifest.list") {
            index = document;
            continue;
        }
        let config_digest = document["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("manifest {digest} has no config")))?;
        let config = read_json(layout, &blob_path(layout, config_digest)?)?;
        let c = &config["config"];
        let env = strings(&c["Env"])
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect();
        let image_config = ImageConfig {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env,
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        };
        return Ok((digest, document, image_config));
    }
    Err(bad("image indexes nest too deep".into()))
}

/// Unpacks one layer into `root`, honouring whiteouts.
fn unpack_layer(layout: &Path, root: &Path, descriptor: &Value) -> Result<()> {
    let digest = descriptor["digest"].as_str().ok_or_else(|| Error::Layout {
        layout: layout.to_path_buf(),
        problem: "a layer has no digest".into(),
    })?;
    let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
    let path = blob_path(layout, digest)?;
    let file = fs::File::open(&path).map_err(io_error(format!("opening {}", path.display())))?;
    let reader: Box<dyn Read> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Box::new(io::BufReader::new(file))
    } else {
        return Err(Error::Layout {
            layout: layout.to_path_buf(),
            problem: format!("layer {digest} has an unsupported media type {media_type:?}"),
        });
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let what = || format!("unpacking layer {digest} into {}", root.display());
    for entry in archive.entries().map_err(io_error(what()))? {
        let mut entry = entry.map_err(io_error(what()))?;
        let path = entry.path().map_err(io_error(what()))?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = root.join(path.parent().unwrap_or(Path::new("")));
            if !parent.starts_with(root) || path.components().any(|c| c == Component::ParentDir) {
                continue;
            }
            if hidden == ".wh..opq" {
                // An opaque directory: nothing of the lower layers stays in it.
                if let Ok(children) = fs::read_dir(&parent) {
                    for child in children.flatten() {
                        let p = child.path();
                        let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                    }
                }
            } else {
                let p = parent.join(hidden);
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
            continue;
        }
        entry.unpack_in(root).map_err(io_error(what()))?;
    }
    Ok(())
}

/// The directories every container mounts something on.
const MOUNT_POINTS: [&str; 3] = ["proc", "dev", "tmp"];

/// Unpacks the image of the OCI layout `layout` into `<layout>/../rootfs-<digest>`
/// unless an earlier call did (concurrent callers unpack into private directories and
/// the first rename wins).
pub fn unpack_image(layout: &Path) -> Result<Image> {
    let (digest, manifest, config) = read_manifest(layout)?;
    let short: String = digest
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .chars()
        .take(16)
        .collect();
    let parent = layout
        .canonicalize()
        .map_err(io_error(format!("resolving {}", layout.display())))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let root = parent.join(format!("rootfs-{short}"));
    let mut unpack_time = None;
    if !root.join(".unpacked").is_file() {
        let started = Instant::now();
        let staging = parent.join(format!(
            ".rootfs-{short}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging)
            .map_err(io_error(format!("creating {}", staging.display())))?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            unpack_layer(layout, &staging, layer)?;
        }
        for dir in MOUNT_POINTS {
            fs::create_dir_all(staging.join(dir))
                .map_err(io_error(format!("creating /{dir} in the image root")))?;
        }
        let _ = fs::set_permissions(staging.join("tmp"), fs::Permissions::from_mode(0o1777));
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
            .map_err(io_error("making the image root readable"))?;
        fs::write(staging.join(".unpacked"), &digest)
            .map_err(io_error("marking the image root unpacked"))?;
        match fs::rename(&staging, &root) {
            Ok(()) => unpack_time = Some(started.elapsed()),
            Err(_) if root.join(".unpacked").is_file() => {
                let _ = fs::remove_dir_all(&staging);
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(Error::Io {
                    what: format!("moving the image root to {}", root.display()),
                    source: e,
                });
            }
        }
    }
    Ok(Image {
        root,
        config,
        digest,
        unpack_time,
    })
}

// --------------------------------------------------------------- what Pods reference

/// What a Pod's containers and volumes reference, fetched from the API server:
/// ConfigMaps and Secrets of its namespace (absent ones are missing) and the
/// ServiceAccount tokens of its projected volumes, by `<volume>/<path>`.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
    pub tokens: HashMap<String, String>,
    /// The cluster's CA, used for `kube-root-ca.crt` while the controller-manager has
    /// not published that ConfigMap in a new namespace yet.
    pub root_ca: Option<String>,
}

impl Resolved {
    /// A ConfigMap's keys (`data` and `binaryData`).
    fn config_map(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let data = match self.config_maps.get(name) {
            Some(cm) => {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect();
                for (k, v) in cm.binary_data.iter().flatten() {
                    data.insert(k.clone(), v.0.clone());
                }
                data
            }
            None if name == "kube-root-ca.crt" => {
                let ca = self.root_ca.clone()?;
                BTreeMap::from([("ca.crt".to_string(), ca.into_bytes())])
            }
            None => return None,
        };
        Some(data)
    }

    /// A Secret's keys (`data`, and `stringData` should a test hand one in).
    fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.secrets.get(name)?;
        let mut data: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
        Some(data)
    }
}

fn pod_spec(pod: &Pod) -> k8s_openapi::api::core::v1::PodSpec {
    pod.spec.clone().unwrap_or_default()
}

/// The names of the ConfigMaps and Secrets a Pod references, and its token
/// projections (`<volume>/<path>`, audience, expiration).
fn references(pod: &Pod) -> (HashSet<String>, HashSet<String>, Vec<TokenRequestSpec>) {
    let spec = pod_spec(pod);
    let mut config_maps = HashSet::new();
    let mut secrets = HashSet::new();
    let mut tokens = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            config_maps.insert(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.insert(s.name.clone());
            }
            if let Some(t) = &source.service_account_token {
                tokens.push(TokenRequestSpec {
                    key: format!("{}/{}", v.name, t.path),
                    audience: t.audience.clone(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                });
            }
        }
    }
    (config_maps, secrets, tokens)
}

struct TokenRequestSpec {
    key: String,
    audience: Option<String>,
    expiration_seconds: i64,
}

// ------------------------------------------------------------------------ environment

/// Expands `$(VAR)` references as Kubernetes does: a defined variable is replaced,
/// an undefined reference stays as written, `$$` is an escaped `$`.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldRef` for a Pod on `node`.
pub fn field_ref(pod: &Pod, node: &str, path: &str) -> Option<String> {
    let quoted = |p: &str| {
        p.split_once("['")
            .map(|(_, r)| r.trim_end_matches("']").to_string())
    };
    let spec = pod_spec(pod);
    Some(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_else(|| node.to_string()),
        "spec.serviceAccountName" => spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        "status.podIPs" | "status.hostIPs" => "127.0.0.1".into(),
        p if p.starts_with("metadata.labels['") => {
            pod.labels().get(&quoted(p)?).cloned().unwrap_or_default()
        }
        p if p.starts_with("metadata.annotations['") => pod
            .annotations()
            .get(&quoted(p)?)
            .cloned()
            .unwrap_or_default(),
        _ => return None,
    })
}

/// Where the API server is, as a Pod sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub host: String,
    pub port: u16,
}

impl ServiceEndpoint {
    /// From the API server's URL, `https://127.0.0.1:6443`.
    pub fn from_url(url: &str) -> Result<ServiceEndpoint> {
        let bad = || Error::ServerUrl(url.to_string());
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let authority = rest.split('/').next().ok_or_else(bad)?;
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(ServiceEndpoint {
            host: host.to_string(),
            port,
        })
    }

    /// The variables the kubelet sets for the `kubernetes` Service.
    fn env(&self) -> Vec<(String, String)> {
        let (h, p) = (&self.host, self.port);
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), h.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), p.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), p.to_string()),
            ("KUBERNETES_PORT".into(), format!("tcp://{h}:{p}")),
            (format!("KUBERNETES_PORT_{p}_TCP"), format!("tcp://{h}:{p}")),
            (format!("KUBERNETES_PORT_{p}_TCP_PROTO"), "tcp".into()),
            (format!("KUBERNETES_PORT_{p}_TCP_PORT"), p.to_string()),
            (format!("KUBERNETES_PORT_{p}_TCP_ADDR"), h.clone()),
        ]
    }
}

/// Where an environment variable's value comes from: a ConfigMap or a Secret.
#[derive(Clone, Copy)]
enum Store {
    ConfigMap,
    Secret,
}

impl Store {
    fn kind(self) -> &'static str {
        match self {
            Store::ConfigMap => "ConfigMap",
            Store::Secret => "Secret",
        }
    }

    /// The object's data; `None` when it is missing and `optional`, the kubelet's
    /// waiting reason when it is missing and not.
    fn data(
        self,
        resolved: &Resolved,
        name: &str,
        optional: Option<bool>,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Waiting> {
        let data = match self {
            Store::ConfigMap => resolved.config_map(name),
            Store::Secret => resolved.secret(name),
        };
        match data {
            Some(data) => Ok(Some(data)),
            None if optional == Some(true) => Ok(None),
            None => Err(Waiting::config(format!(
                "{} \"{name}\" not found",
                self.kind().to_lowercase()
            ))),
        }
    }
}

/// A container's environment as the kubelet builds it: the `kubernetes` Service's
/// variables, then `envFrom`, then `env` (`value` with `$(VAR)` expansion,
/// `configMapKeyRef`, `secretKeyRef`, `fieldRef`), later names overriding earlier
/// ones. A missing ConfigMap, Secret or key that is not `optional` is a
/// [`Waiting`] with `CreateContainerConfigError`.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    node: &str,
    service: &ServiceEndpoint,
    resolved: &Resolved,
) -> Result<Vec<(String, String)>, Waiting> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env: Vec<(String, String)> = service.env();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let sources = [
            from.config_map_ref
                .as_ref()
                .map(|r| (Store::ConfigMap, r.name.as_str(), r.optional)),
            from.secret_ref
                .as_ref()
                .map(|r| (Store::Secret, r.name.as_str(), r.optional)),
        ];
        for (store, name, optional) in sources.into_iter().flatten() {
            for (k, v) in store.data(resolved, name, optional)?.unwrap_or_default() {
                set(&mut env, format!("{prefix}{k}"), text(&v));
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or_default(), &env)),
            Some(from) => {
                let key_ref = from
                    .config_map_key_ref
                    .as_ref()
                    .map(|r| (Store::ConfigMap, &r.name, &r.key, r.optional))
                    .or_else(|| {
                        from.secret_key_ref
                            .as_ref()
                            .map(|r| (Store::Secret, &r.name, &r.key, r.optional))
                    });
                if let Some((store, name, key, optional)) = key_ref {
                    match store.data(resolved, name, optional)? {
                        None => None,
                        Some(data) => match data.get(key) {
                            Some(v) => Some(text(v)),
                            None if optional == Some(true) => None,
                            None => {
                                return Err(Waiting::config(format!(
                                    "couldn't find key {key} in {} {ns}/{name}",
                                    store.kind()
                                )));
                            }
                        },
                    }
                } else if let Some(f) = &from.field_ref {
                    Some(field_ref(pod, node, &f.field_path).ok_or_else(|| {
                        Waiting::config(format!("unsupported fieldRef {}", f.field_path))
                    })?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_field_ref(pod, container, r).ok_or_else(|| {
                        Waiting::config(format!("unsupported resourceFieldRef {}", r.resource))
                    })?)
                } else {
                    return Err(Waiting::config(format!(
                        "env {}: unsupported valueFrom (only configMapKeyRef, secretKeyRef, \
                         fieldRef, resourceFieldRef)",
                        e.name
                    )));
                }
            }
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok(env)
}

/// The node's CPU cores (all of the machine's) and memory, as it registers them.
fn node_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
const NODE_MEMORY: &str = "16Gi";

/// A Kubernetes quantity (`250m`, `2Gi`, `1.5`, `4k`) as a number.
pub fn quantity_value(quantity: &str) -> Option<f64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// A `resourceFieldRef` as the kubelet resolves it: the container's limit or request,
/// the node's allocatable amount for a limit the container does not set, divided by
/// the divisor (default 1) and rounded up.
pub fn resource_field_ref(
    pod: &Pod,
    container: &Container,
    selector: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Option<String> {
    let target = match selector.container_name.as_deref() {
        Some(name) if !name.is_empty() => pod_spec(pod)
            .containers
            .into_iter()
            .find(|c| c.name == name)?,
        _ => container.clone(),
    };
    let (kind, resource) = selector.resource.split_once('.')?;
    let resources = target.resources.unwrap_or_default();
    let set = match kind {
        "limits" => resources.limits,
        "requests" => resources.requests,
        _ => return None,
    };
    let node = match resource {
        "cpu" => node_cpus() as f64,
        "memory" => quantity_value(NODE_MEMORY)?,
        _ => return None,
    };
    let value = set
        .as_ref()
        .and_then(|s| s.get(resource))
        .and_then(|q| quantity_value(&q.0))
        .unwrap_or(if kind == "limits" { node } else { 0.0 });
    let divisor = selector
        .divisor
        .as_ref()
        .and_then(|q| quantity_value(&q.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Some(format!("{}", (value / divisor).ceil() as u64))
}

// ---------------------------------------------------------------------------- volumes

/// One file of a materialised volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Relative to the volume's root; never absolute, never with `..`.
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A volume's content: an empty writable directory, or files (read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeContent {
    EmptyDir,
    Files(Vec<VolumeFile>),
}

fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The files of keys `data` per `items` (all keys when `items` is empty).
fn key_files(
    what: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    mode: u32,
) -> Result<Vec<VolumeFile>, Waiting> {
    let mut files = Vec::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => files.push(VolumeFile {
                        path: item.path.clone(),
                        data: v.clone(),
                        mode: item.mode.map(|m| m as u32).unwrap_or(mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(Waiting::create(format!(
                            "{what}: configuration key {:?} not found",
                            item.key
                        )));
                    }
                }
            }
        }
        _ => {
            for (k, v) in data {
                files.push(VolumeFile {
                    path: k.clone(),
                    data: v.clone(),
                    mode,
                });
            }
        }
    }
    Ok(files)
}

/// A volume's content for `pod`: files from ConfigMaps (`data` and `binaryData`),
/// Secrets, the downward API and ServiceAccount tokens (projected), with `items`,
/// `defaultMode` and per-item modes. A missing, non-optional source is a
/// [`Waiting`]; a volume type this agent does not run is one too.
pub fn volume_files(
    pod: &Pod,
    node: &str,
    volume: &Volume,
    resolved: &Resolved,
) -> Result<VolumeContent, Waiting> {
    let name = &volume.name;
    let mode_of = |m: Option<i32>| m.map(|m| m as u32).unwrap_or(0o644);
    let files = if volume.empty_dir.is_some() {
        return Ok(VolumeContent::EmptyDir);
    } else if let Some(cm) = &volume.config_map {
        let optional = cm.optional == Some(true);
        match resolved.config_map(&cm.name) {
            Some(data) => key_files(
                &format!("configmap {}", cm.name),
                &data,
                cm.items.as_ref(),
                optional,
                mode_of(cm.default_mode),
            )?,
            None if optional => Vec::new(),
            None => {
                return Err(Waiting::create(format!(
                    "volume {name}: configmap \"{}\" not found",
                    cm.name
                )));
            }
        }
    } else if let Some(s) = &volume.secret {
        let optional = s.optional == Some(true);
        let secret = s.secret_name.clone().unwrap_or_default();
        match resolved.secret(&secret) {
            Some(data) => key_files(
                &format!("secret {secret}"),
                &data,
                s.items.as_ref(),
                optional,
                mode_of(s.default_mode),
            )?,
            None if optional => Vec::new(),
            None => {
                return Err(Waiting::create(format!(
                    "volume {name}: secret \"{secret}\" not found"
                )));
            }
        }
    } else if let Some(d) = &volume.downward_api {
        let mode = mode_of(d.default_mode);
        let mut files = Vec::new();
        for item in d.items.iter().flatten() {
            files.push(downward_file(pod, node, name, item, mode)?);
        }
        files
    } else if let Some(p) = &volume.projected {
        let mode = mode_of(p.default_mode);
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                let optional = cm.optional == Some(true);
                match resolved.config_map(&cm.name) {
                    Some(data) => files.extend(key_files(
                        &format!("configmap {}", cm.name),
                        &data,
                        cm.items.as_ref(),
                        optional,
                        mode,
                    )?),
                    None if optional => {}
                    None => {
                        return Err(Waiting::create(format!(
                            "volume {name}: configmap \"{}\" not found",
                            cm.name
                        )));
                    }
                }
            } else if let Some(s) = &source.secret {
                let optional = s.optional == Some(true);
                match resolved.secret(&s.name) {
                    Some(data) => files.extend(key_files(
                        &format!("secret {}", s.name),
                        &data,
                        s.items.as_ref(),
                        optional,
                        mode,
                    )?),
                    None if optional => {}
                    None => {
                        return Err(Waiting::create(format!(
                            "volume {name}: secret \"{}\" not found",
                            s.name
                        )));
                    }
                }
            } else if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    files.push(downward_file(pod, node, name, item, mode)?);
                }
            } else if let Some(t) = &source.service_account_token {
                let key = format!("{name}/{}", t.path);
                let token = resolved.tokens.get(&key).ok_or_else(|| {
                    Waiting::create(format!("volume {name}: no ServiceAccount token for {key}"))
                })?;
                files.push(VolumeFile {
                    path: t.path.clone(),
                    data: token.clone().into_bytes(),
                    mode,
                });
            } else {
                return Err(Waiting::create(format!(
                    "volume {name}: unsupported projected source"
                )));
            }
        }
        files
    } else {
        return Err(Waiting::create(format!(
            "volume {name}: unsupported volume type (this node runs emptyDir, configMap, \
             secret, downwardAPI and projected)"
        )));
    };
    if let Some(bad) = files.iter().find(|f| !safe_relative(&f.path)) {
        return Err(Waiting::create(format!(
            "volume {name}: invalid path {:?}",
            bad.path
        )));
    }
    Ok(VolumeContent::Files(files))
}

fn downward_file(
    pod: &Pod,
    node: &str,
    volume: &str,
    item: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
    mode: u32,
) -> Result<VolumeFile, Waiting> {
    let field = item.field_ref.as_ref().ok_or_else(|| {
        Waiting::create(format!(
            "volume {volume}: only fieldRef downward API items are supported"
        ))
    })?;
    let value = match field.field_path.as_str() {
        "metadata.labels" | "metadata.annotations" => {
            let map = if field.field_path == "metadata.labels" {
                pod.labels()
            } else {
                pod.annotations()
            };
            map.iter()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect::<String>()
        }
        p => field_ref(pod, node, p)
            .ok_or_else(|| Waiting::create(format!("volume {volume}: unsupported fieldRef {p}")))?,
    };
    Ok(VolumeFile {
        path: item.path.clone(),
        data: value.into_bytes(),
        mode: item.mode.map(|m| m as u32).unwrap_or(mode),
    })
}

/// Writes a volume's files under `dir` (created), directories 0755.
pub fn write_volume(dir: &Path, content: &VolumeContent) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    match content {
        VolumeContent::EmptyDir => fs::set_permissions(dir, fs::Permissions::from_mode(0o777)),
        VolumeContent::Files(files) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
            for f in files {
                let path = dir.join(&f.path);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::write(&path, &f.data)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(f.mode & 0o7777))?;
            }
            Ok(())
        }
    }
}

// ----------------------------------------------------------------------------- status

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub image: String,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub message: String,
    pub started_at: String,
    pub finished_at: String,
    pub restart_count: i32,
}

fn conditions(ready: bool, reason: Option<&str>, at: &str, started: bool) -> Value {
    let flag = |b: bool| if b { "True" } else { "False" };
    let with_reason = |t: &str, b: bool| {
        let mut c =
            json!({"type": t, "status": flag(b), "lastProbeTime": null, "lastTransitionTime": at});
        if let Some(r) = reason.filter(|_| !b) {
            c["reason"] = json!(r);
        }
        c
    };
    json!([
        {"type": "PodReadyToStartContainers", "status": flag(started), "lastProbeTime": null, "lastTransitionTime": at},
        {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": at},
        with_reason("Ready", ready),
        with_reason("ContainersReady", ready),
        {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": at},
    ])
}

fn addresses(status: &mut Value) {
    status["hostIP"] = json!("127.0.0.1");
    status["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
    status["podIP"] = json!("127.0.0.1");
    status["podIPs"] = json!([{"ip": "127.0.0.1"}]);
}

fn container_image(pod: &Pod, name: &str) -> String {
    pod_spec(pod)
        .containers
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The status of a Pod whose containers cannot start yet.
pub fn waiting_status(pod: &Pod, waiting: &Waiting) -> Value {
    let at = now();
    let statuses: Vec<Value> = pod_spec(pod)
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": false,
                "restartCount": 0, "started": false,
                "state": {"waiting": {"reason": waiting.reason, "message": waiting.message}},
            })
        })
        .collect();
    let mut status = json!({
        "phase": "Pending",
        "conditions": conditions(false, Some("ContainersNotReady"), &at, false),
        "containerStatuses": statuses,
        "qosClass": pod.status.as_ref().and_then(|s| s.qos_class.clone()),
    });
    addresses(&mut status);
    status
}

/// The status of a Pod whose containers run, started at `started` (by container
/// name, with their restart counts).
pub fn running_status(pod: &Pod, start_time: &str, started: &[(String, String, i32)]) -> Value {
    let at = now();
    let statuses: Vec<Value> = started
        .iter()
        .map(|(name, started_at, restarts)| {
            json!({
                "name": name, "image": container_image(pod, name), "imageID": "",
                "containerID": format!("tally-node://{}/{name}", pod.uid().unwrap_or_default()),
                "ready": true, "started": true, "restartCount": restarts,
                "state": {"running": {"startedAt": started_at}},
            })
        })
        .collect();
    let mut status = json!({
        "phase": "Running",
        "startTime": start_time,
        "conditions": conditions(true, None, &at, true),
        "containerStatuses": statuses,
    });
    addresses(&mut status);
    status
}

/// A container's `terminated` state.
pub fn terminated_state(o: &Outcome) -> Value {
    let reason = if o.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": o.exit_code, "reason": reason,
        "startedAt": o.started_at, "finishedAt": o.finished_at,
    });
    if let Some(s) = o.signal {
        t["signal"] = json!(s);
    }
    if !o.message.is_empty() {
        t["message"] = json!(o.message);
    }
    json!({"terminated": t})
}

/// The final status of a Pod whose containers ended: `Succeeded` when every one
/// exited 0, else `Failed`.
pub fn terminated_status(pod: &Pod, start_time: &str, outcomes: &[Outcome]) -> Value {
    let at = now();
    let succeeded = outcomes.iter().all(|o| o.exit_code == 0);
    let uid = pod.uid().unwrap_or_default();
    let statuses: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "name": o.name, "image": o.image, "imageID": "",
                "containerID": format!("tally-node://{uid}/{}", o.name),
                "ready": false, "started": false, "restartCount": o.restart_count,
                "state": terminated_state(o),
            })
        })
        .collect();
    let mut status = json!({
        "phase": if succeeded { "Succeeded" } else { "Failed" },
        "startTime": start_time,
        "conditions": conditions(false, Some("PodCompleted"), &at, false),
        "containerStatuses": statuses,
    });
    addresses(&mut status);
    status
}

// --------------------------------------------------------------------- the processes

/// How a container's process is set up in its child before `exec`: everything
/// allocated beforehand, so the child only makes system calls.
struct Sandbox {
    root: CString,
    readonly_root: bool,
    proc_dir: CString,
    host_proc: CString,
    /// The container's /dev, prepared on the host, and where it goes under the root.
    dev_source: CString,
    dev_dir: CString,
    /// The host's /dev/X bound on the container's /dev/X.
    devices: Vec<(CString, CString)>,
    /// (source on the host, target under the root, read-only).
    mounts: Vec<(CString, CString, bool)>,
    workdir: CString,
    no_new_privs: bool,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

fn cstring(p: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Writes `msg` to standard error (the container's log) from the child.
fn child_say(msg: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

fn check(rc: libc::c_int, what: &'static [u8]) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        child_say(what);
        Err(e)
    }
}

fn bind(source: &CString, target: &CString, readonly: bool, what: &'static [u8]) -> io::Result<()> {
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(rc, what)?;
    if readonly {
        // Keep the flags the mount already has (locked ones may not be dropped).
        // SAFETY: statvfs(3) on a valid path into a zeroed struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: as above.
        if unsafe { libc::statvfs(target.as_ptr(), &mut st) } == 0 {
            for (st_flag, ms_flag) in [
                (libc::ST_NOSUID, libc::MS_NOSUID),
                (libc::ST_NODEV, libc::MS_NODEV),
                (libc::ST_NOEXEC, libc::MS_NOEXEC),
                (libc::ST_NOATIME, libc::MS_NOATIME),
                (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                (libc::ST_RELATIME, libc::MS_RELATIME),
            ] {
                if st.f_flag & st_flag != 0 {
                    flags |= ms_flag;
                }
            }
        }
        // SAFETY: mount(2) remounting the bind just made.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        check(rc, b"node agent: remounting read-only failed\n")?;
    }
    Ok(())
}

impl Sandbox {
    /// Runs in the forked child, before `exec`: only system calls, no allocation.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: plain system calls on data owned by `self`, which lives until exec.
        unsafe {
            check(
                libc::unshare(libc::CLONE_NEWNS),
                b"node agent: unshare(CLONE_NEWNS) failed\n",
            )?;
            check(
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
                b"node agent: making / private failed\n",
            )?;
        }
        bind(
            &self.root,
            &self.root,
            self.readonly_root,
            b"node agent: binding the image root failed\n",
        )?;
        // SAFETY: mount(2) of a new procfs on a directory of the root.
        let rc = unsafe {
            libc::mount(
                c"proc".as_ptr(),
                self.proc_dir.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bind(
                &self.host_proc,
                &self.proc_dir,
                false,
                b"node agent: mounting /proc failed\n",
            )?;
        }
        bind(
            &self.dev_source,
            &self.dev_dir,
            false,
            b"node agent: mounting /dev failed\n",
        )?;
        for (source, target) in &self.devices {
            bind(
                source,
                target,
                false,
                b"node agent: binding a device failed\n",
            )?;
        }
        for (source, target, readonly) in &self.mounts {
            bind(
                source,
                target,
                *readonly,
                b"node agent: mounting a volume failed\n",
            )?;
        }
        // SAFETY: chroot(2), chdir(2), prctl(2), setgroups(2), setgid(2), setuid(2)
        // on data owned by `self`.
        unsafe {
            check(
                libc::chroot(self.root.as_ptr()),
                b"node agent: chroot failed\n",
            )?;
            check(
                libc::chdir(self.workdir.as_ptr()),
                b"node agent: the working directory does not exist\n",
            )?;
            if self.no_new_privs {
                check(
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                    b"node agent: setting no_new_privs failed\n",
                )?;
            }
            check(
                libc::setgroups(self.groups.len(), self.groups.as_ptr()),
                b"node agent: setgroups failed\n",
            )?;
            check(libc::setgid(self.gid), b"node agent: setgid failed\n")?;
            check(libc::setuid(self.uid), b"node agent: setuid failed\n")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- users and commands

/// The user, group and supplementary groups a container runs as: `runAsUser` /
/// `runAsGroup` of the container, else of the Pod, else the image's `User`
/// (numeric, or a name of the image's `/etc/passwd`); the group defaults to the
/// user's primary group there, else 0. `runAsNonRoot` with user 0 is a
/// `CreateContainerConfigError`, as with the kubelet.
pub fn run_as(
    pod: &Pod,
    container: &Container,
    image_user: &str,
    passwd: &str,
) -> Result<(u32, u32, Vec<u32>), Waiting> {
    let psc = pod_spec(pod).security_context.unwrap_or_default();
    let csc = container.security_context.clone().unwrap_or_default();
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let (image_u, image_g) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let lookup_user = |u: &str| -> Option<(u32, u32)> {
        if u.is_empty() {
            return Some((0, 0));
        }
        let by = |f: &Vec<&str>| {
            if let Ok(n) = u.parse::<u32>() {
                f[2].parse::<u32>().ok() == Some(n)
            } else {
                f[0] == u
            }
        };
        match entries.iter().find(|f| by(f)) {
            Some(f) => Some((f[2].parse().ok()?, f[3].parse().unwrap_or(0))),
            None => u.parse::<u32>().ok().map(|n| (n, 0)),
        }
    };
    let uid = match csc.run_as_user.or(psc.run_as_user) {
        Some(u) => u32::try_from(u)
            .map_err(|_| Waiting::config(format!("runAsUser {u} is out of range")))?,
        None => {
            lookup_user(image_u)
                .ok_or_else(|| {
                    Waiting::config(format!(
                        "the image's user {image_u:?} is not in /etc/passwd"
                    ))
                })?
                .0
        }
    };
    let primary = entries
        .iter()
        .find(|f| f[2].parse::<u32>().ok() == Some(uid))
        .and_then(|f| f[3].parse::<u32>().ok());
    let gid = match csc.run_as_group.or(psc.run_as_group) {
        Some(g) => u32::try_from(g)
            .map_err(|_| Waiting::config(format!("runAsGroup {g} is out of range")))?,
        None => match image_g.and_then(|g| g.parse::<u32>().ok()) {
            Some(g) if csc.run_as_user.or(psc.run_as_user).is_none() => g,
            _ => primary.unwrap_or(0),
        },
    };
    if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid == 0 {
        return Err(Waiting::config(
            "container has runAsNonRoot and image will run as root",
        ));
    }
    let mut groups: Vec<u32> = psc
        .supplemental_groups
        .iter()
        .flatten()
        .chain(psc.fs_group.iter())
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok((uid, gid, groups))
}

/// The process's argv: `command` + `args`, or the image's entrypoint + (`args` or
/// the image's cmd) when `command` is empty; `$(VAR)` expanded.
pub fn argv(container: &Container, image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone();
    let words: Vec<String> = if command.is_empty() {
        image
            .entrypoint
            .iter()
            .cloned()
            .chain(args.unwrap_or_else(|| image.cmd.clone()))
            .collect()
    } else {
        command
            .into_iter()
            .chain(args.unwrap_or_default())
            .collect()
    };
    words.iter().map(|w| expand(w, env)).collect()
}

/// A path inside the container, as a relative path without `..` (None otherwise).
fn inside(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    Some(out)
}

/// The executable for `argv0` in the image root: itself when it has a `/`, else the
/// first match on the container's `PATH`.
fn resolve_executable(root: &Path, argv0: &str, env: &[(String, String)]) -> Option<String> {
    if argv0.contains('/') {
        return Some(argv0.to_string());
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':').find_map(|dir| {
        let candidate = format!("{}/{argv0}", dir.trim_end_matches('/'));
        let host = root.join(inside(&candidate)?);
        host.is_file().then_some(candidate)
    })
}

// ------------------------------------------------------------------------- the agent

/// A container ready to spawn.
struct Prepared {
    name: String,
    image: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    sandbox: Arc<Sandbox>,
    termination_log: PathBuf,
    log: PathBuf,
    fallback_to_logs: bool,
}

/// A Pod the agent runs.
struct PodEntry {
    /// `Some(grace seconds)` once the Pod is to stop.
    stop: watch::Sender<Option<i64>>,
    pgids: Arc<Mutex<Vec<i32>>>,
    task: JoinHandle<()>,
}

struct Shared {
    node: String,
    client: kube::Client,
    image: Image,
    passwd: String,
    service: ServiceEndpoint,
    root_ca: String,
    work: PathBuf,
    pods: Mutex<HashMap<String, PodEntry>>,
    /// Pods whose containers ended (by uid): never started again.
    finished: Mutex<HashSet<String>>,
    /// Pods whose final delete was sent (by uid).
    finalizing: Mutex<HashSet<String>>,
    /// The first error of each background task that gave up, for the test to see.
    errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) on a process group this agent created.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// A node whose Pods run as local processes; see the module documentation.
pub struct NodeAgent {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    work: Option<tempfile::TempDir>,
}

impl NodeAgent {
    /// Unpacks `image_layout`, registers Node `node_name` and starts running the Pods
    /// bound to it. `api_server_url` is where its Pods reach the API server
    /// (`https://127.0.0.1:PORT`); `ca_pem` the cluster's CA (the content of
    /// `kube-root-ca.crt` until the controller-manager publishes it).
    pub async fn start(
        client: kube::Client,
        node_name: &str,
        image_layout: &Path,
        api_server_url: &str,
        ca_pem: &str,
    ) -> Result<NodeAgent> {
        let service = ServiceEndpoint::from_url(api_server_url)?;
        let layout = image_layout.to_path_buf();
        let image = tokio::task::spawn_blocking(move || unpack_image(&layout))
            .await
            .map_err(|e| Error::Io {
                what: "unpacking the image".into(),
                source: io::Error::other(e.to_string()),
            })??;
        let passwd = fs::read_to_string(image.root.join("etc/passwd")).unwrap_or_default();
        let work = tempfile::Builder::new()
            .prefix(&format!("tally-node-{node_name}-"))
            .tempdir()
            .map_err(io_error("creating the node's directory"))?;
        let shared = Arc::new(Shared {
            node: node_name.to_string(),
            client,
            image,
            passwd,
            service,
            root_ca: ca_pem.to_string(),
            work: work.path().to_path_buf(),
            pods: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashSet::new()),
            finalizing: Mutex::new(HashSet::new()),
            errors: Mutex::new(Vec::new()),
        });
        register_node(&shared).await?;
        renew_lease(&shared).await?;
        let heartbeat = tokio::spawn(heartbeat(shared.clone()));
        let pods = tokio::spawn(watch_pods(shared.clone()));
        Ok(NodeAgent {
            shared,
            tasks: vec![heartbeat, pods],
            work: Some(work),
        })
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.node
    }

    /// The unpacked image.
    pub fn image(&self) -> &Image {
        &self.shared.image
    }

    /// A container's output so far (standard output and error), if it ran here.
    pub fn logs(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        let prefix = format!("{namespace}_{pod}_");
        let dir = fs::read_dir(self.shared.work.join("pods"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())?;
        fs::read_to_string(dir.join(container).join("output.log")).ok()
    }

    /// Errors the background tasks met (API calls that failed), for diagnostics.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// Stops every container (SIGKILL), the watch and the heartbeat, deletes the Node
    /// and removes the node's directory.
    pub async fn shutdown(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let entries: Vec<PodEntry> = lock(&self.shared.pods).drain().map(|(_, e)| e).collect();
        for e in &entries {
            for g in lock(&e.pgids).iter() {
                signal_group(*g, libc::SIGKILL);
            }
            let _ = e.stop.send(Some(0));
        }
        for e in entries {
            let _ = tokio::time::timeout(Duration::from_secs(10), e.task).await;
        }
        let nodes: Api<Node> = Api::all(self.shared.client.clone());
        let _ = nodes
            .delete(&self.shared.node, &DeleteParams::default())
            .await;
        if let Some(work) = self.work.take() {
            let _ = work.close();
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for e in lock(&self.shared.pods).values() {
            for g in lock(&e.pgids).iter() {
                signal_group(*g, libc::SIGKILL);
            }
            e.task.abort();
        }
    }
}

fn record_error(shared: &Shared, what: impl std::fmt::Display) {
    let mut errors = lock(&shared.errors);
    if errors.len() < 100 {
        errors.push(what.to_string());
    }
}

fn micro_now() -> String {
    Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn node_status(shared: &Shared) -> Value {
    let at = now();
    let resources = json!({
        "cpu": node_cpus().to_string(), "memory": NODE_MEMORY, "pods": "110", "ephemeral-storage": "50Gi",
    });
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": at, "lastTransitionTime": at})
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "the node agent has sufficient memory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "the node agent has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "the node agent has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "the node agent is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": shared.node},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": "tally-node", "systemUUID": "tally-node", "bootID": "tally-node",
            "kernelVersion": "", "osImage": "tally node agent", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH, "containerRuntimeVersion": "tally-node://0.1.0",
            "kubeletVersion": "v1.37.0", "kubeProxyVersion": "",
        },
        "images": [{"names": [shared.image.digest], "sizeBytes": 0}],
    })
}

async fn register_node(shared: &Shared) -> Result<()> {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shared.node,
            "labels": {
                "kubernetes.io/hostname": shared.node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
            },
        },
        "spec": {},
    }))
    .map_err(|e| Error::Io {
        what: "building the Node".into(),
        source: io::Error::other(e),
    })?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    nodes
        .patch_status(
            &shared.node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(shared)})),
        )
        .await?;
    Ok(())
}

async fn renew_lease(shared: &Shared) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let renew = json!({"spec": {"holderIdentity": shared.node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}});
    match leases
        .patch(&shared.node, &PatchParams::default(), &Patch::Merge(&renew))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let uid = nodes.get(&shared.node).await?.uid().unwrap_or_default();
            let mut lease = renew;
            lease["apiVersion"] = json!("coordination.k8s.io/v1");
            lease["kind"] = json!("Lease");
            lease["metadata"] = json!({
                "name": shared.node, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": shared.node, "uid": uid}],
            });
            let lease: Lease = serde_json::from_value(lease).map_err(|e| Error::Io {
                what: "building the Lease".into(),
                source: io::Error::other(e),
            })?;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Renews the Lease and the Node's conditions every [`HEARTBEAT`]; re-registers a
/// Node that was deleted.
async fn heartbeat(shared: Arc<Shared>) {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let status = nodes
            .patch_status(
                &shared.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node_status(&shared)})),
            )
            .await;
        let result = match status {
            Err(kube::Error::Api(s)) if s.code == 404 => register_node(&shared).await,
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        };
        if let Err(e) = result.and(renew_lease(&shared).await) {
            record_error(&shared, format!("heartbeat: {e}"));
        }
    }
}

/// Watches the Pods bound to this node and starts, stops and finalises them.
async fn watch_pods(shared: Arc<Shared>) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node));
    let mut stream = watcher(pods, config).boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                dispatch(&shared, pod);
            }
            Ok(watcher::Event::Delete(pod)) => {
                // Gone from the API server (a force delete, or our final delete).
                let uid = pod.uid().unwrap_or_default();
                if let Some(e) = lock(&shared.pods).get(&uid) {
                    let _ = e.stop.send(Some(0));
                }
                lock(&shared.finalizing).remove(&uid);
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => {
                record_error(&shared, format!("watching Pods: {e}"));
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn dispatch(shared: &Arc<Shared>, pod: Pod) {
    let Some(uid) = pod.uid() else { return };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    {
        let pods = lock(&shared.pods);
        if let Some(entry) = pods.get(&uid) {
            if deleting {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(DEFAULT_GRACE);
                let current = *entry.stop.borrow();
                if current.is_none_or(|g| grace < g) {
                    let _ = entry.stop.send(Some(grace));
                }
            }
            return;
        }
    }
    let finished = lock(&shared.finished).contains(&uid);
    if deleting {
        // Nothing runs for it (ended, or never started): the kubelet's final delete.
        if lock(&shared.finalizing).insert(uid.clone()) {
            let shared = shared.clone();
            tokio::spawn(async move {
                if !final_delete(&shared, &pod).await {
                    lock(&shared.finalizing).remove(&uid);
                }
            });
        }
        return;
    }
    if finished || phase == "Succeeded" || phase == "Failed" {
        return;
    }
    let (stop, stop_rx) = watch::channel(None);
    let pgids = Arc::new(Mutex::new(Vec::new()));
    // Inserted under the lock, so the task's own removal comes after it.
    let mut pods = lock(&shared.pods);
    let task = tokio::spawn(run_pod(shared.clone(), pod, stop_rx, pgids.clone()));
    pods.insert(uid, PodEntry { stop, pgids, task });
}

/// Deletes the Pod with grace period 0 (only this incarnation of it); true when it
/// is gone or going.
async fn final_delete(shared: &Shared, pod: &Pod) -> bool {
    let api: Api<Pod> =
        Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
        Err(e) => {
            record_error(shared, format!("deleting Pod {}: {e}", pod.name_any()));
            false
        }
    }
}

async fn patch_pod_status(shared: &Shared, pod: &Pod, status: Value) {
    let api: Api<Pod> =
        Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"uid": pod.uid()}, "status": status});
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => record_error(
            shared,
            format!("patching the status of Pod {}: {e}", pod.name_any()),
        ),
    }
}

/// Fetches what a Pod references; a missing object is simply absent.
async fn resolve(shared: &Shared, pod: &Pod) -> Result<Resolved> {
    let ns = pod.namespace().unwrap_or_default();
    let (config_maps, secrets, tokens) = references(pod);
    let mut resolved = Resolved {
        root_ca: Some(shared.root_ca.clone()),
        ..Resolved::default()
    };
    let cms: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &ns);
    for name in config_maps {
        if let Some(cm) = cms.get_opt(&name).await? {
            resolved.config_maps.insert(name, cm);
        }
    }
    let ss: Api<Secret> = Api::namespaced(shared.client.clone(), &ns);
    for name in secrets {
        if let Some(s) = ss.get_opt(&name).await? {
            resolved.secrets.insert(name, s);
        }
    }
    let sas: Api<ServiceAccount> = Api::namespaced(shared.client.clone(), &ns);
    let sa = pod_spec(pod)
        .service_account_name
        .unwrap_or_else(|| "default".into());
    for t in tokens {
        let mut spec = json!({
            "expirationSeconds": t.expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()},
        });
        if let Some(a) = &t.audience {
            spec["audiences"] = json!([a]);
        }
        let request =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let response: Value = sas
            .create_subresource("token", &sa, &PostParams::default(), &request)
            .await?;
        if let Some(token) = response["status"]["token"].as_str() {
            resolved.tokens.insert(t.key, token.to_string());
        }
    }
    Ok(resolved)
}

/// Materialises the volumes and prepares every container of a Pod.
fn prepare(
    shared: &Shared,
    pod: &Pod,
    resolved: &Resolved,
    pod_dir: &Path,
) -> Result<Vec<Prepared>, Waiting> {
    let spec = pod_spec(pod);
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(Waiting::create(
            "this node agent does not run init containers",
        ));
    }
    let host_io = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| Waiting::create(format!("{what}: {e}"))
    };
    let mut volumes: HashMap<String, (PathBuf, bool)> = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        let content = volume_files(pod, &shared.node, v, resolved)?;
        let dir = pod_dir.join("volumes").join(&v.name);
        let _ = fs::remove_dir_all(&dir);
        write_volume(&dir, &content).map_err(host_io(&format!("volume {}", v.name)))?;
        volumes.insert(
            v.name.clone(),
            (dir, matches!(content, VolumeContent::Files(_))),
        );
    }
    let root = &shared.image.root;
    let cstr = |p: &Path| cstring(p).map_err(host_io("a path"));
    let mut prepared = Vec::new();
    for c in &spec.containers {
        let kube_env = container_env(pod, c, &shared.node, &shared.service, resolved)?;
        let (uid, gid, groups) = run_as(pod, c, &shared.image.config.user, &shared.passwd)?;
        let mut env: Vec<(String, String)> = shared.image.config.env.clone();
        env.push(("HOSTNAME".into(), pod.name_any()));
        for (k, v) in kube_env {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            let home = shared
                .passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid))
                .map(|f| f[5].to_string())
                .unwrap_or_else(|| "/".into());
            env.push(("HOME".into(), home));
        }
        let mut words = argv(c, &shared.image.config, &env);
        if words.is_empty() {
            return Err(Waiting::create("no command specified"));
        }
        words[0] = resolve_executable(root, &words[0], &env).ok_or_else(|| {
            Waiting::create(format!("executable {:?} not found in the image", words[0]))
        })?;
        let cdir = pod_dir.join(&c.name);
        let dev = cdir.join("dev");
        let _ = fs::remove_dir_all(&cdir);
        fs::create_dir_all(&dev).map_err(host_io("the container's /dev"))?;
        let mut devices = Vec::new();
        for d in ["null", "zero", "random", "urandom", "full", "tty"] {
            let host = Path::new("/dev").join(d);
            if !host.exists() {
                continue;
            }
            fs::write(dev.join(d), b"").map_err(host_io("the container's /dev"))?;
            devices.push((cstr(&host)?, cstr(&root.join("dev").join(d))?));
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            symlink(target, dev.join(link)).map_err(host_io("the container's /dev"))?;
        }
        fs::create_dir_all(dev.join("shm")).map_err(host_io("the container's /dev"))?;
        let _ = fs::set_permissions(dev.join("shm"), fs::Permissions::from_mode(0o1777));
        // The termination message file: in /dev when it is there (the default), else
        // bound on its path.
        let message_path = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let message_rel = inside(&message_path).ok_or_else(|| {
            Waiting::create(format!("invalid terminationMessagePath {message_path:?}"))
        })?;
        let mut mounts: Vec<(CString, CString, bool)> = Vec::new();
        let termination_log = match message_rel.strip_prefix("dev") {
            Ok(rest) if rest.components().count() == 1 => dev.join(rest),
            _ => {
                let file = cdir.join("termination-log");
                let target = root.join(&message_rel);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(host_io("the termination message path"))?;
                }
                if !target.exists() {
                    fs::write(&target, b"").map_err(host_io("the termination message path"))?;
                }
                mounts.push((cstr(&file)?, cstr(&target)?, false));
                file
            }
        };
        fs::write(&termination_log, b"").map_err(host_io("the termination message file"))?;
        fs::set_permissions(&termination_log, fs::Permissions::from_mode(0o666))
            .map_err(host_io("the termination message file"))?;
        // Volumes, parents before children.
        let mut vms: Vec<_> = c.volume_mounts.iter().flatten().collect();
        vms.sort_by_key(|m| inside(&m.mount_path).map(|p| p.components().count()));
        let mut placed: Vec<(PathBuf, PathBuf)> = Vec::new();
        for m in vms {
            if m.sub_path.as_ref().is_some_and(|s| !s.is_empty())
                || m.sub_path_expr.as_ref().is_some_and(|s| !s.is_empty())
            {
                return Err(Waiting::create(format!(
                    "volume mount {}: subPath is not supported by this node agent",
                    m.name
                )));
            }
            let rel = inside(&m.mount_path)
                .ok_or_else(|| Waiting::create(format!("invalid mountPath {:?}", m.mount_path)))?;
            let (source, files) = volumes.get(&m.name).cloned().ok_or_else(|| {
                Waiting::create(format!("volume mount {}: no such volume", m.name))
            })?;
            // Its mount point: in the volume mounted above it, else in the image root.
            let holder = placed
                .iter()
                .filter(|(p, _)| rel.starts_with(p) && *p != rel)
                .max_by_key(|(p, _)| p.components().count());
            let host_point = match holder {
                Some((p, src)) => src.join(rel.strip_prefix(p).unwrap_or(&rel)),
                None => root.join(&rel),
            };
            fs::create_dir_all(&host_point)
                .map_err(host_io(&format!("the mount point {}", m.mount_path)))?;
            mounts.push((
                cstr(&source)?,
                cstr(&root.join(&rel))?,
                files || m.read_only == Some(true),
            ));
            placed.push((rel, source));
        }
        let workdir = c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| Some(shared.image.config.working_dir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        if let Some(rel) = inside(&workdir) {
            let _ = fs::create_dir_all(root.join(rel));
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let sandbox = Sandbox {
            root: cstr(root)?,
            readonly_root: sc.read_only_root_filesystem == Some(true),
            proc_dir: cstr(&root.join("proc"))?,
            host_proc: cstr(Path::new("/proc"))?,
            dev_source: cstr(&dev)?,
            dev_dir: cstr(&root.join("dev"))?,
            devices,
            mounts,
            workdir: cstring(&workdir).map_err(host_io("workingDir"))?,
            no_new_privs: sc.allow_privilege_escalation == Some(false),
            uid,
            gid,
            groups,
        };
        prepared.push(Prepared {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            argv: words,
            env,
            sandbox: Arc::new(sandbox),
            termination_log,
            log: cdir.join("output.log"),
            fallback_to_logs: c.termination_message_policy.as_deref()
                == Some("FallbackToLogsOnError"),
        });
    }
    Ok(prepared)
}

fn spawn(p: &Prepared) -> io::Result<tokio::process::Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(&p.argv[0]);
    cmd.args(&p.argv[1..])
        .env_clear()
        .envs(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(true);
    let sandbox = p.sandbox.clone();
    // SAFETY: `enter` makes only async-signal-safe system calls on memory prepared
    // before the fork.
    unsafe {
        cmd.pre_exec(move || sandbox.enter());
    }
    cmd.spawn()
}

fn read_message(p: &Prepared, failed: bool) -> String {
    let mut bytes = fs::read(&p.termination_log).unwrap_or_default();
    bytes.truncate(MAX_MESSAGE);
    let mut message = String::from_utf8_lossy(&bytes).into_owned();
    if message.is_empty() && failed && p.fallback_to_logs {
        let log = fs::read_to_string(&p.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let skip = tail.len().saturating_sub(2048);
        let start = (skip..=tail.len())
            .find(|i| tail.is_char_boundary(*i))
            .unwrap_or(tail.len());
        message = tail[start..].to_string();
    }
    message
}

/// Runs one container until it ends (restarting it per `policy`) or the Pod stops.
async fn run_container(
    p: &Prepared,
    policy: &str,
    pgids: Arc<Mutex<Vec<i32>>>,
    mut stop: watch::Receiver<Option<i64>>,
    started: tokio::sync::mpsc::UnboundedSender<(String, String, i32)>,
) -> Outcome {
    let mut restarts = 0;
    loop {
        let started_at = now();
        let _ = fs::write(&p.termination_log, b"");
        let mut child = match spawn(p) {
            Ok(c) => c,
            Err(e) => {
                return Outcome {
                    name: p.name.clone(),
                    image: p.image.clone(),
                    exit_code: 128,
                    signal: None,
                    message: format!("failed to start {:?}: {e}", p.argv[0]),
                    started_at: started_at.clone(),
                    finished_at: now(),
                    restart_count: restarts,
                };
            }
        };
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        lock(&pgids).push(pid);
        let _ = started.send((p.name.clone(), started_at.clone(), restarts));
        let mut grace: Option<i64> = *stop.borrow();
        let status = loop {
            if let Some(g) = grace {
                signal_group(pid, libc::SIGTERM);
                let wait = Duration::from_secs(u64::try_from(g).unwrap_or(0));
                match tokio::time::timeout(wait, child.wait()).await {
                    Ok(s) => break s,
                    Err(_) => {
                        signal_group(pid, libc::SIGKILL);
                        break child.wait().await;
                    }
                }
            }
            tokio::select! {
                s = child.wait() => break s,
                changed = stop.changed() => {
                    grace = if changed.is_err() { Some(0) } else { *stop.borrow() };
                }
            }
        };
        // Whatever the container left in its process group goes with it.
        signal_group(pid, libc::SIGKILL);
        lock(&pgids).retain(|g| *g != pid);
        use std::os::unix::process::ExitStatusExt;
        let (exit_code, signal) = match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => (c, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                _ => (1, None),
            },
            Err(_) => (1, None),
        };
        let outcome = Outcome {
            name: p.name.clone(),
            image: p.image.clone(),
            exit_code,
            signal,
            message: read_message(p, exit_code != 0),
            started_at,
            finished_at: now(),
            restart_count: restarts,
        };
        let stopping = stop.borrow().is_some();
        let restart =
            !stopping && (policy == "Always" || (policy == "OnFailure" && exit_code != 0));
        if !restart {
            return outcome;
        }
        restarts += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs a Pod from `Pending` to its end, then finalises it if it is being deleted.
async fn run_pod(
    shared: Arc<Shared>,
    pod: Pod,
    mut stop: watch::Receiver<Option<i64>>,
    pgids: Arc<Mutex<Vec<i32>>>,
) {
    let uid = pod.uid().unwrap_or_default();
    let pod_dir = shared.work.join("pods").join(format!(
        "{}_{}_{uid}",
        pod.namespace().unwrap_or_default(),
        pod.name_any()
    ));
    let mut last_waiting: Option<Waiting> = None;
    let prepared = loop {
        if stop.borrow().is_some() {
            break None;
        }
        let attempt = match resolve(&shared, &pod).await {
            Ok(resolved) => prepare(&shared, &pod, &resolved, &pod_dir),
            Err(e) => {
                record_error(&shared, format!("Pod {}: {e}", pod.name_any()));
                Err(Waiting::create(e.to_string()))
            }
        };
        match attempt {
            Ok(p) => break Some(p),
            Err(w) => {
                if last_waiting.as_ref() != Some(&w) {
                    patch_pod_status(&shared, &pod, waiting_status(&pod, &w)).await;
                    last_waiting = Some(w);
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    };
    if let Some(prepared) = prepared {
        let start_time = now();
        let policy = pod_spec(&pod)
            .restart_policy
            .unwrap_or_else(|| "Always".into());
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let runs =
            futures::future::join_all(prepared.iter().map(|p| {
                run_container(p, &policy, pgids.clone(), stop.clone(), started_tx.clone())
            }));
        drop(started_tx);
        tokio::pin!(runs);
        let total = prepared.len();
        let mut running: Vec<(String, String, i32)> = Vec::new();
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut runs => break outcomes,
                Some(s) = started_rx.recv() => {
                    running.retain(|(n, _, _)| *n != s.0);
                    running.push(s);
                    if running.len() == total {
                        let mut sorted = running.clone();
                        sorted.sort_by_key(|(n, _, _)| prepared.iter().position(|p| p.name == *n));
                        patch_pod_status(&shared, &pod, running_status(&pod, &start_time, &sorted)).await;
                    }
                }
            }
        };
        lock(&shared.finished).insert(uid.clone());
        patch_pod_status(
            &shared,
            &pod,
            terminated_status(&pod, &start_time, &outcomes),
        )
        .await;
    } else {
        lock(&shared.finished).insert(uid.clone());
    }
    let deleting = stop.borrow().is_some();
    lock(&shared.pods).remove(&uid);
    if deleting
        && lock(&shared.finalizing).insert(uid.clone())
        && !final_delete(&shared, &pod).await
    {
        lock(&shared.finalizing).remove(&uid);
    }
}

// ---------------------------------------------------------------------- the image build

/// Builds the runtime image from the `tally` binary `binary` with `image/build.sh`
/// (buildah, offline; cached by the binary's hash) and returns its OCI layout.
pub fn build_image(binary: &Path) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/build.sh");
    let output = std::process::Command::new("sh")
        .arg(&script)
        .arg(binary)
        .output()
        .map_err(io_error(format!("running {}", script.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last() {
        Some(line) if output.status.success() && Path::new(line).is_dir() => Ok(line.into()),
        _ => Err(Error::Layout {
            layout: script,
            problem: format!(
                "image/build.sh failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
    }
}

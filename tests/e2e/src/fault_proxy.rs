//! A fault-injecting proxy in front of the real kube-apiserver: the faults a test
//! needs (5xx answers, requests that never get one, watches whose resourceVersion
//! has expired) on top of the real API server's behaviour, without a fake API server.
//!
//! The proxy listens on plain HTTP on loopback and forwards each request through a
//! [`kube::Client`] of its own, so the upstream identity (TLS, a ServiceAccount
//! token) is the client's: a process pointed at the proxy is authorized as that
//! client is. Requests matching a rule are answered by the rule instead; the newest
//! matching rule wins.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What an injected fault does to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a matching `Status` body.
    Status(u16),
    /// Never answer (a stuck API server or a dead connection): the client's own
    /// timeouts must rescue it.
    Hang,
    /// For watch requests only: answer as the API server does when the watch's
    /// resourceVersion was compacted away, with a `410 Gone` ERROR event; the client
    /// must list again. Other requests pass.
    WatchExpired,
}

#[derive(Debug)]
struct Rule {
    method: Option<String>,
    path_prefix: String,
    remaining: usize,
    fault: Fault,
}

/// The proxy's pending faults.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    injected: std::sync::atomic::AtomicUsize,
}

impl Faults {
    /// The next `n` requests whose path starts with `path_prefix` (any method) fail.
    pub fn fail_next(&self, path_prefix: &str, n: usize, fault: Fault) {
        self.push(None, path_prefix, n, fault);
    }

    /// Like [`fail_next`](Self::fail_next) for one HTTP method (`"PATCH"`, ...).
    pub fn fail_next_method(&self, method: &str, path_prefix: &str, n: usize, fault: Fault) {
        self.push(Some(method.to_ascii_uppercase()), path_prefix, n, fault);
    }

    /// How many requests got a fault instead of an answer from the API server.
    pub fn injected(&self) -> usize {
        self.injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn push(&self, method: Option<String>, path_prefix: &str, n: usize, fault: Fault) {
        self.lock().push(Rule {
            method,
            path_prefix: path_prefix.to_string(),
            remaining: n,
            fault,
        });
    }

    fn take(&self, method: &str, path: &str, is_watch: bool) -> Option<Fault> {
        let mut rules = self.lock();
        let index = rules.iter().rposition(|r| {
            r.remaining > 0
                && path.starts_with(&r.path_prefix)
                && r.method.as_deref().is_none_or(|m| m == method)
                && (is_watch || r.fault != Fault::WatchExpired)
        })?;
        rules[index].remaining -= 1;
        let fault = rules[index].fault.clone();
        rules.retain(|r| r.remaining > 0);
        self.injected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running proxy; stopped (with every open connection) when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    faults: Arc<Faults>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port, forwarding through `upstream`.
    pub async fn start(upstream: kube::Client) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let accept = tokio::spawn(accept(listener, upstream, faults.clone()));
        Ok(FaultProxy {
            address,
            faults,
            accept,
        })
    }

    /// The proxy's URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Writes a kubeconfig at `path` for the proxy: no credentials of its own, as the
    /// proxy adds its upstream client's.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": {"server": self.url()}}],
            "users": [{"name": "fault-proxy", "user": {}}],
            "contexts": [{
                "name": "fault-proxy",
                "context": {"cluster": "fault-proxy", "user": "fault-proxy"},
            }],
            "current-context": "fault-proxy",
        });
        std::fs::write(path, config.to_string())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: aborting it ends them all.
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, upstream: kube::Client, faults: Arc<Faults>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (upstream, faults) = (upstream.clone(), faults.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                forward(request, upstream.clone(), faults.clone())
            });
            // A connection that ends badly is the client's business (it retries).
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without end.
        while connections.try_join_next().is_some() {}
    }
}

type ProxyBody = Either<kube::client::Body, Full<Bytes>>;

async fn forward(
    request: Request<Incoming>,
    upstream: kube::Client,
    faults: Arc<Faults>,
) -> Result<Response<ProxyBody>, Infallible> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let is_watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match faults.take(&method, &path, is_watch) {
        Some(Fault::Status(code)) => return Ok(status_response(code, &path)),
        Some(Fault::Hang) => std::future::pending::<()>().await,
        Some(Fault::WatchExpired) => return Ok(expired_watch_response()),
        None => {}
    }
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(plain_response(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let mut outgoing = Request::builder().method(parts.method).uri(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
    );
    for (name, value) in &parts.headers {
        if !is_connection_header(name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let outgoing = match outgoing.body(kube::client::Body::from(body.to_vec())) {
        Ok(outgoing) => outgoing,
        Err(e) => return Ok(plain_response(StatusCode::BAD_REQUEST, e.to_string())),
    };
    match upstream.send(outgoing).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in [
                "connection",
                "keep-alive",
                "transfer-encoding",
                "content-length",
            ] {
                parts.headers.remove(name);
            }
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(e) => Ok(plain_response(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

/// Headers of one hop, and the credentials the upstream client replaces.
fn is_connection_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "authorization"
    )
}

fn status_response(code: u16, path: &str) -> Response<ProxyBody> {
    let reason = match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    };
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("injected fault on {path}"),
        "reason": reason,
        "code": code,
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// What kube-apiserver streams to a watch from a compacted resourceVersion.
fn expired_watch_response() -> Response<ProxyBody> {
    let event = serde_json::json!({
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version: 1 (2)",
            "reason": "Expired",
            "code": 410,
        },
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!("{event}\n")))));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn plain_response(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response
}

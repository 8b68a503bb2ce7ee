//! The controller's HTTP endpoint: `/healthz` and `/readyz` for the kubelet's probes,
//! and `/metrics` in the Prometheus text format (reconciles by kind and result, their
//! durations, and whether this process leads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds of the reconcile duration histogram, in seconds.
const BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Debug, Clone, Default, PartialEq)]
struct KindStats {
    ok: u64,
    errors: u64,
    /// Reconciles that took at most `BUCKETS[i]`, not cumulative.
    buckets: [u64; BUCKETS.len()],
    seconds: f64,
}

/// What `/metrics` reports. Cheap to update from every reconcile.
#[derive(Debug, Default)]
pub struct Metrics {
    kinds: Mutex<BTreeMap<String, KindStats>>,
    leader: AtomicBool,
}

impl Metrics {
    /// Counts one reconcile of `kind`.
    pub fn reconciled(&self, kind: &str, ok: bool, took: Duration) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if !kinds.contains_key(kind) {
            kinds.insert(kind.to_string(), KindStats::default());
        }
        let Some(stats) = kinds.get_mut(kind) else {
            return;
        };
        if ok {
            stats.ok += 1;
        } else {
            stats.errors += 1;
        }
        let seconds = took.as_secs_f64();
        stats.seconds += seconds;
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            stats.buckets[i] += 1;
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of the current values.
    pub fn render(&self) -> String {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        out.push_str(
            "# HELP tally_reconciles_total Reconciles by kind and result (error: retried with backoff).\n\
             # TYPE tally_reconciles_total counter\n",
        );
        for (kind, stats) in &kinds {
            for (result, count) in [("ok", stats.ok), ("error", stats.errors)] {
                let _ = writeln!(
                    out,
                    "tally_reconciles_total{{kind=\"{kind}\",result=\"{result}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP tally_reconcile_duration_seconds How long reconciles take.\n\
             # TYPE tally_reconcile_duration_seconds histogram\n",
        );
        for (kind, stats) in &kinds {
            let mut cumulative = 0;
            for (le, count) in BUCKETS.iter().zip(stats.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "tally_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let total = stats.ok + stats.errors;
            let _ = writeln!(
                out,
                "tally_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {total}\n\
                 tally_reconcile_duration_seconds_sum{{kind=\"{kind}\"}} {}\n\
                 tally_reconcile_duration_seconds_count{{kind=\"{kind}\"}} {total}",
                stats.seconds
            );
        }
        let _ = write!(
            out,
            "# HELP tally_leader Whether this process reconciles (1) or waits for the leader election Lease (0).\n\
             # TYPE tally_leader gauge\n\
             tally_leader {}\n",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        out
    }
}

/// The status line, content type and body for a request line's method and target.
fn route(method: &str, target: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        // A standby is ready too: readiness gates rolling updates, and the new Pod
        // becomes the leader only once the old one has stopped.
        ("GET", "/healthz" | "/readyz") => ("200 OK", TEXT, "ok\n".to_string()),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => ("404 Not Found", TEXT, "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            TEXT,
            "method not allowed\n".to_string(),
        ),
    }
}

/// Where to listen: `HOST:PORT`, or `:PORT` for every interface (IPv6 and IPv4 where
/// the host has IPv6, else IPv4), as probes reach a Pod on whichever family its
/// cluster uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenAddress(Vec<SocketAddr>);

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |e: &dyn std::fmt::Display| format!("{text:?}: {e} (use HOST:PORT or :PORT)");
        match text.strip_prefix(':') {
            Some(port) => {
                let port: u16 = port.parse().map_err(|e| invalid(&e))?;
                Ok(Self(vec![
                    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
                    SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
                ]))
            }
            None => Ok(Self(vec![text.parse().map_err(|e| invalid(&e))?])),
        }
    }
}

/// Connections answered at once; more wait in the listen backlog, so a flood of idle
/// connections cannot hold the controller's memory.
const CONCURRENT_CONNECTIONS: usize = 16;

/// Serves `/healthz`, `/readyz` and `/metrics` on `address` until the process ends.
pub async fn serve(
    address: ListenAddress,
    metrics: std::sync::Arc<Metrics>,
) -> std::io::Result<()> {
    let mut bound = Err(std::io::Error::other("no address to listen on"));
    for candidate in &address.0 {
        bound = TcpListener::bind(candidate).await;
        if bound.is_ok() {
            break;
        }
    }
    let listener = bound?;
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: retrying at once would spin.
                tracing::warn!(%error, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A client that sends nothing is dropped rather than held open.
            let answered =
                tokio::time::timeout(Duration::from_secs(5), respond(stream, &metrics)).await;
            if let Ok(Err(error)) = answered {
                tracing::debug!(%error, "answering an HTTP request");
            }
            drop(slot);
        });
    }
}

/// Reads one request's head and answers it; the connection is then closed.
async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default();
    let target = request_line.next().unwrap_or_default();
    let (status, content_type, body) = route(method, target, metrics);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_a_cumulative_histogram_and_the_leader_gauge() {
        let metrics = Metrics::default();
        metrics.reconciled("MetricCalculation", true, Duration::from_millis(3));
        metrics.reconciled("MetricCalculation", true, Duration::from_millis(40));
        metrics.reconciled("MetricCalculation", false, Duration::from_secs(60));
        metrics.set_leader(true);
        let text = metrics.render();
        for line in [
            "tally_reconciles_total{kind=\"MetricCalculation\",result=\"ok\"} 2",
            "tally_reconciles_total{kind=\"MetricCalculation\",result=\"error\"} 1",
            "tally_reconcile_duration_seconds_bucket{kind=\"MetricCalculation\",le=\"0.005\"} 1",
            "tally_reconcile_duration_seconds_bucket{kind=\"MetricCalculation\",le=\"0.05\"} 2",
            "tally_reconcile_duration_seconds_bucket{kind=\"MetricCalculation\",le=\"30\"} 2",
            "tally_reconcile_duration_seconds_bucket{kind=\"MetricCalculation\",le=\"+Inf\"} 3",
            "tally_reconcile_duration_seconds_count{kind=\"MetricCalculation\"} 3",
            "# TYPE tally_leader gauge",
            "tally_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("tally_reconcile_duration_seconds_sum{kind=\"MetricCalculation\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.043).abs() < 1e-9);
    }

    #[test]
    fn listen_addresses() {
        let any: ListenAddress = ":8080".parse().unwrap();
        assert_eq!(
            any.0,
            [
                "[::]:8080".parse::<SocketAddr>().unwrap(),
                "0.0.0.0:8080".parse().unwrap()
            ]
        );
        let one: ListenAddress = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(one.0, ["127.0.0.1:9090".parse::<SocketAddr>().unwrap()]);
        for bad in [":http", "localhost", ":70000", ""] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn routes() {
        let metrics = Metrics::default();
        assert_eq!(route("GET", "/healthz", &metrics).0, "200 OK");
        assert_eq!(route("GET", "/readyz?verbose", &metrics).0, "200 OK");
        let (status, content_type, body) = route("GET", "/metrics", &metrics);
        assert_eq!(status, "200 OK");
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("tally_leader 0"));
        assert_eq!(route("GET", "/other", &metrics).0, "404 Not Found");
        assert_eq!(
            route("POST", "/healthz", &metrics).0,
            "405 Method Not Allowed"
        );
    }
}

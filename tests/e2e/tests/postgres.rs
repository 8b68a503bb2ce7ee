//! The checkout example on a `postgres` Warehouse whose password is a Secret, on the
//! real control plane: a throwaway PostgreSQL loaded with the example's `load.sql`,
//! the example's PostgreSQL manifests applied with `kubectl`, every calculation
//! completing with what `tally run` prints for the DuckDB example, and the Secret's
//! value nowhere in the Jobs, Pods, statuses, Events, the controller's log or the
//! workers' logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tally_e2e::{assert_close, chart_dir, kubectl, printed_status, tally_bin};

const NAMESPACE: &str = "analytics";
/// The database user's password: the Secret's value the test looks for everywhere.
const PASSWORD: &str = "pg-secret-6f1c2e9a";
const ADMIN_PASSWORD: &str = "pg-admin-3b7d";
const CALCULATIONS: [&str; 4] = [
    "checkout-revenue",
    "checkout-conversion",
    "checkout-order-value",
    "checkout-max-basket",
];

/// A throwaway PostgreSQL server (as `nobody` when run as root), stopped and its
/// directory removed when dropped.
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<(String, String)>,
    port: u16,
}

fn postgres_bindir() -> Option<PathBuf> {
    let configured = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut candidates: Vec<PathBuf> = configured.into_iter().collect();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        found.sort();
        found.reverse();
        candidates.extend(found);
    }
    candidates.into_iter().find(|dir| {
        ["initdb", "pg_ctl", "psql"]
            .iter()
            .all(|t| dir.join(t).is_file())
    })
}

fn id(args: &[&str]) -> String {
    let output = Command::new("id").args(args).output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl Postgres {
    fn start(bin: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("tally-e2e-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory");
        let run_as = (id(&["-u"]) == "0").then(|| (id(&["-u", "nobody"]), id(&["-g", "nobody"])));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Self {
            dir,
            bin,
            run_as,
            port,
        };
        let pwfile = server.dir.join("pwfile");
        std::fs::write(&pwfile, ADMIN_PASSWORD).expect("the password file");
        if server.run_as.is_some() {
            let owner = Command::new("chown")
                .args(["-R", "nobody:", &server.dir.display().to_string()])
                .status()
                .expect("chown runs");
            assert!(owner.success());
        }
        let data = server.dir.join("data").display().to_string();
        server.tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "--locale=C.UTF-8",
            ],
        );
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            server.dir.display()
        );
        let log = server.dir.join("server.log").display().to_string();
        server.tool(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
        server.psql(
            "postgres",
            "postgres",
            ADMIN_PASSWORD,
            &format!("CREATE USER tally PASSWORD '{PASSWORD}'"),
            None,
        );
        server.psql(
            "postgres",
            "postgres",
            ADMIN_PASSWORD,
            "CREATE DATABASE warehouse OWNER tally",
            None,
        );
        server
    }

    fn command(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("a PostgreSQL tool runs")
    }

    fn tool(&self, tool: &str, args: &[&str]) {
        let output = self.command(tool, args);
        assert!(
            output.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `psql` over TCP as `user`: `command`, or the file `file` run from its
    /// directory.
    fn psql(&self, user: &str, database: &str, password: &str, command: &str, file: Option<&Path>) {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["-v", "ON_ERROR_STOP=1", "-q", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", user, "-d", database])
            .env("PGPASSWORD", password)
            .stdin(Stdio::null());
        match file {
            Some(file) => {
                psql.arg("-f")
                    .arg(file)
                    .current_dir(file.parent().expect("a directory"));
            }
            None => {
                psql.args(["-c", command]);
            }
        }
        let output = psql.output().expect("psql runs");
        assert!(
            output.status.success(),
            "psql {command} {file:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn examples() -> PathBuf {
    chart_dir().join("../../examples")
}

/// The example's PostgreSQL manifests, pointed at `server`, with the password in its
/// Secret.
fn manifests(server: &Postgres) -> String {
    let postgres = examples().join("checkout-experiment-postgres");
    let manifests = examples().join("checkout-experiment/manifests");
    let read = |path: PathBuf| std::fs::read_to_string(&path).expect("an example manifest");
    let warehouse = read(postgres.join("warehouse.yaml"))
        .replace("host: localhost", "host: 127.0.0.1")
        .replace("port: 5432", &format!("port: {}", server.port))
        .replace("sslMode: prefer", "sslMode: disable")
        .replace("password: change-me", &format!("password: {PASSWORD}"));
    [
        warehouse,
        read(postgres.join("tables.yaml")),
        read(manifests.join("metrics.yaml")),
        read(manifests.join("calculations.yaml")),
    ]
    .join("\n---\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_warehouse_with_a_secret_completes_and_the_secret_stays_secret() {
    let Some(bin) = postgres_bindir() else {
        tally_e2e::tool_unavailable("PostgreSQL is not installed (apt-get install postgresql)");
        return;
    };
    for (tool, args) in [("buildah", "--version"), ("kubectl", "version --client")] {
        if Command::new(tool).args(args.split(' ')).output().is_err() {
            tally_e2e::tool_unavailable(&format!("{tool} is not installed"));
            return;
        }
    }
    let server = Postgres::start(bin);
    server.psql(
        "tally",
        "warehouse",
        PASSWORD,
        "",
        Some(&examples().join("checkout-experiment-postgres/load.sql")),
    );

    let Some((plane, agent)) = tally_e2e::cluster::start_plane_with_node().await else {
        return;
    };
    let kubeconfig = plane.kubeconfig_path().to_path_buf();

    tally_e2e::kubectl_prepare(&kubeconfig, NAMESPACE, "tally-worker");
    // The controller's log, to search for the password afterwards.
    let log_path = std::env::temp_dir().join(format!(
        "tally-e2e-pg-controller-{}.log",
        std::process::id()
    ));
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut controller = Command::new(tally_bin())
        .arg("controller")
        .args(["--worker-image", &tally_e2e::cluster::chart_image()])
        .args(["--worker-service-account", "tally-worker"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        .spawn()
        .expect("the controller starts");

    kubectl(
        &kubeconfig,
        &["apply", "-n", NAMESPACE, "-f", "-"],
        Some(&manifests(&server)),
    );
    for name in CALCULATIONS {
        let waited = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "wait",
                "-n",
                NAMESPACE,
                "--for=jsonpath={.status.state}=Completed",
            ])
            .arg(format!("mc/{name}"))
            .arg("--timeout=300s")
            .output()
            .expect("kubectl runs");
        if !waited.status.success() {
            let status = kubectl(
                &kubeconfig,
                &["get", "-n", NAMESPACE, "mc", "-o", "yaml"],
                None,
            );
            panic!("{name} did not complete: {status}");
        }
        let status: Value = serde_json::from_str(&kubectl(
            &kubeconfig,
            &[
                "get",
                "-n",
                NAMESPACE,
                &format!("mc/{name}"),
                "-o",
                "jsonpath={.status}",
            ],
            None,
        ))
        .expect("a status");
        // The same figures as the example on DuckDB.
        let printed = printed_status(name);
        for field in ["times", "metricResults", "analysis"] {
            assert_close(&format!("{name}.{field}"), &printed[field], &status[field]);
        }
    }

    // The password reached the workers by reference only.
    let jobs = kubectl(
        &kubeconfig,
        &["get", "-n", NAMESPACE, "jobs", "-o", "json"],
        None,
    );
    let jobs: Value = serde_json::from_str(&jobs).expect("the Jobs");
    let jobs = jobs["items"].as_array().expect("Jobs");
    assert_eq!(jobs.len(), CALCULATIONS.len());
    for job in jobs {
        let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
        let password = env
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "TALLY_POSTGRES_PASSWORD"))
            .expect("the password variable");
        assert_eq!(
            password["valueFrom"]["secretKeyRef"],
            serde_json::json!({"name": "warehouse-credentials", "key": "password"})
        );
    }
    let mut places = Vec::new();
    for kind in ["jobs", "pods", "metriccalculations", "events", "configmaps"] {
        places.push((
            kind.to_string(),
            kubectl(
                &kubeconfig,
                &["get", "-n", NAMESPACE, kind, "-o", "yaml"],
                None,
            ),
        ));
    }
    let pods: Value = serde_json::from_str(&kubectl(
        &kubeconfig,
        &["get", "-n", NAMESPACE, "pods", "-o", "json"],
        None,
    ))
    .expect("the Pods");
    for pod in pods["items"].as_array().expect("Pods") {
        let name = pod["metadata"]["name"].as_str().expect("a name");
        let logs = agent.logs(NAMESPACE, name, "worker").unwrap_or_default();
        places.push((format!("the log of {name}"), logs));
    }
    let _ = controller.kill();
    let _ = controller.wait();
    places.push((
        "the controller's log".into(),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    ));
    for (place, text) in &places {
        assert!(!text.contains(PASSWORD), "the password is in {place}");
    }
    assert!(
        places
            .iter()
            .any(|(place, text)| place == "jobs" && text.contains("warehouse-credentials")),
        "the Jobs name the Secret"
    );
    std::fs::remove_file(&log_path).ok();
    assert!(agent.errors().is_empty(), "{:?}", agent.errors());
    agent.shutdown().await;
    plane.shutdown();
}

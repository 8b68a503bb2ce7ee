//! A throwaway PostgreSQL server for a test: `initdb` into a temporary directory,
//! the server on 127.0.0.1 at a free port with its unix socket in that directory,
//! stopped and the directory removed when the value drops, a panic included.
//!
//! The server binaries come from `pg_config --bindir` or /usr/lib/postgresql/*/bin.
//! Without them the test is skipped, unless `TALLY_REQUIRE_TOOLS` is set (CI), where
//! it fails. PostgreSQL refuses to run as root: as root the server runs as `nobody`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The superuser's password, and those of the user calculations sign in as.
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const USER: &str = "tally";
pub const PASSWORD: &str = "s3cret-tally-pw";
pub const DATABASE: &str = "warehouse";

pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    pub port: u16,
}

fn bindir() -> Option<PathBuf> {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut candidates: Vec<PathBuf> = from_config.into_iter().collect();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        found.sort();
        found.reverse();
        candidates.extend(found);
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// `nobody`'s ids when running as root.
fn unprivileged() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> u32 {
        let out = Command::new("id").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    if id(&["-u"]) != 0 {
        return None;
    }
    Some((id(&["-u", "nobody"]), id(&["-g", "nobody"])))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// A running server with a database [`DATABASE`] and a user [`USER`] who owns
    /// it; `None` (the test is skipped) when PostgreSQL is not installed.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, false)
    }

    /// With `tls`, the server also speaks TLS, its certificate (for `localhost` and
    /// 127.0.0.1) signed by the CA at [`Self::ca_path`].
    pub fn start_with(test: &str, tls: bool) -> Option<Self> {
        let Some(bin) = bindir() else {
            assert!(
                std::env::var_os("TALLY_REQUIRE_TOOLS").is_none(),
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
            );
            println!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("tally-pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run_as = unprivileged();
        let server = Self {
            dir,
            bin,
            run_as,
            port: free_port(),
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid)).unwrap();
        }
        let pwfile = server.dir.join("pwfile");
        std::fs::write(&pwfile, ADMIN_PASSWORD).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            server.port,
            server.dir.display()
        );
        if tls {
            server.certificates();
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        server.run(
            "pg_ctl",
            &[
                "-D",
                &server.data().display().to_string(),
                "-l",
                &server.dir.join("server.log").display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        // One statement each: CREATE DATABASE refuses a transaction block.
        server.admin(&format!("CREATE USER {USER} PASSWORD '{PASSWORD}'"));
        server.admin(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"));
        Some(server)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A CA and a server certificate it signs, by `openssl`; the server's key
    /// readable by the server's user only.
    fn certificates(&self) {
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .output()
                .expect("openssl runs");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tally-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            self.dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let data = self.data();
        for file in ["server.crt", "server.key"] {
            std::fs::copy(self.dir.join(file), data.join(file)).unwrap();
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(data.join(file), Some(uid), Some(gid)).unwrap();
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.command(tool, args);
        assert!(
            output.status.success(),
            "{tool} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// A server tool, run as the server's user.
    fn command(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let program = self.bin.join(tool);
        let mut command = match self.run_as {
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
            .unwrap_or_else(|e| panic!("{tool}: {e}"))
    }

    /// Runs statements as the superuser in `database`.
    pub fn admin_in(&self, database: &str, sql: &str) {
        let config = format!(
            "host=127.0.0.1 port={} user=postgres password={ADMIN_PASSWORD} dbname={database}",
            self.port
        );
        block_on(async {
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        });
    }

    pub fn admin(&self, sql: &str) {
        self.admin_in("postgres", sql)
    }

    /// The first column of every row of a query, as text.
    pub fn query_texts(&self, sql: &str) -> Vec<String> {
        let config = format!(
            "host=127.0.0.1 port={} user=postgres password={ADMIN_PASSWORD} dbname=postgres",
            self.port
        );
        block_on(async {
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .simple_query(sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some(row.get(0).unwrap_or("").to_string())
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// Loads a (gzipped) CSV file into `table` of [`DATABASE`], owned by [`USER`],
    /// with the column types DuckDB reads from it; time columns become `timestamptz`,
    /// or `timestamp` (zone-less, UTC) when `zoneless`.
    pub fn load_csv(&self, table: &str, file: &Path, zoneless: bool) {
        let duck = duckdb::Connection::open_in_memory().unwrap();
        let source = format!(
            "read_csv('{}', header = true, sample_size = -1)",
            file.display()
        );
        let mut columns = Vec::new();
        {
            let mut describe = duck
                .prepare(&format!("DESCRIBE SELECT * FROM {source}"))
                .unwrap();
            let mut rows = describe.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                let name: String = row.get(0).unwrap();
                let ty: String = row.get(1).unwrap();
                let pg = match ty.as_str() {
                    "BIGINT" | "INTEGER" | "SMALLINT" | "TINYINT" => "BIGINT",
                    "DOUBLE" | "FLOAT" => "DOUBLE PRECISION",
                    t if t.starts_with("DECIMAL") => "NUMERIC",
                    "BOOLEAN" => "BOOLEAN",
                    "DATE" => "DATE",
                    t if t.starts_with("TIMESTAMP") && zoneless => "TIMESTAMP",
                    t if t.starts_with("TIMESTAMP") => "TIMESTAMPTZ",
                    _ => "TEXT",
                };
                columns.push(format!("\"{name}\" {pg}"));
            }
        }
        let plain = self.dir.join(format!("{table}.csv"));
        // Instants are written as UTC with a `+00` offset, which a `timestamp`
        // column ignores and a `timestamptz` column reads.
        duck.execute_batch(&format!(
            "COPY (SELECT * FROM {source}) TO '{}' (HEADER)",
            plain.display()
        ))
        .unwrap();
        let csv = std::fs::read(&plain).unwrap();
        let create = format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({}); ALTER TABLE {table} OWNER TO {USER};",
            columns.join(", ")
        );
        let config = format!(
            "host=127.0.0.1 port={} user=postgres password={ADMIN_PASSWORD} dbname={DATABASE} options='-c TimeZone=UTC'",
            self.port
        );
        block_on(async move {
            use futures::SinkExt;
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(&create).await.unwrap();
            let sink = client
                .copy_in(&format!(
                    "COPY {table} FROM STDIN (FORMAT csv, HEADER true)"
                ))
                .await
                .unwrap();
            futures::pin_mut!(sink);
            sink.send(std::io::Cursor::new(csv)).await.unwrap();
            sink.finish().await.unwrap();
            // As a warehouse's tables have them.
            client
                .batch_execute(&format!("ANALYZE {table}"))
                .await
                .unwrap();
        });
    }

    /// A Warehouse of engine `postgres` on this server, its password read from
    /// `password_env`.
    pub fn warehouse(&self, name: &str, password_env: &str) -> Value {
        serde_json::json!({
            "apiVersion": "tally.dev/v1alpha1", "kind": "Warehouse",
            "metadata": {"name": name, "namespace": "cases"},
            "spec": {
                "engine": "postgres",
                "postgres": {
                    "host": "127.0.0.1", "port": self.port, "database": DATABASE,
                    "user": USER, "sslMode": "disable",
                    "passwordSecretRef": {"name": "warehouse-credentials", "key": "password"},
                    "passwordEnv": password_env,
                },
            },
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let stopped = self.command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        // Should pg_ctl fail, the pid file still names the postmaster.
        if !stopped.status.success()
            && let Ok(pid) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            && let Some(pid) = pid.lines().next()
        {
            let _ = Command::new("kill").args(["-QUIT", pid]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a future on a runtime of its own (tests are synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

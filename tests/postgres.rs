//! Calculations on PostgreSQL, against a throwaway server each test starts
//! (`common::postgres`): the reference cases match `expected.json` as on DuckDB,
//! `tally run` on the example equals its DuckDB run, a cancelled worker's query
//! leaves the server at once, and the errors a user can fix name what to fix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::cases::{resources, table_name};
use common::postgres::{DATABASE, PASSWORD, Postgres, USER};
use common::{case_dirs, compare_to_expected, testdata_dir};
use tally::api::Engine;
use tally::plan::{self, CalculationPlan, Catalog, dialect};

/// The variable the tests' Warehouses read the password from. Each test sets it to
/// the same value before any calculation runs.
const PASSWORD_ENV: &str = "TALLY_TEST_POSTGRES_PASSWORD";

fn set_password() {
    // SAFETY: every test of this binary writes the same value, and nothing else in
    // the process writes the environment.
    unsafe { std::env::set_var(PASSWORD_ENV, PASSWORD) };
}

/// The schema a dataset's tables are loaded into.
fn schema_of(dataset: &str) -> String {
    dataset.replace('-', "_")
}

/// Loads every file of `testdata/data/<dataset>` into `<schema>.<table>`. The
/// sessions' times are a zone-less `timestamp` (read as UTC), the others'
/// `timestamptz`.
fn load_dataset(server: &Postgres, dataset: &str) {
    let schema = schema_of(dataset);
    server.admin_in(
        DATABASE,
        &format!("CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {USER}"),
    );
    let dir = testdata_dir().join("data").join(dataset);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let table = table_name(&name).replace('-', "_");
        server.load_csv(&format!("{schema}.{table}"), &file, table == "sessions");
    }
}

fn calculation_on(catalog: &mut Catalog, server: &Postgres, calculation: Value) -> Value {
    calculation_on_schema(catalog, server, calculation, None)
}

/// `calculation` on the server's Warehouse `pg`, whose `schema` is `schema`.
fn calculation_on_schema(
    catalog: &mut Catalog,
    server: &Postgres,
    mut calculation: Value,
    schema: Option<&str>,
) -> Value {
    let mut warehouse = server.warehouse("pg", PASSWORD_ENV);
    if let Some(schema) = schema {
        warehouse["spec"]["postgres"]["schema"] = json!(schema);
    }
    catalog.add_warehouse(serde_json::from_value(warehouse).unwrap());
    calculation["spec"]["warehouse"] = json!("pg");
    calculation
}

/// How a reference case reads its tables and spells its statement.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// Schema-qualified table names, in PostgreSQL's dialect.
    Qualified,
    /// Bare table names, found in the Warehouse's `schema`.
    WarehouseSchema,
    /// As `Qualified`, with the buckets a `UNION ALL` instead of `GROUPING SETS`.
    WithoutGroupingSets,
}

/// The plan of a reference case on the server.
fn case_plan(server: &Postgres, dir: &Path) -> CalculationPlan {
    case_plan_in(server, dir, Form::Qualified)
}

fn case_plan_in(server: &Postgres, dir: &Path, form: Form) -> CalculationPlan {
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let dataset = case["data"].as_str().unwrap().to_string();
    let data = testdata_dir().join("data").join(&dataset);
    let schema = schema_of(&dataset);
    let in_schema = schema.clone();
    let qualified = !matches!(form, Form::WarehouseSchema);
    let source = move |file: &str| {
        let table = table_name(file).replace('-', "_");
        if qualified {
            json!({"table": format!("{in_schema}.{table}")})
        } else {
            json!({"table": table})
        }
    };
    let (mut catalog, calculation) = resources(&case, &data, &source);
    let calculation = calculation_on_schema(
        &mut catalog,
        server,
        serde_json::to_value(&calculation).unwrap(),
        (!qualified).then_some(schema.as_str()),
    );
    let calculation = serde_json::from_value(calculation).unwrap();
    let resolved =
        plan::resolve(&calculation, &catalog).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    match form {
        Form::WithoutGroupingSets => {
            let plan = plan::compile_in(
                &resolved,
                &dialect::WithoutGroupingSets(dialect::of(Engine::Postgres)),
            );
            assert!(!plan.sql.contains("GROUPING SETS"), "{}", plan.sql);
            plan
        }
        Form::Qualified | Form::WarehouseSchema => {
            let plan = plan::compile(&resolved);
            assert!(plan.sql.contains("GROUPING SETS"), "{}", plan.sql);
            // Bare names are looked up in the Warehouse's schema only.
            assert_eq!(
                plan.sql.contains(&format!("\"{schema}\".")),
                qualified,
                "{}",
                plan.sql
            );
            plan
        }
    }
}

/// Every reference case on the server matches `expected.json`: with schema-qualified
/// tables, with bare ones in the Warehouse's `schema`, and with the buckets grouped
/// without `GROUPING SETS`.
#[test]
fn reference_cases_match_expected_results_on_postgres() {
    let Some(server) = Postgres::start("cases") else {
        return;
    };
    set_password();
    for dataset in ["checkout", "three-arm"] {
        load_dataset(&server, dataset);
    }
    let cases = case_dirs();
    assert!(cases.len() >= 11, "found {} cases", cases.len());
    let mut failures = Vec::new();
    for form in [
        Form::Qualified,
        Form::WarehouseSchema,
        Form::WithoutGroupingSets,
    ] {
        for dir in &cases {
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                    .unwrap();
            let plan = case_plan_in(&server, dir, form);
            let status = tally::cli::run_plan(&plan)
                .unwrap_or_else(|e| panic!("{} ({form:?}): {e}\n{}", dir.display(), plan.sql));
            let actual = serde_json::to_value(&status).unwrap();
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            for problem in compare_to_expected(&expected, &actual) {
                failures.push(format!("{name} ({form:?}): {problem}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The PostgreSQL example's manifests, pointed at `server`, in `dir`.
fn postgres_example(server: &Postgres, dir: &Path) -> Vec<PathBuf> {
    let source = example_dir().join("checkout-experiment-postgres");
    std::fs::create_dir_all(dir).unwrap();
    let warehouse = std::fs::read_to_string(source.join("warehouse.yaml"))
        .unwrap()
        .replace("host: localhost", "host: 127.0.0.1")
        .replace("port: 5432", &format!("port: {}", server.port))
        .replace("sslMode: prefer", "sslMode: disable");
    std::fs::write(dir.join("warehouse.yaml"), warehouse).unwrap();
    std::fs::copy(source.join("tables.yaml"), dir.join("tables.yaml")).unwrap();
    let manifests = example_dir().join("checkout-experiment/manifests");
    vec![
        dir.to_path_buf(),
        manifests.join("metrics.yaml"),
        manifests.join("calculations.yaml"),
    ]
}

/// Loads the example's data as its `load.sql` does.
fn load_example(server: &Postgres) {
    server.admin_in(
        DATABASE,
        &format!("CREATE SCHEMA IF NOT EXISTS checkout AUTHORIZATION {USER}"),
    );
    let data = example_dir().join("checkout-experiment/data");
    for table in ["exposures", "purchases", "sessions", "users"] {
        server.load_csv(
            &format!("checkout.{table}"),
            &data.join(format!("{table}.csv.gz")),
            false,
        );
    }
}

fn tally_run(files: &[PathBuf], password: Option<&str>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command.args(["run", "-o", "json"]);
    for file in files {
        command.arg("-f").arg(file);
    }
    command.env_remove("PGPASSWORD");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.output().unwrap()
}

#[test]
fn tally_run_on_postgres_equals_the_duckdb_run() {
    let Some(server) = Postgres::start("example") else {
        return;
    };
    load_example(&server);
    let scratch =
        std::env::temp_dir().join(format!("tally-manifests-example-{}", std::process::id()));
    let files = postgres_example(&server, &scratch);
    let on_postgres = tally_run(&files, Some(PASSWORD));
    assert!(
        on_postgres.status.success(),
        "{}",
        String::from_utf8_lossy(&on_postgres.stderr)
    );
    let on_duckdb = tally_run(&[example_dir().join("checkout-experiment")], None);
    assert!(on_duckdb.status.success());
    let postgres: Value = serde_json::from_slice(&on_postgres.stdout).unwrap();
    let duckdb: Value = serde_json::from_slice(&on_duckdb.stdout).unwrap();
    let calculations = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["metadata"]["name"].as_str().unwrap().to_string(),
                    c["status"].clone(),
                )
            })
            .collect()
    };
    let (postgres, duckdb) = (calculations(&postgres), calculations(&duckdb));
    assert_eq!(postgres.len(), 4);
    assert_eq!(
        postgres.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        duckdb.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let mut problems = Vec::new();
    for ((name, on_postgres), (_, on_duckdb)) in postgres.iter().zip(&duckdb) {
        // Sums over rows in another order differ in their last bits only.
        for problem in compare_to_expected(on_duckdb, on_postgres) {
            problems.push(format!("{name}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Without the password, the run names the Warehouse and its field.
    let refused = tally_run(&files, None);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("Warehouse/postgres: spec.postgres.passwordSecretRef"),
        "{message}"
    );
    std::fs::remove_dir_all(&scratch).ok();
}

/// The first calculation of the PostgreSQL example, its plan as a Job gets it.
fn example_plan(server: &Postgres, dir: &Path) -> Value {
    let files = postgres_example(server, dir);
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command.arg("plan");
    for file in &files {
        command.arg("-f").arg(file);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plans: Value = serde_json::from_slice(&output.stdout).unwrap();
    plans[0].clone()
}

fn tally_sessions(server: &Postgres) -> Vec<String> {
    server.query_texts(
        "SELECT coalesce(state, '') || ': ' || query FROM pg_stat_activity WHERE application_name = 'tally'",
    )
}

#[test]
fn a_cancelled_worker_stops_its_query_and_leaves_the_server() {
    let Some(server) = Postgres::start("cancel") else {
        return;
    };
    load_example(&server);
    let scratch =
        std::env::temp_dir().join(format!("tally-manifests-cancel-{}", std::process::id()));
    let mut plan = example_plan(&server, &scratch);
    plan["sql"] = json!("SELECT pg_sleep(600) IS NULL AS slept");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("worker")
        .env_clear()
        .env("TALLY_PLAN", plan.to_string())
        .env("TALLY_JOB_NAME", "calc-1")
        .env("TALLY_NAMESPACE", "default")
        .env("TALLY_TERMINATION_LOG", scratch.join("termination-log"))
        .env("KUBECONFIG", scratch.join("no-kubeconfig"))
        // As the Job's Secret reference sets it.
        .env(tally::job_contract::POSTGRES_PASSWORD_ENV, PASSWORD)
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tally_sessions(&server)
        .iter()
        .any(|s| s.starts_with("active") && s.contains("pg_sleep"))
    {
        assert!(
            Instant::now() < deadline,
            "the query never started: {:?}",
            tally_sessions(&server)
        );
        if let Some(status) = worker.try_wait().unwrap() {
            panic!(
                "the worker exited ({status}): {}",
                std::fs::read_to_string(scratch.join("termination-log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let signalled = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    while !tally_sessions(&server).is_empty() {
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "the backend is still there 2 s after SIGTERM: {:?}",
            tally_sessions(&server)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = worker.wait().unwrap();
    assert!(!status.success());
    let reason = std::fs::read_to_string(scratch.join("termination-log")).unwrap_or_default();
    assert!(reason.contains("cancelled"), "{reason}");
    std::fs::remove_dir_all(&scratch).ok();
}

/// The error of running `plan` with the tests' password.
fn error_of(plan: &CalculationPlan) -> String {
    set_password();
    tally::cli::run_plan(plan)
        .map(|_| ())
        .expect_err("the calculation should fail")
        .to_string()
}

#[test]
fn errors_name_the_resource_and_field_to_fix_and_never_the_password() {
    let Some(server) = Postgres::start("errors") else {
        return;
    };
    set_password();
    load_dataset(&server, "checkout");
    let dir = &case_dirs()[0];
    let plan = case_plan(&server, dir);
    let with = |change: &dyn Fn(&mut tally::api::PostgresSettings)| {
        let mut plan = plan.clone();
        change(plan.engine.postgres.as_mut().unwrap());
        plan
    };
    let expect = |plan: &CalculationPlan, prefix: &str, detail: &str| {
        let message = error_of(plan);
        assert!(message.contains(prefix), "{message}");
        assert!(message.contains(detail), "{message}");
        assert!(
            !message.contains(PASSWORD),
            "the password leaked: {message}"
        );
        assert!(
            !message.contains("wrong-password"),
            "the password leaked: {message}"
        );
    };

    // Wrong password.
    let wrong = with(&|p| p.password_env = Some("TALLY_TEST_WRONG_PASSWORD".into()));
    // SAFETY: as in `set_password`, a variable only this test reads.
    unsafe { std::env::set_var("TALLY_TEST_WRONG_PASSWORD", "wrong-password") };
    expect(
        &wrong,
        "Warehouse/pg: spec.postgres.passwordSecretRef:",
        "password authentication failed",
    );

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = with(&|p| p.port = Some(closed));
    expect(
        &unreachable,
        "Warehouse/pg: spec.postgres.host:",
        &format!("could not connect to 127.0.0.1:{closed}"),
    );

    // A table that does not exist.
    let mut missing = plan.clone();
    let check = missing
        .sources
        .iter_mut()
        .find(|s| s.resource.starts_with("FactTable/"))
        .unwrap();
    let resource = check.resource.clone();
    check.sql = "SELECT * FROM checkout.no_such_table AS source LIMIT 0".into();
    expect(
        &missing,
        &format!("{resource}: spec.source.table:"),
        "does not exist",
    );

    // A missing column.
    let mut column = plan.clone();
    let check = column
        .sources
        .iter_mut()
        .find(|s| s.resource.starts_with("FactTable/"))
        .unwrap();
    check.columns[0].column = "no_such_column".into();
    let field = check.columns[0].field.clone();
    expect(
        &column,
        &format!("{resource}: {field}:"),
        "column \"no_such_column\" not found",
    );

    // A table the user may not read.
    server.admin_in(
        DATABASE,
        "CREATE TABLE checkout.secret_table (user_id text); REVOKE ALL ON checkout.secret_table FROM PUBLIC",
    );
    let mut denied = plan.clone();
    let check = denied
        .sources
        .iter_mut()
        .find(|s| s.resource.starts_with("FactTable/"))
        .unwrap();
    check.sql = "SELECT * FROM checkout.secret_table AS source LIMIT 0".into();
    expect(
        &denied,
        &format!("{resource}: spec.source.table:"),
        "permission denied",
    );

    // A statement that outlives the Warehouse's timeout.
    let mut slow = with(&|p| {
        p.statement_timeout = Some("1s".parse().unwrap());
    });
    slow.sql = "SELECT pg_sleep(5) IS NULL AS slept".into();
    expect(
        &slow,
        "Warehouse/pg: spec.postgres.statementTimeout:",
        "ran longer than 1s",
    );
}

/// Whether a session of these engine settings runs over TLS, or its error.
fn ssl_of(engine: &tally::plan::EngineSettings) -> Result<bool, String> {
    let cancellation = tally::engine::Cancellation::default();
    let session =
        tally::engine::postgres::Session::open(engine, &cancellation).map_err(|e| e.to_string())?;
    let result = session
        .query(
            "SELECT CAST(ssl AS INT) AS ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &cancellation,
        )
        .map_err(|e| e.to_string())?;
    Ok(result.rows == vec![vec![tally::plan::SqlValue::Int(1)]])
}

#[test]
fn ssl_modes_encrypt_and_verify_full_checks_the_server_against_the_ca() {
    let Some(server) = Postgres::start_with("tls", true) else {
        return;
    };
    set_password();
    let mut catalog = Catalog::default();
    let calculation = calculation_on(&mut catalog, &server, json!({"spec": {}}));
    assert_eq!(calculation["spec"]["warehouse"], "pg");
    let warehouse = &catalog.warehouses["pg"];
    let engine = |mode: &str, host: &str| {
        let mut settings = warehouse.spec.postgres.clone().unwrap();
        settings.ssl_mode = Some(serde_json::from_value(json!(mode)).unwrap());
        settings.host = host.to_string();
        tally::plan::EngineSettings {
            engine: tally::api::Engine::Postgres,
            duckdb: Default::default(),
            postgres: Some(settings),
            warehouse: Some("Warehouse/pg".into()),
        }
    };
    assert_eq!(ssl_of(&engine("disable", "127.0.0.1")), Ok(false));
    assert_eq!(ssl_of(&engine("prefer", "127.0.0.1")), Ok(true));
    assert_eq!(ssl_of(&engine("require", "127.0.0.1")), Ok(true));
    // Checked against the system's roots, the test CA's certificate is refused.
    let refused = ssl_of(&engine("verify-full", "localhost")).unwrap_err();
    assert!(
        refused.starts_with("Warehouse/pg: spec.postgres.sslMode:"),
        "{refused}"
    );
    // With the CA (as a Job gets it from the Warehouse's caCertificate), it passes,
    // for the name the certificate has.
    let ca = std::fs::read_to_string(server.ca_path()).unwrap();
    // SAFETY: only this test reads or writes this variable.
    unsafe { std::env::set_var(tally::job_contract::POSTGRES_CA_ENV, ca) };
    assert_eq!(ssl_of(&engine("verify-full", "localhost")), Ok(true));
    unsafe { std::env::remove_var(tally::job_contract::POSTGRES_CA_ENV) };
}

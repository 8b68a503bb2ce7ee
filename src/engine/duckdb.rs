//! Embedded DuckDB.

use std::sync::Arc;

use duckdb::{AccessMode, Config, Connection, types::ValueRef};

use crate::api::DuckDbSettings;
use crate::plan::{SourceCheck, SqlValue, check_statement, quote_literal};

use super::{Cancellation, EngineError, Interrupt, QueryResult};

struct DuckDbInterrupt(Arc<duckdb::InterruptHandle>);

impl Interrupt for DuckDbInterrupt {
    fn interrupt(&self) {
        self.0.interrupt();
    }
}

fn setting_error(setting: &'static str) -> impl Fn(duckdb::Error) -> EngineError {
    move |e| EngineError::Setting {
        setting,
        message: e.to_string(),
    }
}

/// Dense integer entity ids up to 2^20 (about a million) aggregate into a perfect
/// hash table instead of a general one; DuckDB's default stops at 2^12.
const PERFECT_HASH_BITS: &str = "20";

fn open(settings: &DuckDbSettings) -> Result<Connection, EngineError> {
    let connection = open_configured(settings)?;
    lock_down(&connection, settings)?;
    Ok(connection)
}

/// What a calculation may touch (DESIGN §7): files only under the data directories
/// (and the database and scratch directory, which DuckDB adds itself), no extension
/// fetched or loaded behind the calculation's back, and no setting changed by the SQL
/// that follows, which `sql` sources and filters are part of.
fn lock_down(connection: &Connection, settings: &DuckDbSettings) -> Result<(), EngineError> {
    let mut statements = String::new();
    if !settings.data_directories.is_empty() {
        let directories: Vec<String> = settings
            .data_directories
            .iter()
            .map(|directory| quote_literal(directory))
            .collect();
        statements.push_str(&format!(
            "SET allowed_directories = [{}];\n",
            directories.join(", ")
        ));
    }
    statements.push_str("SET enable_external_access = false;\nSET lock_configuration = true;\n");
    connection
        .execute_batch(&statements)
        .map_err(setting_error("dataDirectories"))
}

fn open_configured(settings: &DuckDbSettings) -> Result<Connection, EngineError> {
    let mut config = Config::default()
        .with("perfect_ht_threshold", PERFECT_HASH_BITS)
        .map_err(setting_error("perfect_ht_threshold"))?
        .with("autoinstall_known_extensions", "false")
        .map_err(setting_error("autoinstall_known_extensions"))?
        .with("autoload_known_extensions", "false")
        .map_err(setting_error("autoload_known_extensions"))?
        .with("allow_community_extensions", "false")
        .map_err(setting_error("allow_community_extensions"))?;
    if let Some(threads) = settings.threads {
        config = config
            .threads(i64::from(threads))
            .map_err(setting_error("threads"))?;
    }
    if let Some(directory) = &settings.temp_directory {
        config = config
            .with("temp_directory", directory)
            .map_err(setting_error("tempDirectory"))?;
    }
    if let Some(limit) = &settings.memory_limit {
        config = config
            .max_memory(limit)
            .map_err(setting_error("memoryLimit"))?;
    }
    match &settings.database {
        Some(path) => {
            let config = config
                .access_mode(AccessMode::ReadOnly)
                .map_err(setting_error("database"))?;
            Connection::open_with_flags(path, config).map_err(|e| EngineError::Open {
                path: path.clone(),
                message: e.to_string(),
            })
        }
        None => Connection::open_in_memory_with_flags(config).map_err(|e| EngineError::Open {
            path: ":memory:".into(),
            message: e.to_string(),
        }),
    }
}

fn value(column: &str, v: ValueRef<'_>) -> Result<SqlValue, EngineError> {
    let out_of_range = || EngineError::Value {
        column: column.to_string(),
        message: "integer out of range".into(),
    };
    Ok(match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Boolean(b) => SqlValue::Int(i64::from(b)),
        ValueRef::TinyInt(i) => SqlValue::Int(i64::from(i)),
        ValueRef::SmallInt(i) => SqlValue::Int(i64::from(i)),
        ValueRef::Int(i) => SqlValue::Int(i64::from(i)),
        ValueRef::BigInt(i) => SqlValue::Int(i),
        ValueRef::HugeInt(i) => SqlValue::Int(i64::try_from(i).map_err(|_| out_of_range())?),
        ValueRef::UTinyInt(i) => SqlValue::Int(i64::from(i)),
        ValueRef::USmallInt(i) => SqlValue::Int(i64::from(i)),
        ValueRef::UInt(i) => SqlValue::Int(i64::from(i)),
        ValueRef::UBigInt(i) => SqlValue::Int(i64::try_from(i).map_err(|_| out_of_range())?),
        ValueRef::Float(f) => SqlValue::Float(f64::from(f)),
        ValueRef::Double(f) => SqlValue::Float(f),
        ValueRef::Decimal(d) => {
            SqlValue::Float(d.to_string().parse().map_err(|_| EngineError::Value {
                column: column.to_string(),
                message: format!("decimal {d} is not a number"),
            })?)
        }
        ValueRef::Text(bytes) => SqlValue::Text(String::from_utf8_lossy(bytes).into_owned()),
        other => {
            return Err(EngineError::Value {
                column: column.to_string(),
                message: format!("unsupported type {:?}", other.data_type()),
            });
        }
    })
}

/// Runs `sql` on a fresh connection and collects every row.
pub fn run(
    settings: &DuckDbSettings,
    sql: &str,
    cancellation: &Cancellation,
) -> Result<QueryResult, EngineError> {
    Session::open(settings)?.query(sql, cancellation)
}

/// An open database. A calculation gets a fresh one; the benchmark keeps one
/// so that it times statements on a warm engine rather than the opening of a database.
pub struct Session {
    connection: Connection,
}

impl Session {
    pub fn open(settings: &DuckDbSettings) -> Result<Self, EngineError> {
        Ok(Self {
            connection: open(settings)?,
        })
    }

    /// Checks that a source can be read and has the columns the calculation reads, in
    /// one query that returns no row (and, only when that fails on a glob, a second
    /// that counts the files it matches).
    pub fn check_source(
        &self,
        check: &SourceCheck,
        cancellation: &Cancellation,
    ) -> Result<(), EngineError> {
        let error = |field: &str, message: String| EngineError::Source {
            resource: check.resource.clone(),
            field: field.to_string(),
            message,
        };
        let columns = match self.query(&check.sql, cancellation) {
            Ok(result) => result.columns,
            Err(EngineError::Query(message)) => {
                if let Some(glob) = &check.files {
                    // Only a clearer message: when this fails too, the first error
                    // stands, still naming the resource and field.
                    let matched = self.query(
                        &format!(
                            "SELECT count(*) AS files FROM glob({})",
                            quote_literal(glob)
                        ),
                        cancellation,
                    );
                    match matched {
                        Ok(matched)
                            if matched.rows.first().and_then(|row| row.first())
                                == Some(&SqlValue::Int(0)) =>
                        {
                            return Err(error(&check.field, format!("no file matches {glob:?}")));
                        }
                        Err(EngineError::Cancelled) => return Err(EngineError::Cancelled),
                        _ => {}
                    }
                }
                return Err(error(&check.field, message));
            }
            Err(other) => return Err(other),
        };
        // DuckDB matches identifiers, quoted ones too, regardless of case.
        super::check_columns(check, &columns, |a, b| a.eq_ignore_ascii_case(b))
    }

    /// Runs `sql`, which must be one statement, and collects every row.
    pub fn query(
        &self,
        sql: &str,
        cancellation: &Cancellation,
    ) -> Result<QueryResult, EngineError> {
        // `prepare` runs every statement of a text but the last: a second statement
        // must never get that far, whatever made the text.
        check_statement(sql).map_err(EngineError::Refused)?;
        let connection = &self.connection;
        cancellation.start(Box::new(DuckDbInterrupt(connection.interrupt_handle())))?;
        let query_error = |e: duckdb::Error| {
            if cancellation.is_requested() {
                EngineError::Cancelled
            } else {
                EngineError::Query(e.to_string())
            }
        };
        let mut statement = connection.prepare(sql).map_err(query_error)?;
        let mut rows = statement.query([]).map_err(query_error)?;
        let columns: Vec<String> = rows.as_ref().map(|s| s.column_names()).unwrap_or_default();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(query_error)? {
            let mut values = Vec::with_capacity(columns.len());
            for (i, column) in columns.iter().enumerate() {
                let v = row.get_ref(i).map_err(query_error)?;
                values.push(value(column, v)?);
            }
            out.push(values);
        }
        Ok(QueryResult { columns, rows: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_of_several_statements_is_refused_before_any_runs() {
        let file = std::env::temp_dir().join(format!("tally-refused-{}.csv", std::process::id()));
        let sql = format!(
            "SELECT 1; COPY (SELECT 42 AS pwned) TO '{}'; SELECT 2",
            file.display()
        );
        let error = run(&DuckDbSettings::default(), &sql, &Cancellation::default()).unwrap_err();
        assert!(
            matches!(error, EngineError::Refused("holds more than one statement")),
            "{error}"
        );
        assert!(!file.exists());
        let result = run(
            &DuckDbSettings::default(),
            "SELECT 42 AS answer;",
            &Cancellation::default(),
        )
        .unwrap();
        assert_eq!(result.rows, vec![vec![SqlValue::Int(42)]]);
    }

    #[test]
    fn the_temp_directory_setting_reaches_duckdb() {
        let directory = std::env::temp_dir().join(format!("tally-spill-{}", std::process::id()));
        let settings = DuckDbSettings {
            temp_directory: Some(directory.display().to_string()),
            ..DuckDbSettings::default()
        };
        let result = run(
            &settings,
            "SELECT current_setting('temp_directory') AS directory",
            &Cancellation::default(),
        )
        .unwrap();
        assert_eq!(
            result.rows,
            vec![vec![SqlValue::Text(directory.display().to_string())]]
        );
    }

    const SLOW: &str =
        "SELECT count(*) AS n FROM range(1000000000000) AS a(i) WHERE hash(i) % 7 = 3";

    #[test]
    fn a_cancel_before_the_statement_starts_stops_it_before_it_runs() {
        let file = std::env::temp_dir().join(format!("tally-early-{}.csv", std::process::id()));
        let cancellation = Cancellation::default();
        cancellation.cancel();
        let sql = format!("COPY (SELECT 42 AS n) TO '{}'", file.display());
        let error = run(&DuckDbSettings::default(), &sql, &cancellation).unwrap_err();
        assert!(matches!(error, EngineError::Cancelled), "{error}");
        assert!(!file.exists());
    }

    #[test]
    fn a_cancel_stops_a_running_statement() {
        let cancellation = Cancellation::default();
        let canceller = cancellation.clone();
        let started = std::time::Instant::now();
        let stop = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            canceller.cancel();
        });
        let error = run(&DuckDbSettings::default(), SLOW, &cancellation).unwrap_err();
        stop.join().unwrap();
        assert!(matches!(error, EngineError::Cancelled), "{error}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the statement ran on for {:?}",
            started.elapsed()
        );
    }

    /// A directory of its own with one CSV file, for the access tests.
    fn data_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-access-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("facts.csv"), "user_id,amount\n1,2.5\n").unwrap();
        dir
    }

    #[test]
    fn files_outside_the_data_directories_cannot_be_read() {
        let dir = data_dir("outside");
        let settings = DuckDbSettings {
            data_directories: vec![dir.display().to_string()],
            ..DuckDbSettings::default()
        };
        let inside = format!(
            "SELECT sum(amount) AS s FROM read_csv('{}')",
            dir.join("facts.csv").display()
        );
        let result = run(&settings, &inside, &Cancellation::default()).unwrap();
        assert_eq!(result.rows, vec![vec![SqlValue::Float(2.5)]]);

        let secret = std::env::temp_dir().join(format!("tally-secret-{}", std::process::id()));
        std::fs::write(&secret, "hunter2-token").unwrap();
        for attack in [
            format!("SELECT content AS c FROM read_text('{}')", secret.display()),
            format!("SELECT * FROM read_csv('{}')", secret.display()),
            "SELECT content AS c FROM read_text('/proc/self/environ')".to_string(),
            format!(
                "SELECT * FROM read_csv('{}/../{}')",
                dir.display(),
                secret.file_name().unwrap().to_string_lossy()
            ),
            format!(
                "COPY (SELECT 1 AS x) TO '{}'",
                std::env::temp_dir().join("tally-written.csv").display()
            ),
        ] {
            let error = run(&settings, &attack, &Cancellation::default())
                .unwrap_err()
                .to_string();
            assert!(
                !error.contains("hunter2"),
                "{attack}: the file's content leaked: {error}"
            );
            assert!(error.contains("Permission"), "{attack}: {error}");
        }
        std::fs::remove_file(&secret).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_sql_cannot_widen_its_own_access_or_load_extensions() {
        let dir = data_dir("locked");
        let settings = DuckDbSettings {
            data_directories: vec![dir.display().to_string()],
            ..DuckDbSettings::default()
        };
        for attack in [
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
            "SET lock_configuration = false",
            "SET autoinstall_known_extensions = true",
            "INSTALL httpfs",
            "LOAD httpfs",
            "ATTACH '/tmp/tally-attached.db' AS other",
        ] {
            let sql = format!("SELECT 1 AS one FROM (SELECT 1) AS t WHERE true; {attack}");
            // Behind a query, the engine refuses the second statement before any runs.
            assert!(
                run(&settings, &sql, &Cancellation::default()).is_err(),
                "{attack}"
            );
            let error = run(&settings, attack, &Cancellation::default())
                .expect_err(attack)
                .to_string();
            println!("{attack}: {error}");
            assert!(
                ["lock", "Permission", "disabled", "external access"]
                    .iter()
                    .any(|reason| error.contains(reason)),
                "{attack} failed for another reason: {error}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

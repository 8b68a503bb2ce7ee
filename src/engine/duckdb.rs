//! Embedded DuckDB.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use duckdb::{AccessMode, Config, Connection, types::ValueRef};

use crate::api::DuckDbSettings;
use crate::plan::{SourceCheck, SqlValue, check_statement, quote_literal};

use super::{EngineError, Interrupt, QueryResult};

struct DuckDbInterrupt {
    handle: Arc<duckdb::InterruptHandle>,
    interrupted: Arc<AtomicBool>,
}

impl Interrupt for DuckDbInterrupt {
    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.handle.interrupt();
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
    let mut config = Config::default()
        .with("perfect_ht_threshold", PERFECT_HASH_BITS)
        .map_err(setting_error("perfect_ht_threshold"))?;
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
    on_start: impl FnOnce(Box<dyn Interrupt>),
) -> Result<QueryResult, EngineError> {
    Session::open(settings)?.query(sql, on_start)
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
    pub fn check_source(&self, check: &SourceCheck) -> Result<(), EngineError> {
        let error = |field: &str, message: String| EngineError::Source {
            resource: check.resource.clone(),
            field: field.to_string(),
            message,
        };
        let columns = match self.query(&check.sql, |_| {}) {
            Ok(result) => result.columns,
            Err(EngineError::Query(message)) => {
                if let Some(glob) = &check.files {
                    let matched = self.query(
                        &format!(
                            "SELECT count(*) AS files FROM glob({})",
                            quote_literal(glob)
                        ),
                        |_| {},
                    )?;
                    if matched.rows.first().and_then(|row| row.first()) == Some(&SqlValue::Int(0)) {
                        return Err(error(&check.field, format!("no file matches {glob:?}")));
                    }
                }
                return Err(error(&check.field, message));
            }
            Err(other) => return Err(other),
        };
        for read in &check.columns {
            // DuckDB matches identifiers, quoted ones too, regardless of case.
            if !columns.iter().any(|c| c.eq_ignore_ascii_case(&read.column)) {
                return Err(error(
                    &read.field,
                    format!(
                        "column {:?} not found in {} (columns: {})",
                        read.column,
                        check.shown,
                        columns.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs `sql`, which must be one statement, and collects every row.
    pub fn query(
        &self,
        sql: &str,
        on_start: impl FnOnce(Box<dyn Interrupt>),
    ) -> Result<QueryResult, EngineError> {
        // `prepare` runs every statement of a text but the last: a second statement
        // must never get that far, whatever made the text.
        check_statement(sql).map_err(EngineError::Refused)?;
        let connection = &self.connection;
        let interrupted = Arc::new(AtomicBool::new(false));
        on_start(Box::new(DuckDbInterrupt {
            handle: connection.interrupt_handle(),
            interrupted: interrupted.clone(),
        }));
        let query_error = |e: duckdb::Error| {
            if interrupted.load(Ordering::SeqCst) {
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
        let error = run(&DuckDbSettings::default(), &sql, |_| {}).unwrap_err();
        assert!(
            matches!(error, EngineError::Refused("holds more than one statement")),
            "{error}"
        );
        assert!(!file.exists());
        let result = run(&DuckDbSettings::default(), "SELECT 42 AS answer;", |_| {}).unwrap();
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
            |_| {},
        )
        .unwrap();
        assert_eq!(
            result.rows,
            vec![vec![SqlValue::Text(directory.display().to_string())]]
        );
    }
}

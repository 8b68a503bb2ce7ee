//! Warehouse engines: run a plan's SQL and return its rows.

pub mod duckdb;
pub mod postgres;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use crate::api::Engine;
use crate::plan::{CalculationPlan, SqlValue};

/// The rows of a query, engine-neutral.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not open the DuckDB database {path:?}: {message}")]
    Open { path: String, message: String },
    #[error("invalid engine setting {setting}: {message}")]
    Setting {
        setting: &'static str,
        message: String,
    },
    /// A resource (a table, a Warehouse) and the field of it to fix.
    #[error("{resource}: {field}: {message}")]
    Source {
        resource: String,
        field: String,
        message: String,
    },
    /// The warehouse could not be reached, or the connection broke: a retry may
    /// succeed.
    #[error("{resource}: {field}: {message}")]
    Unreachable {
        resource: String,
        field: String,
        message: String,
    },
    #[error("refused to run the SQL: it {0}")]
    Refused(&'static str),
    #[error("the warehouse query failed: {0}")]
    Query(String),
    #[error("the warehouse query was cancelled")]
    Cancelled,
    #[error("the warehouse returned a value Tally cannot read in column {column:?}: {message}")]
    Value { column: String, message: String },
}

impl EngineError {
    /// Whether running the same calculation again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Aborts an engine's running statement from another thread.
pub trait Interrupt: Send + Sync {
    fn interrupt(&self);
}

/// A request to stop a calculation (SIGTERM on the worker), which may come at any
/// point of its life: before the engine is open, between statements, or while one
/// runs. A request is remembered, so a statement that starts after it is stopped at
/// once instead of running to the end.
#[derive(Clone, Default)]
pub struct Cancellation(Arc<CancellationState>);

#[derive(Default)]
struct CancellationState {
    requested: AtomicBool,
    running: Mutex<Option<Box<dyn Interrupt>>>,
}

impl Cancellation {
    /// Requests the stop and interrupts the running statement, if any. Safe to call
    /// again: an engine may miss an interrupt that arrives just as a statement starts.
    pub fn cancel(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        if let Ok(running) = self.0.running.lock()
            && let Some(statement) = running.as_ref()
        {
            statement.interrupt();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once a stop was requested: engines check it before each step.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.is_requested() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Registers the statement about to run, so that [`Self::cancel`] interrupts it;
    /// `Err(Cancelled)` when the stop came first.
    pub fn start(&self, statement: Box<dyn Interrupt>) -> Result<(), EngineError> {
        let mut running = self
            .0
            .running
            .lock()
            .map_err(|_| EngineError::Query("the cancellation state is poisoned".into()))?;
        *running = Some(statement);
        self.check()
    }
}

/// Runs the plan's SQL on its engine; `cancellation` stops it at any point.
pub fn run(
    plan: &CalculationPlan,
    cancellation: &Cancellation,
) -> Result<QueryResult, EngineError> {
    cancellation.check()?;
    match plan.engine.engine {
        Engine::DuckDb => {
            let session = duckdb::Session::open(&plan.engine.duckdb)?;
            for source in &plan.sources {
                session.check_source(source, cancellation)?;
            }
            session.query(&plan.sql, cancellation)
        }
        Engine::Postgres => {
            let session = postgres::Session::open(&plan.engine, cancellation)?;
            for source in &plan.sources {
                session.check_source(source, cancellation)?;
            }
            session.query(&plan.sql, cancellation)
        }
    }
}

/// The first column `check` reads that `columns` (what its source returned) lacks, as
/// the error naming the field that names it; `same` is the engine's identifier
/// comparison.
pub fn check_columns(
    check: &crate::plan::SourceCheck,
    columns: &[String],
    same: impl Fn(&str, &str) -> bool,
) -> Result<(), EngineError> {
    match check
        .columns
        .iter()
        .find(|read| !columns.iter().any(|c| same(c, &read.column)))
    {
        None => Ok(()),
        Some(read) => Err(EngineError::Source {
            resource: check.resource.clone(),
            field: read.field.clone(),
            message: format!(
                "column {:?} not found in {} (columns: {})",
                read.column,
                check.shown,
                columns.join(", ")
            ),
        }),
    }
}

//! Warehouse engines: run a plan's SQL and return its rows.

pub mod duckdb;

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
    #[error("{resource}: {field}: {message}")]
    Source {
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

/// Lets another thread abort a running query (on SIGTERM, on cancel).
pub trait Interrupt: Send + Sync {
    fn interrupt(&self);
}

/// Runs the plan's SQL on its engine. `on_start` receives a handle that aborts the
/// query, for callers that need to cancel it.
pub fn run(
    plan: &CalculationPlan,
    on_start: impl FnOnce(Box<dyn Interrupt>),
) -> Result<QueryResult, EngineError> {
    match plan.engine.engine {
        Engine::DuckDb => {
            let session = duckdb::Session::open(&plan.engine.duckdb)?;
            for source in &plan.sources {
                session.check_source(source)?;
            }
            session.query(&plan.sql, on_start)
        }
    }
}

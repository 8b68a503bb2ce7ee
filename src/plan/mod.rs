//! Metric + tables → calculation plan → SQL per dialect (pure).
//!
//! [`resolve`] follows a calculation's references and checks every name a resource
//! contributes; [`compile`] turns the resolved calculation into one SQL statement that
//! returns the additive sums of every bucket, and the [`CalculationPlan`] that carries
//! it (with what is needed to read its rows) to an engine, in-process or in a Job.

mod catalog;
pub mod columns;
pub mod data_access;
mod fragment;
mod resolve;
mod rows;
mod sql;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{CalculationTimes, DuckDbSettings, Engine, PostgresSettings};
use crate::stats::MeasureShape;

pub(crate) use catalog::reference_kinds;
pub use catalog::{Catalog, Reference};
pub use fragment::check_statement;
pub use resolve::{ResolvedCalculation, Source, TableRead, resolve};
pub use rows::{RowError, SqlValue, read_buckets};
pub use sql::{Dialect, dialect};

/// A resource that failed to resolve, and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{referrer}: {field} refers to {kind} {name:?}, which does not exist in this namespace; create it or fix the name"
    )]
    MissingReference {
        referrer: String,
        field: String,
        kind: &'static str,
        name: String,
    },
    #[error("{resource}: {field}: {message}")]
    InvalidField {
        resource: String,
        field: String,
        message: String,
    },
}

impl PlanError {
    pub(crate) fn invalid(
        resource: &str,
        field: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        Self::InvalidField {
            resource: resource.to_string(),
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// The same error seen from a schedule whose template made the calculation: the
    /// resource and field are the schedule's (`spec.metricCalculationSpec.…`).
    pub fn from_template(self, calculation: &str, schedule: &str) -> Self {
        let retarget = |resource: String, field: String| {
            if resource == calculation {
                let field = match field.strip_prefix("spec.") {
                    Some(rest) => format!("spec.metricCalculationSpec.{rest}"),
                    None => field,
                };
                (schedule.to_string(), field)
            } else {
                (resource, field)
            }
        };
        match self {
            Self::MissingReference {
                referrer,
                field,
                kind,
                name,
            } => {
                let (referrer, field) = retarget(referrer, field);
                Self::MissingReference {
                    referrer,
                    field,
                    kind,
                    name,
                }
            }
            Self::InvalidField {
                resource,
                field,
                message,
            } => {
                let (resource, field) = retarget(resource, field);
                Self::InvalidField {
                    resource,
                    field,
                    message,
                }
            }
        }
    }

    /// The resource at fault, as `Kind/name`.
    pub fn resource(&self) -> &str {
        match self {
            Self::MissingReference { referrer, .. } => referrer,
            Self::InvalidField { resource, .. } => resource,
        }
    }

    /// A short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingReference { .. } => "MissingReference",
            Self::InvalidField { .. } => "InvalidSpec",
        }
    }
}

/// Where the plan runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSettings {
    pub engine: Engine,
    #[serde(default)]
    pub duckdb: DuckDbSettings,
    /// The database of engine `postgres`; never its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSettings>,
    /// `Warehouse/name`, for messages; `None` for the embedded default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
}

impl EngineSettings {
    /// The embedded DuckDB of a calculation that names no Warehouse.
    pub fn embedded() -> Self {
        Self {
            engine: Engine::DuckDb,
            duckdb: DuckDbSettings::default(),
            postgres: None,
            warehouse: None,
        }
    }

    pub fn dialect(&self) -> &'static dyn Dialect {
        dialect::of(self.engine)
    }
}

/// SQL quoting of a literal, the same in every dialect.
pub fn quote_literal(text: &str) -> String {
    dialect::DuckDb.quote_literal(text)
}

/// Everything needed to run a calculation and read its result: self-contained, so it
/// can travel inside a Job. As JSON it carries each `sql:` source's text once
/// (`wire::Plan`): the statement's source CTEs and the source checks are rebuilt from
/// `sqlSources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "wire::Plan", from = "wire::Plan")]
pub struct CalculationPlan {
    /// `namespace/name` of the calculation, for messages.
    pub calculation: String,
    pub engine: EngineSettings,
    /// The whole statement.
    pub sql: String,
    /// The `sql:` sources the statement reads, each once; they open it as CTEs.
    pub sql_sources: Vec<String>,
    pub layout: ResultLayout,
    pub times: PlanTimes,
    pub control: String,
    /// The exposure groups of the calculation (empty: every observed variant).
    pub exposure_groups: Vec<String>,
    /// Each table's source, checked before the calculation runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceCheck>,
}

#[cfg(test)]
impl CalculationPlan {
    /// A plan of `SELECT 1`, for tests of what carries plans around (decisions, Jobs).
    pub(crate) fn for_tests() -> Self {
        let t: jiff::Timestamp = "2026-10-15T00:00:00Z".parse().unwrap();
        Self {
            calculation: "ns/calc".into(),
            engine: EngineSettings::embedded(),
            sql: "SELECT 1".into(),
            layout: ResultLayout {
                ratio: false,
                cuped: false,
                dimensions: vec![],
            },
            times: PlanTimes {
                exposure_start: t,
                exposure_end: t,
                fact_start: t,
                fact_end: t,
            },
            control: "control".into(),
            exposure_groups: vec![],
            sources: vec![],
            sql_sources: vec![],
        }
    }
}

/// A cheap look at one table's source before the calculation, so that a glob that
/// matches nothing or a missing column is reported against the resource that names
/// it rather than as an error in the middle of the statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceCheck {
    /// `Kind/name` of the table.
    pub resource: String,
    /// The field that holds the source: `spec.source.files`, `.sql` or `.table`.
    pub field: String,
    /// The source as a reader would name it, for messages.
    pub shown: String,
    /// The glob of a `files` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
    /// A statement that returns the source's columns and no row (as JSON, left out
    /// for an `sql:` source: it is rebuilt from `sql_source`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sql: String,
    /// The `sql:` source it checks, by its index in the plan's `sql_sources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_source: Option<usize>,
    /// The columns the calculation reads from it.
    pub columns: Vec<ColumnRead>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColumnRead {
    /// The field that names the column, e.g. `spec.entityColumn`.
    pub field: String,
    pub column: String,
}

/// What the rows of a plan's SQL look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultLayout {
    pub ratio: bool,
    pub cuped: bool,
    /// Split dimension names, by the index the SQL reports.
    pub dimensions: Vec<String>,
}

impl ResultLayout {
    pub fn shape(&self) -> MeasureShape {
        if self.ratio {
            MeasureShape::Ratio
        } else {
            MeasureShape::Average
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanTimes {
    pub exposure_start: Timestamp,
    pub exposure_end: Timestamp,
    pub fact_start: Timestamp,
    pub fact_end: Timestamp,
}

impl PlanTimes {
    pub fn to_status(self) -> CalculationTimes {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        CalculationTimes {
            exposure_start_time: Time(self.exposure_start),
            exposure_end_time: Time(self.exposure_end),
            fact_start_time: Time(self.fact_start),
            fact_end_time: Time(self.fact_end),
        }
    }
}

/// Compiles a resolved calculation to its plan, in its engine's dialect.
pub fn compile(resolved: &ResolvedCalculation) -> CalculationPlan {
    compile_in(resolved, resolved.engine.dialect())
}

/// Compiles a resolved calculation to its plan in `dialect`, one its engine also
/// speaks (e.g. [`dialect::WithoutGroupingSets`] of the engine's own).
pub fn compile_in(resolved: &ResolvedCalculation, dialect: &dyn Dialect) -> CalculationPlan {
    let (statement, sql_sources) = sql::statement_and_sql_sources(resolved, dialect);
    CalculationPlan {
        calculation: resolved.calculation.clone(),
        engine: resolved.engine.clone(),
        sql: statement,
        layout: ResultLayout {
            ratio: resolved.measures.len() == 2,
            cuped: resolved.pre_exposure_window.is_some(),
            dimensions: resolved.dimensions.iter().map(|d| d.name.clone()).collect(),
        },
        times: resolved.times,
        control: resolved.control.clone(),
        exposure_groups: resolved.exposure_groups.clone(),
        sources: resolved
            .source_columns
            .iter()
            .map(|read| {
                let (field, shown, files) = match &read.source {
                    Source::Files(glob) => ("spec.source.files", glob.clone(), Some(glob.clone())),
                    Source::Sql(_) => ("spec.source.sql", "its SQL source".to_string(), None),
                    Source::Table(table) => ("spec.source.table", format!("table {table}"), None),
                };
                SourceCheck {
                    resource: read.resource.clone(),
                    field: field.to_string(),
                    shown,
                    files,
                    // Resolution refuses a source the engine cannot read.
                    sql: sql::columns_of(&read.source, dialect).unwrap_or_default(),
                    sql_source: match &read.source {
                        Source::Sql(text) => sql_sources.iter().position(|s| s == text),
                        _ => None,
                    },
                    columns: read
                        .columns
                        .iter()
                        .map(|(field, column)| ColumnRead {
                            field: field.clone(),
                            column: column.clone(),
                        })
                        .collect(),
                }
            })
            .collect(),
        sql_sources,
    }
}

/// The JSON form of a plan: each `sql:` source's text once, in `sqlSources`; the
/// statement without the CTEs they open it with, and the source checks without the
/// statements that read them, are rebuilt from it.
mod wire {
    use serde::{Deserialize, Serialize};

    use super::{CalculationPlan, EngineSettings, PlanTimes, ResultLayout, SourceCheck, sql};

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Plan {
        calculation: String,
        engine: EngineSettings,
        /// The statement after the CTEs of `sql_sources`.
        sql: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sql_sources: Vec<String>,
        layout: ResultLayout,
        times: PlanTimes,
        control: String,
        exposure_groups: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sources: Vec<SourceCheck>,
    }

    impl From<CalculationPlan> for Plan {
        fn from(plan: CalculationPlan) -> Self {
            let body = sql::after_sql_sources(&plan.sql, &plan.sql_sources)
                .filter(|_| !plan.sql_sources.is_empty())
                .map(str::to_string);
            let (statement, sql_sources, sources) = match body {
                Some(body) => {
                    let sources = plan
                        .sources
                        .into_iter()
                        .map(|check| match check.sql_source {
                            Some(_) => SourceCheck {
                                sql: String::new(),
                                ..check
                            },
                            None => check,
                        })
                        .collect();
                    (body, plan.sql_sources, sources)
                }
                // Not a statement of `compile`: carried whole.
                None => {
                    let sources = plan
                        .sources
                        .into_iter()
                        .map(|check| SourceCheck {
                            sql_source: None,
                            ..check
                        })
                        .collect();
                    (plan.sql, Vec::new(), sources)
                }
            };
            Plan {
                calculation: plan.calculation,
                engine: plan.engine,
                sql: statement,
                sql_sources,
                layout: plan.layout,
                times: plan.times,
                control: plan.control,
                exposure_groups: plan.exposure_groups,
                sources,
            }
        }
    }

    impl From<Plan> for CalculationPlan {
        fn from(wire: Plan) -> Self {
            let sql = if wire.sql_sources.is_empty() {
                wire.sql
            } else {
                sql::with_sql_sources(&wire.sql_sources, &wire.sql)
            };
            let sources = wire
                .sources
                .into_iter()
                .map(|mut check| {
                    if check.sql.is_empty()
                        && let Some(text) = check.sql_source.and_then(|i| wire.sql_sources.get(i))
                    {
                        check.sql = sql::columns_of_sql(text);
                    }
                    check
                })
                .collect();
            CalculationPlan {
                calculation: wire.calculation,
                engine: wire.engine,
                sql,
                sql_sources: wire.sql_sources,
                layout: wire.layout,
                times: wire.times,
                control: wire.control,
                exposure_groups: wire.exposure_groups,
                sources,
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The custom resources of `tally.dev/v1alpha1`: types, defaults and validation only.
//!
//! Cross-field rules are CEL (`x-kubernetes-validations`) so the API server rejects a
//! bad resource at `kubectl apply`; the compiler checks the same invariants again for
//! `tally run`, which has no API server.

mod dimension_table;
mod duration;
mod exposure_table;
mod fact_table;
mod metric;
mod metric_calculation;
mod results;
mod scheduled_metric_calculation;
pub mod unknown_fields;
mod warehouse;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use dimension_table::*;
pub use duration::*;
pub use exposure_table::*;
pub use fact_table::*;
pub use metric::*;
pub use metric_calculation::*;
pub use results::*;
pub use scheduled_metric_calculation::*;
pub use warehouse::*;

pub const GROUP: &str = "tally.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "tally.dev/v1alpha1";

/// Annotation that cancels a calculation or a schedule.
pub const CANCEL_ANNOTATION: &str = "tally.dev/cancel";
/// Annotation that resumes a cancelled schedule.
pub const RESUME_ANNOTATION: &str = "tally.dev/resume";
/// Annotation that recomputes a schedule's newest run as a new iteration; its value
/// (any text, e.g. a timestamp) tells one request from the next.
pub const RETRIGGER_ANNOTATION: &str = "tally.dev/retrigger";

/// Label on a schedule's MetricCalculations: the schedule's name.
pub const SCHEDULE_LABEL: &str = "tally.dev/schedule";
/// Annotations a schedule writes on the MetricCalculations it makes.
pub const SCHEDULE_ITERATION_ANNOTATION: &str = "tally.dev/schedule-iteration";
pub const SCHEDULE_RUN_ANNOTATION: &str = "tally.dev/schedule-run";
/// Fingerprint of the template and metric a run was made from.
pub const DEFINITION_ANNOTATION: &str = "tally.dev/definition";
/// The calculation a run replaces (recorded as `status.superseeds`).
pub const SUPERSEEDS_ANNOTATION: &str = "tally.dev/superseeds";
/// The `tally.dev/retrigger` value that made a run.
pub const RETRIGGERED_BY_ANNOTATION: &str = "tally.dev/retriggered-by";

/// Every CRD Tally serves, in a stable order (the file names of `crds/`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        Warehouse::crd(),
        ExposureTable::crd(),
        FactTable::crd(),
        DimensionTable::crd(),
        Metric::crd(),
        MetricCalculation::crd(),
        ScheduledMetricCalculation::crd(),
    ];
    for crd in &mut crds {
        // A table's status is written by the user's pipelines, so it is bounded like
        // a spec; the other kinds' status is Tally's own, bounded where it is written.
        let user_written_status = crd.spec.names.kind.ends_with("Table");
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                visit_schemas(schema, &mut kubernetes_integer_formats);
                for (field, part) in schema.properties.iter_mut().flatten() {
                    if field == "spec" || (field == "status" && user_written_status) {
                        bound_sizes(field, part);
                    }
                }
            }
        }
    }
    crds
}

/// The longest `sql` a table source or a Metric may hold.
pub const MAX_SQL_LENGTH: i64 = 64 * 1024;
/// The longest of any other string a user writes.
pub const MAX_STRING_LENGTH: i64 = 4096;
/// The most items of a list, or entries of a map, a user writes.
pub const MAX_ITEMS: i64 = 256;

/// Calls `visit` on `schema` and on every schema nested in it.
fn visit_schemas(schema: &mut JSONSchemaProps, visit: &mut impl FnMut(&mut JSONSchemaProps)) {
    visit(schema);
    let nested = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten())
        .chain(schema.not.as_deref_mut());
    let items = match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => vec![item.as_mut()],
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().collect(),
        None => Vec::new(),
    };
    let additional = match schema.additional_properties.as_mut() {
        Some(JSONSchemaPropsOrBool::Schema(extra)) => Some(extra.as_mut()),
        _ => None,
    };
    for child in nested.chain(items).chain(additional) {
        visit_schemas(child, visit);
    }
}

/// Rust's unsigned integers become `int32`/`int64`: the API server knows no
/// `uint32` format and warns on every apply of a CRD that has one (the bounds are
/// in `minimum`/`maximum`).
fn kubernetes_integer_formats(schema: &mut JSONSchemaProps) {
    match schema.format.as_deref() {
        Some("uint8" | "uint16" | "uint32" | "int8" | "int16") => {
            schema.format = Some("int32".into())
        }
        Some("uint64" | "uint" | "uint128" | "int128") => schema.format = Some("int64".into()),
        _ => {}
    }
}

/// Gives every string, list and map under `schema` (the property `name`) a maximum
/// size it lacks: the API server then refuses an object that would cost the
/// controller memory on every reconcile (a megabyte of `sql` in each of many tables),
/// and can bound the cost of CEL rules. `sql` may be longer than other strings.
fn bound_sizes(name: &str, schema: &mut JSONSchemaProps) {
    match schema.type_.as_deref() {
        Some("string") if schema.max_length.is_none() => {
            schema.max_length = Some(if name == "sql" {
                MAX_SQL_LENGTH
            } else {
                MAX_STRING_LENGTH
            });
        }
        Some("array") if schema.max_items.is_none() => schema.max_items = Some(MAX_ITEMS),
        Some("object")
            if schema.max_properties.is_none()
                && matches!(
                    schema.additional_properties,
                    Some(JSONSchemaPropsOrBool::Schema(_))
                ) =>
        {
            schema.max_properties = Some(MAX_ITEMS)
        }
        _ => {}
    }
    for (field, child) in schema.properties.iter_mut().flatten() {
        bound_sizes(field, child);
    }
    let composed = schema
        .all_of
        .iter_mut()
        .flatten()
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten());
    for child in composed {
        bound_sizes(name, child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => bound_sizes(name, item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(|item| bound_sizes(name, item))
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(value)) = schema.additional_properties.as_mut() {
        bound_sizes(name, value);
    }
}

/// Where a table's rows come from: exactly one of `table`, `sql` or `files`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.table) ? 1 : 0) + (has(self.sql) ? 1 : 0) + (has(self.files) ? 1 : 0) == 1"
).message("exactly one of source.table, source.sql or source.files must be set"))]
pub struct TableSource {
    /// A table or view in the warehouse, optionally schema-qualified (`analytics.purchases`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// A SQL query whose result is the table; it is used as a sub-query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// DuckDB only: a file path or glob (CSV, gzip CSV or Parquet). A relative path is
    /// resolved against the directory of the manifest (`tally run`) or the worker's
    /// working directory (in a Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
}

/// How Tally knows how far a table's data is complete.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Data counts as delivered until now minus this lag, for tables loaded
    /// continuously. Without it, `status.dataDeliveredUntil` (written by the loading
    /// pipeline) is the mark; a table with neither counts as fully delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_lag: Option<Duration>,
}

/// Status shared by the table kinds: how far their data is delivered.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableStatus {
    /// Rows with timestamps before this time are complete. Written by the pipeline
    /// that loads the table (`kubectl patch --subresource=status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_delivered_until: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// A named column usable as a split dimension.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DimensionColumn {
    pub name: String,
    /// The column; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl DimensionColumn {
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}

/// Why a name from a resource cannot be used as a SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a valid column or table name: use letters, digits and underscores, \
     starting with a letter or underscore (a table may be qualified as schema.table)"
)]
pub struct IdentifierError {
    pub value: String,
}

/// Checks a column name. Quoting would make any name safe, but names such as
/// `amount; DROP TABLE x` are always a mistake, so they are rejected with a clear error.
pub fn validate_column(value: &str) -> Result<(), IdentifierError> {
    let mut chars = value.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && value.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(IdentifierError {
            value: value.to_string(),
        })
    }
}

/// Checks a possibly qualified table name (`table`, `schema.table`, `db.schema.table`).
pub fn validate_table_name(value: &str) -> Result<(), IdentifierError> {
    let parts: Vec<&str> = value.split('.').collect();
    if parts.len() > 3 || parts.iter().any(|part| validate_column(part).is_err()) {
        return Err(IdentifierError {
            value: value.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_column("amount").is_ok());
        assert!(validate_column("_x1").is_ok());
        for bad in ["", "1a", "amount; DROP TABLE x", "a b", "a\"b", "a.b"] {
            assert!(validate_column(bad).is_err(), "{bad:?}");
        }
        assert!(validate_table_name("analytics.purchases").is_ok());
        assert!(validate_table_name("a.b.c.d").is_err());
        assert!(validate_table_name("x;--").is_err());
    }
}

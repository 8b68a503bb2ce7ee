use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Delivery, DimensionColumn, TableSource, TableStatus};

/// Attributes of entities (country, platform…) to split results by.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "DimensionTable",
    namespaced,
    status = "TableStatus",
    shortname = "dt",
    category = "tally",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DimensionTableSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    pub source: TableSource,
    pub entity_column: String,
    /// For a time-varying table: when each row took effect. The row in force at the
    /// entity's first exposure is used. Without it the table has one row per entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_column: Option<String>,
    #[schemars(length(min = 1))]
    pub dimensions: Vec<DimensionColumn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

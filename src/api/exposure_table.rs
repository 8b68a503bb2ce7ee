use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Delivery, DimensionColumn, TableSource, TableStatus};

/// The assignment log of an experiment: which entity saw which variant, when.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "ExposureTable",
    namespaced,
    status = "TableStatus",
    shortname = "et",
    category = "tally",
    printcolumn = r#"{"name":"Delivered Until","type":"date","jsonPath":".status.dataDeliveredUntil"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ExposureTableSpec {
    /// The Warehouse holding the table; defaults to the calculation's warehouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    pub source: TableSource,
    /// The randomisation unit (user id, device id…).
    pub entity_column: String,
    pub timestamp_column: String,
    pub variant_column: String,
    /// Columns that calculations may split by; the value on an entity's first
    /// exposure row is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<DimensionColumn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Delivery, DimensionColumn, TableSource, TableStatus};

/// Events with measurements (purchases, sessions…) that metrics aggregate.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "FactTable",
    namespaced,
    status = "TableStatus",
    shortname = "ft",
    category = "tally",
    printcolumn = r#"{"name":"Delivered Until","type":"date","jsonPath":".status.dataDeliveredUntil"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FactTableSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    pub source: TableSource,
    pub entity_column: String,
    pub timestamp_column: String,
    /// Named measurement columns that metrics refer to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Columns usable in metric filters and as dimensions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<DimensionColumn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub name: String,
    /// The column; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl Measurement {
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}

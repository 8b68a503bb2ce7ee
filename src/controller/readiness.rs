//! Data readiness: how far each table a calculation reads is delivered, and the first
//! that falls short of the time a run needs. Pure: the catalog and the clock are given.

use jiff::Timestamp;

use crate::api::{Delivery, TableStatus};
use crate::plan::{Catalog, TableRead};

/// A table whose data is not yet delivered as far as a calculation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DataWait {
    pub table: String,
    pub need_until: Timestamp,
    pub delivered_until: Option<Timestamp>,
}

/// A table that declares how far its data is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDelivery {
    /// `Kind/name`.
    pub table: String,
    /// `None` when the mark cannot be computed (a lag larger than the clock).
    pub delivered_until: Option<Timestamp>,
}

/// How far a table's data is delivered: its status mark, else now − assumed lag;
/// `None` when it declares neither (it counts as completely delivered).
fn delivered_until(
    status: Option<&TableStatus>,
    delivery: Option<&Delivery>,
    now: Timestamp,
) -> Option<Option<Timestamp>> {
    if let Some(mark) = status.and_then(|s| s.data_delivered_until.as_ref()) {
        return Some(Some(mark.0));
    }
    let lag = delivery.and_then(|d| d.assume_lag.as_ref())?;
    Some(now.checked_sub(lag.as_signed()).ok())
}

/// The delivery marks of the tables read, in the order they are read.
pub fn deliveries(tables: &[TableRead], catalog: &Catalog, now: Timestamp) -> Vec<TableDelivery> {
    tables
        .iter()
        .filter_map(|table| {
            let (kind, name, status, delivery) = match table {
                TableRead::Exposure(name) => catalog.exposure_tables.get(name).map(|t| {
                    (
                        "ExposureTable",
                        name,
                        t.status.as_ref(),
                        t.spec.delivery.as_ref(),
                    )
                }),
                TableRead::Fact(name) => catalog.fact_tables.get(name).map(|t| {
                    (
                        "FactTable",
                        name,
                        t.status.as_ref(),
                        t.spec.delivery.as_ref(),
                    )
                }),
                TableRead::Dimension(name) => catalog.dimension_tables.get(name).map(|t| {
                    (
                        "DimensionTable",
                        name,
                        t.status.as_ref(),
                        t.spec.delivery.as_ref(),
                    )
                }),
            }?;
            delivered_until(status, delivery, now).map(|until| TableDelivery {
                table: format!("{kind}/{name}"),
                delivered_until: until,
            })
        })
        .collect()
}

/// The first table not delivered until `need`.
pub fn first_undelivered(tables: &[TableDelivery], need: Timestamp) -> Option<DataWait> {
    tables
        .iter()
        .find(|t| t.delivered_until.is_none_or(|until| until < need))
        .map(|t| DataWait {
            table: t.table.clone(),
            need_until: need,
            delivered_until: t.delivered_until,
        })
}

impl DataWait {
    pub fn message(&self) -> String {
        format!(
            "waiting for {} to be delivered until {} (delivered until {})",
            self.table,
            self.need_until,
            self.delivered_until
                .map(|t| t.to_string())
                .unwrap_or_else(|| "unknown".into())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_table_short_of_the_need_is_reported() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let tables = vec![
            TableDelivery {
                table: "ExposureTable/e".into(),
                delivered_until: Some(t("2026-11-10T00:00:00Z")),
            },
            TableDelivery {
                table: "FactTable/f".into(),
                delivered_until: Some(t("2026-11-05T00:00:00Z")),
            },
        ];
        assert_eq!(first_undelivered(&tables, t("2026-11-05T00:00:00Z")), None);
        let wait = first_undelivered(&tables, t("2026-11-06T00:00:00Z")).unwrap();
        assert_eq!(wait.table, "FactTable/f");
        assert_eq!(wait.delivered_until, Some(t("2026-11-05T00:00:00Z")));
        assert!(wait.message().contains("FactTable/f"));
    }
}

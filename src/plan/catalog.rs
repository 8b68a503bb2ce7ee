use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::{DimensionTable, ExposureTable, FactTable, Metric, Warehouse};

/// The resources a calculation may refer to, by name, within one namespace.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub warehouses: BTreeMap<String, Warehouse>,
    pub exposure_tables: BTreeMap<String, ExposureTable>,
    pub fact_tables: BTreeMap<String, FactTable>,
    pub dimension_tables: BTreeMap<String, DimensionTable>,
    pub metrics: BTreeMap<String, Metric>,
    /// Directories every calculation may read files from besides its Warehouse's
    /// data directories: `tally run` adds those of the manifests' own `files`
    /// sources (and of `--allow-dir`); a cluster's catalog has none.
    pub local_data_directories: Vec<String>,
}

impl Catalog {
    pub fn add_warehouse(&mut self, r: Warehouse) {
        self.warehouses.insert(r.name_any(), r);
    }
    pub fn add_exposure_table(&mut self, r: ExposureTable) {
        self.exposure_tables.insert(r.name_any(), r);
    }
    pub fn add_fact_table(&mut self, r: FactTable) {
        self.fact_tables.insert(r.name_any(), r);
    }
    pub fn add_dimension_table(&mut self, r: DimensionTable) {
        self.dimension_tables.insert(r.name_any(), r);
    }
    pub fn add_metric(&mut self, r: Metric) {
        self.metrics.insert(r.name_any(), r);
    }
}

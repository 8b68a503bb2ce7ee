use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::{DimensionTable, ExposureTable, FactTable, Metric, Warehouse};

/// The resources a calculation may refer to, by name, within one namespace. Shared,
/// not copied: the controller builds a catalog per reconcile from its caches, and a
/// namespace's tables may hold large `sql` sources.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub warehouses: BTreeMap<String, Arc<Warehouse>>,
    pub exposure_tables: BTreeMap<String, Arc<ExposureTable>>,
    pub fact_tables: BTreeMap<String, Arc<FactTable>>,
    pub dimension_tables: BTreeMap<String, Arc<DimensionTable>>,
    pub metrics: BTreeMap<String, Arc<Metric>>,
    /// Directories every calculation may read files from besides its Warehouse's
    /// data directories: `tally run` adds those of the manifests' own `files`
    /// sources (and of `--allow-dir`); a cluster's catalog has none.
    pub local_data_directories: Vec<String>,
}

/// A kind a calculation refers to by name, and its shelf in a [`Catalog`].
pub trait Reference: kube::Resource<DynamicType = ()> + Sized {
    fn shelf(catalog: &mut Catalog) -> &mut BTreeMap<String, Arc<Self>>;
}

macro_rules! reference {
    ($kind:ty, $shelf:ident) => {
        impl Reference for $kind {
            fn shelf(catalog: &mut Catalog) -> &mut BTreeMap<String, Arc<Self>> {
                &mut catalog.$shelf
            }
        }
    };
}
reference!(Warehouse, warehouses);
reference!(ExposureTable, exposure_tables);
reference!(FactTable, fact_tables);
reference!(DimensionTable, dimension_tables);
reference!(Metric, metrics);

impl Catalog {
    /// Adds `r`, shared with whoever else holds it (the controller's caches).
    pub fn add_shared<K: Reference>(&mut self, r: Arc<K>) {
        K::shelf(self).insert(r.name_any(), r);
    }
    pub fn add_warehouse(&mut self, r: Warehouse) {
        self.add_shared(Arc::new(r));
    }
    pub fn add_exposure_table(&mut self, r: ExposureTable) {
        self.add_shared(Arc::new(r));
    }
    pub fn add_fact_table(&mut self, r: FactTable) {
        self.add_shared(Arc::new(r));
    }
    pub fn add_dimension_table(&mut self, r: DimensionTable) {
        self.add_shared(Arc::new(r));
    }
    pub fn add_metric(&mut self, r: Metric) {
        self.add_shared(Arc::new(r));
    }
}

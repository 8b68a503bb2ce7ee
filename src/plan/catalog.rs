use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;

use crate::api::{DimensionTable, ExposureTable, FactTable, Metric, Warehouse};

/// The kinds a calculation refers to by name, each with its shelf in a [`Catalog`]:
/// the one list of them. `reference_kinds!(m)` expands `m!` with every
/// `(Kind, shelf)` pair, so that what is done per kind is written once.
macro_rules! reference_kinds {
    ($callback:ident) => {
        $callback! {
            (Warehouse, warehouses),
            (ExposureTable, exposure_tables),
            (FactTable, fact_tables),
            (DimensionTable, dimension_tables),
            (Metric, metrics),
        }
    };
}
pub(crate) use reference_kinds;

/// A kind a calculation refers to by name, and its shelf in a [`Catalog`].
pub trait Reference: kube::Resource<DynamicType = ()> + Sized {
    fn shelf(catalog: &mut Catalog) -> &mut BTreeMap<String, Arc<Self>>;
}

macro_rules! catalog {
    ($(($kind:ident, $shelf:ident)),* $(,)?) => {
        /// The resources a calculation may refer to, by name, within one namespace.
        /// Shared, not copied: the controller builds a catalog per reconcile from its
        /// caches, and a namespace's tables may hold large `sql` sources.
        #[derive(Debug, Clone, Default)]
        pub struct Catalog {
            $(pub $shelf: BTreeMap<String, Arc<$kind>>,)*
            /// Directories every calculation may read files from besides its
            /// Warehouse's data directories: `tally run` adds those of the manifests'
            /// own `files` sources (and of `--allow-dir`); a cluster's catalog has none.
            pub local_data_directories: Vec<String>,
        }

        $(
            impl Reference for $kind {
                fn shelf(catalog: &mut Catalog) -> &mut BTreeMap<String, Arc<Self>> {
                    &mut catalog.$shelf
                }
            }
        )*
    };
}
reference_kinds!(catalog);

impl Catalog {
    /// Adds `r`, shared with whoever else holds it (the controller's caches).
    pub fn add_shared<K: Reference>(&mut self, r: Arc<K>) {
        K::shelf(self).insert(r.name_any(), r);
    }

    /// Adds `r` (a table, Metric or Warehouse).
    pub fn add<K: Reference>(&mut self, r: K) {
        self.add_shared(Arc::new(r));
    }

    pub fn add_warehouse(&mut self, r: Warehouse) {
        self.add(r);
    }
    pub fn add_exposure_table(&mut self, r: ExposureTable) {
        self.add(r);
    }
    pub fn add_fact_table(&mut self, r: FactTable) {
        self.add(r);
    }
    pub fn add_dimension_table(&mut self, r: DimensionTable) {
        self.add(r);
    }
    pub fn add_metric(&mut self, r: Metric) {
        self.add(r);
    }
}

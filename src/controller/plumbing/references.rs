//! What the controller watches: the kinds Tally reconciles, where (`--namespaces`),
//! and the caches of everything a calculation refers to, from which each reconcile
//! builds its namespace's catalog.

use std::sync::Arc;

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{self, ObjectRef, Store, reflector},
        watcher::{self, watcher},
    },
};

use crate::api::{DimensionTable, ExposureTable, FactTable, Metric, MetricCalculation, Warehouse};
use crate::plan::{self, Catalog, reference_kinds};

/// What a watch needs of the kinds Tally watches (all namespaced).
pub trait Watched:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Where a controller loop watches: every namespace, or one of those `--namespaces`
/// lists (each gets a loop of its own, so that RBAC may grant it per namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    /// The scopes of `--namespaces`: each one listed, or every namespace when none is.
    pub fn of(namespaces: &[String]) -> Vec<Scope> {
        if namespaces.is_empty() {
            vec![Scope::All]
        } else {
            namespaces.iter().cloned().map(Scope::Namespace).collect()
        }
    }

    pub fn api<K: Watched>(&self, client: &Client) -> Api<K> {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }
}

/// A cache of every object of kind `K` in `scope`, filled by a watch driven on its
/// own task.
fn reflected<K: Watched>(client: &Client, scope: &Scope) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(scope.api::<K>(client), watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(stream.for_each(|event| async move {
        if let Err(error) = event {
            tracing::debug!(%error, "reference watch error; retrying");
        }
    }));
    store
}

/// The cache's objects of `namespace`, shared: a namespace's tables may hold large
/// sources, and a reconcile must not copy them.
fn of<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
) -> impl Iterator<Item = Arc<K>> {
    store
        .state()
        .into_iter()
        .filter(move |o| o.meta().namespace.as_deref() == Some(namespace))
}

/// The object `name` of kind `K` in `namespace`, if the API server has it.
async fn get<K: Watched>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, kube::Error> {
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

/// The caches and lookups of the reference kinds, from their one list.
macro_rules! references {
    ($(($kind:ident, $shelf:ident)),* $(,)?) => {
        /// Caches of everything a calculation can refer to, filled by watches: a
        /// reconcile builds its namespace's catalog from them instead of listing them.
        #[derive(Clone)]
        pub struct References {
            $($shelf: Store<$kind>,)*
        }

        #[cfg(test)]
        impl References {
            /// Caches holding `catalog`, as if their watches had delivered it.
            pub(crate) fn holding(catalog: &Catalog) -> Self {
                Self {
                    $($shelf: crate::controller::test_support::cache(
                        catalog.$shelf.values().map(|r| (**r).clone()),
                    ),)*
                }
            }
        }

        impl References {
            /// Starts the watches that fill the caches (each on its own task).
            pub fn start(client: &Client, scope: &Scope) -> Self {
                Self {
                    $($shelf: reflected(client, scope),)*
                }
            }

            /// Waits until every cache holds its first full list: before, a reference
            /// could look missing when it is not. One waiter at a time, before any
            /// reconcile.
            pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
                $(self.$shelf.wait_until_ready().await?;)*
                Ok(())
            }

            /// The namespace's catalog, from the caches.
            pub fn catalog(&self, namespace: &str) -> Catalog {
                let mut catalog = Catalog::default();
                $(of(&self.$shelf, namespace).for_each(|r| catalog.add_shared(r));)*
                catalog
            }
        }

        /// Adds the object `kind`/`name` to `catalog` if the API server has it; whether
        /// it did.
        async fn fetch_reference(
            client: &Client,
            namespace: &str,
            kind: &str,
            name: &str,
            catalog: &mut Catalog,
        ) -> Result<bool, kube::Error> {
            $(
                if kind == $kind::kind(&()) {
                    let found = get::<$kind>(client, namespace, name).await?;
                    return Ok(found.map(|r| catalog.add_shared(Arc::new(r))).is_some());
                }
            )*
            Ok(false)
        }

        /// Adds watches on everything a calculation can refer to: a change to one
        /// re-reconciles the objects of its namespace (resolution decides which are
        /// affected) that are not `settled`: a finished calculation only runs again
        /// when its own spec changes, and there may be thousands of them in a
        /// namespace with schedules.
        fn watch_references<K: Watched>(
            controller: Controller<K>,
            client: &Client,
            scope: &Scope,
            settled: fn(&K) -> bool,
        ) -> Controller<K> {
            let store = controller.store();
            let same_namespace = move |namespace: Option<String>| {
                store
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace() == namespace && !settled(c))
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            };
            let mut controller = controller;
            $(
                let mapper = same_namespace.clone();
                controller = controller.watches(
                    scope.api::<$kind>(client),
                    watcher::Config::default(),
                    move |r: $kind| mapper(r.namespace()),
                );
            )*
            controller
        }
    };
}
reference_kinds!(references);

impl References {
    /// The namespace's catalog, with every reference of `calculation` that the caches
    /// lack fetched from the API server, and `calculation` resolved against it. The
    /// watch that triggers a reconcile on a new Metric, table or Warehouse is not the
    /// watch that fills the caches, so the reconcile it triggers may run before the
    /// cache has the object: without the fetch, the calculation would report it
    /// missing until its next timed look.
    pub async fn resolve(
        &self,
        client: &Client,
        namespace: &str,
        calculation: &MetricCalculation,
    ) -> Result<(Catalog, Result<plan::ResolvedCalculation, plan::PlanError>), kube::Error> {
        let mut catalog = self.catalog(namespace);
        let mut fetched = std::collections::BTreeSet::new();
        loop {
            let resolved = plan::resolve(calculation, &catalog);
            if let Err(plan::PlanError::MissingReference { kind, name, .. }) = &resolved
                && fetched.insert((*kind, name.clone()))
                && fetch_reference(client, namespace, kind, name, &mut catalog).await?
            {
                continue;
            }
            return Ok((catalog, resolved));
        }
    }
}

/// A controller of `K` that owns the `Child` objects labelled `child_label` and
/// watches everything a calculation can refer to.
pub fn controller_of<K: Watched, Child: Watched>(
    client: &Client,
    scope: &Scope,
    child_label: &str,
    concurrency: u16,
    settled: fn(&K) -> bool,
) -> Controller<K> {
    let controller = Controller::new(scope.api::<K>(client), watcher::Config::default())
        .owns(
            scope.api::<Child>(client),
            watcher::Config::default().labels(child_label),
        )
        // At most `concurrency` reconciles at once: unbounded, a burst of thousands of
        // new objects holds a request, its buffers and a resolved catalog for each.
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    watch_references(controller, client, scope, settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::{api_server, cache, example};

    #[tokio::test]
    async fn a_reference_the_cache_has_not_seen_yet_is_fetched_and_resolves() {
        let (catalog, calculation) = example();
        let warehouse = (**catalog.warehouses.values().next().unwrap()).clone();
        let references = References {
            // The Warehouse's watch event triggered this reconcile; its cache lags.
            warehouses: cache([]),
            exposure_tables: cache(catalog.exposure_tables.values().map(|r| (**r).clone())),
            fact_tables: cache(catalog.fact_tables.values().map(|r| (**r).clone())),
            dimension_tables: cache(catalog.dimension_tables.values().map(|r| (**r).clone())),
            metrics: cache(catalog.metrics.values().map(|r| (**r).clone())),
        };
        let path = format!(
            "/apis/tally.dev/v1alpha1/namespaces/default/warehouses/{}",
            warehouse.name_any()
        );
        assert!(matches!(
            plan::resolve(&calculation, &references.catalog("default")),
            Err(plan::PlanError::MissingReference {
                kind: "Warehouse",
                ..
            })
        ));
        let (client, asked) =
            api_server([(path.clone(), serde_json::to_value(&warehouse).unwrap())].into());
        let (complete, resolved) = references
            .resolve(&client, "default", &calculation)
            .await
            .unwrap();
        assert!(resolved.is_ok());
        assert!(plan::resolve(&calculation, &complete).is_ok());
        assert_eq!(*asked.lock().unwrap(), [path]);
    }

    #[tokio::test]
    async fn a_reference_that_does_not_exist_is_asked_for_once_and_stays_missing() {
        let (catalog, calculation) = example();
        let references = References {
            warehouses: cache(catalog.warehouses.values().map(|r| (**r).clone())),
            exposure_tables: cache(catalog.exposure_tables.values().map(|r| (**r).clone())),
            fact_tables: cache(catalog.fact_tables.values().map(|r| (**r).clone())),
            dimension_tables: cache(catalog.dimension_tables.values().map(|r| (**r).clone())),
            metrics: cache([]),
        };
        let (client, asked) = api_server([].into());
        let (_, partial) = references
            .resolve(&client, "default", &calculation)
            .await
            .unwrap();
        assert!(matches!(
            partial,
            Err(plan::PlanError::MissingReference { kind: "Metric", .. })
        ));
        assert_eq!(asked.lock().unwrap().len(), 1);
    }

    #[test]
    fn namespaces_listed_are_watched_each_on_its_own_and_none_means_all() {
        assert_eq!(Scope::of(&[]), [Scope::All]);
        assert_eq!(
            Scope::of(&["analytics".into(), "growth".into()]),
            [
                Scope::Namespace("analytics".into()),
                Scope::Namespace("growth".into())
            ]
        );
    }
}

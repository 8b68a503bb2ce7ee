//! Runs a kube-runtime controller: each reconcile under a per-object backoff, counted
//! in the telemetry, until the stop signal.

use std::sync::Arc;

use futures::StreamExt;
use kube::{
    Resource, ResourceExt,
    runtime::{Controller, controller::Action as Requeue},
};

use super::references::Watched;
use super::stop::Stop;
use crate::controller::{Context, ControllerError};

/// Logs a failed reconcile and retries it with per-object exponential backoff.
fn error_policy<K: Resource>(
    object: Arc<K>,
    error: &ControllerError,
    ctx: Arc<Context>,
) -> Requeue {
    let key = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let delay = ctx.backoff.next_delay(&key);
    match error {
        // A write over a stale copy: expected now and then, retried on the fresh one.
        ControllerError::Kube(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(object = %key, %error, retry_in = ?delay, "conflict; retrying")
        }
        _ => tracing::warn!(object = %key, %error, retry_in = ?delay, "reconcile failed; retrying"),
    }
    Requeue::requeue(delay)
}

/// Runs a reconcile and forgets the object's failures when it succeeds.
async fn with_backoff<K, F>(
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: impl FnOnce(Arc<K>, Arc<Context>) -> F,
) -> Result<Requeue, ControllerError>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<Requeue, ControllerError>>,
{
    let key = format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    let started = std::time::Instant::now();
    let result = reconcile(object, ctx.clone()).await;
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    ctx.metrics
        .reconciled(&K::kind(&()), result.is_ok(), started.elapsed());
    result
}

/// Runs `controller` until `stop`, each reconcile under the per-object backoff.
pub async fn drive<K, F>(
    controller: Controller<K>,
    reconcile: fn(Arc<K>, Arc<Context>) -> F,
    context: Arc<Context>,
    stop: Stop,
) where
    K: Watched,
    F: std::future::Future<Output = Result<Requeue, ControllerError>> + Send + 'static,
{
    controller
        .graceful_shutdown_on(stop.requested())
        .run(
            move |object, ctx| with_backoff(object, ctx, reconcile),
            error_policy,
            context,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(kind = K::kind(&()).as_ref(), %error, "reconcile error");
            }
        })
        .await;
}

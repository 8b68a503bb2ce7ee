//! What both lifecycles' decisions do alike, carried out in one place: replace the
//! status over the version observed, and publish an Event. Each lifecycle's act
//! passes every action through [`shared`] and carries out only its own.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::references::Watched;
use super::status::status_patch_over;
use crate::api::{MetricCalculation, ScheduledMetricCalculation};
use crate::controller::{Context, ControllerError};

/// An object whose status the controller writes.
pub trait WithStatus: Watched {
    type Status: serde::Serialize + schemars::JsonSchema + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
}

impl WithStatus for MetricCalculation {
    type Status = crate::api::MetricCalculationStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl WithStatus for ScheduledMetricCalculation {
    type Status = crate::api::ScheduledMetricCalculationStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

/// What every lifecycle's actions include.
pub enum Shared<S> {
    /// Replace the status with this one.
    SetStatus(Box<S>),
    /// Publish an Event about the object.
    Event {
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

/// An action of a lifecycle: one of the [`Shared`] ones, or its own.
pub trait Action: Sized {
    type Status;
    /// An action that publishes this Event.
    fn event(warning: bool, reason: &'static str, note: String) -> Self;
    /// The shared action this is, or the action itself when it is the lifecycle's own.
    fn shared(self) -> Result<Shared<Self::Status>, Self>;
}

/// Implements [`Action`] for a lifecycle's action enum, whose `SetStatus(Box<Status>)`
/// and `Event { warning, reason, note }` variants are the shared ones.
macro_rules! shared_actions {
    ($action:ident, $status:ty) => {
        impl $crate::controller::plumbing::act::Action for $action {
            type Status = $status;

            fn event(warning: bool, reason: &'static str, note: String) -> Self {
                $action::Event {
                    warning,
                    reason,
                    note,
                }
            }

            fn shared(self) -> Result<$crate::controller::plumbing::act::Shared<$status>, Self> {
                use $crate::controller::plumbing::act::Shared;
                match self {
                    $action::SetStatus(status) => Ok(Shared::SetStatus(status)),
                    $action::Event {
                        warning,
                        reason,
                        note,
                    } => Ok(Shared::Event {
                        warning,
                        reason,
                        note,
                    }),
                    own => Err(own),
                }
            }
        }
    };
}
pub(crate) use shared_actions;

/// An action publishing a Normal Event.
pub fn event<A: Action>(reason: &'static str, note: impl Into<String>) -> A {
    A::event(false, reason, note.into())
}

/// An action publishing a Warning Event.
pub fn warning<A: Action>(reason: &'static str, note: impl Into<String>) -> A {
    A::event(true, reason, note.into())
}

/// Whether to go on with the next action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// What the rest of the decision assumed did not happen (the API server refused
    /// it): stop, and let the next reconcile decide anew.
    Stop,
}

/// Carries out `action` when it is one of the [`Shared`] ones; hands it back when it
/// is the lifecycle's own. Each lifecycle's act runs its decision through this, in
/// order.
pub async fn shared<K, A>(
    ctx: &Context,
    object: &K,
    action: A,
) -> Result<Option<A>, ControllerError>
where
    K: WithStatus,
    A: Action<Status = K::Status>,
{
    match action.shared() {
        Ok(Shared::SetStatus(status)) => {
            let namespace = object.namespace().ok_or(ControllerError::NoNamespace)?;
            let patch = status_patch_over(object, object.status(), &*status);
            Api::<K>::namespaced(ctx.client.clone(), &namespace)
                .patch_status(
                    &object.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
            Ok(None)
        }
        Ok(Shared::Event {
            warning,
            reason,
            note,
        }) => {
            ctx.events.publish(object, warning, reason, &note).await;
            Ok(None)
        }
        Err(own) => Ok(Some(own)),
    }
}

//! Kubernetes plumbing shared by both lifecycles: what is watched and cached, the act
//! executor and status writes, Events, conditions, names, backoff, the reconcile
//! driver, leader election, telemetry and the stop signal. Nothing here decides what
//! happens to a calculation or a schedule; nothing here imports their rooms.

pub mod act;
pub mod backoff;
pub mod conditions;
pub mod driver;
pub mod events;
pub mod leader;
pub mod names;
pub mod references;
pub mod status;
pub mod stop;
pub mod telemetry;

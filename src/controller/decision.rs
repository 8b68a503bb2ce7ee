//! What a lifecycle's pure `decide` returns: the actions, in order, and when to look
//! again.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action as KubeRequeue;

/// When to reconcile again if nothing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requeue {
    /// Only on a change that a watch brings.
    #[default]
    OnChange,
    /// After this long: for what no watch tells (a data lag, a Pod never created).
    After(Duration),
    /// At this time: a schedule's next run.
    At(Timestamp),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision<A> {
    pub actions: Vec<A>,
    pub requeue: Requeue,
}

impl<A> Default for Decision<A> {
    fn default() -> Self {
        Self {
            actions: Vec::new(),
            requeue: Requeue::OnChange,
        }
    }
}

impl<A> Decision<A> {
    /// The time to reconcile again at, if the decision names one.
    pub fn wake_at(&self) -> Option<Timestamp> {
        match self.requeue {
            Requeue::At(at) => Some(at),
            _ => None,
        }
    }
}

impl Requeue {
    /// kube-runtime's requeue for this, as of `now`. A wake-up at a time is a little
    /// late rather than early: a run fires once its time has passed.
    pub fn at(self, now: Timestamp) -> KubeRequeue {
        match self {
            Requeue::OnChange => KubeRequeue::await_change(),
            Requeue::After(wait) => KubeRequeue::requeue(wait),
            Requeue::At(at) => {
                let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default();
                KubeRequeue::requeue(wait + Duration::from_millis(20))
            }
        }
    }
}

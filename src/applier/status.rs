//! What the applier did last, per stack: readable by `mkectl status` through
//! a [`StatusHandle`], and awaitable (tests and readiness waits).

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum StackState {
    /// Every object applied and the leftovers pruned.
    Applied,
    /// Something failed; nothing of this stack was pruned.
    Error { message: String },
    /// The stack left the disk and its objects were deleted.
    Pruned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StackStatus {
    pub name: String,
    #[serde(flatten)]
    pub state: StackState,
    /// Objects in the stack (Applied/Error) or deleted with it (Pruned).
    pub objects: usize,
    /// Last time the stack applied without error.
    pub last_applied: Option<SystemTime>,
    /// Last time this entry changed.
    pub updated: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplierStatus {
    /// Whether this controller currently holds the applier lease.
    pub leader: bool,
    /// Completed apply passes over the manifests directory (as leader).
    pub passes: u64,
    /// Stacks by name.
    pub stacks: Vec<StackStatus>,
}

impl ApplierStatus {
    pub fn stack(&self, name: &str) -> Option<&StackStatus> {
        self.stacks.iter().find(|s| s.name == name)
    }
}

/// Cheap to clone; every clone sees the same status.
#[derive(Clone)]
pub struct StatusHandle {
    tx: Arc<watch::Sender<ApplierStatus>>,
}

impl Default for StatusHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusHandle {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(ApplierStatus::default())),
        }
    }

    pub fn snapshot(&self) -> ApplierStatus {
        self.tx.borrow().clone()
    }

    pub fn stack(&self, name: &str) -> Option<StackStatus> {
        self.tx.borrow().stack(name).cloned()
    }

    pub fn is_leader(&self) -> bool {
        self.tx.borrow().leader
    }

    pub fn subscribe(&self) -> watch::Receiver<ApplierStatus> {
        self.tx.subscribe()
    }

    /// Resolves once `pred` holds (checked now and after every change).
    /// Callers bound it with a timeout.
    pub async fn wait_until(&self, mut pred: impl FnMut(&ApplierStatus) -> bool) -> ApplierStatus {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let found = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
        found.unwrap_or_else(|_| self.snapshot())
    }

    pub(crate) fn set_leader(&self, leader: bool) {
        self.tx.send_if_modified(|s| {
            let changed = s.leader != leader;
            s.leader = leader;
            changed
        });
    }

    pub(crate) fn pass_done(&self) {
        self.tx.send_modify(|s| s.passes += 1);
    }

    pub(crate) fn set_stack(&self, name: &str, state: StackState, objects: usize) {
        let now = SystemTime::now();
        self.tx.send_modify(|s| {
            let last_applied = if state == StackState::Applied {
                Some(now)
            } else {
                s.stack(name).and_then(|p| p.last_applied)
            };
            let entry = StackStatus {
                name: name.to_string(),
                state,
                objects,
                last_applied,
                updated: now,
            };
            match s.stacks.iter_mut().find(|x| x.name == name) {
                Some(x) => *x = entry,
                None => {
                    s.stacks.push(entry);
                    s.stacks.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
        });
    }
}

//! The ban table's side of the fleet, the twin of [`crate::KernelTable`]:
//! where a time-out made here goes so that other nodes learn of it.
//!
//! The table only writes the change into the durable outbox (storage) and
//! wakes the fleet link; it never waits on the network. The link, in the
//! binary's wiring, publishes what the outbox holds and removes it once the
//! engine has acknowledged it, so nothing made while the engine is down
//! (or just before a crash) is lost.

use std::sync::Arc;

use storage::{FleetChange, OutboxStore, StorageError};

#[derive(Clone)]
pub struct FleetOutlet {
    outbox: OutboxStore,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl FleetOutlet {
    /// `wake` is called after each change is in the outbox; it must not
    /// block (a channel send or a notify).
    pub fn new(outbox: OutboxStore, wake: Arc<dyn Fn() + Send + Sync>) -> Self {
        FleetOutlet { outbox, wake }
    }

    pub(crate) fn offer(&self, change: &FleetChange) -> Result<(), StorageError> {
        self.outbox.push(change)?;
        (self.wake)();
        Ok(())
    }
}

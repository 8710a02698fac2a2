//! The fleet, wired: the link (crate `fleet`) publishes what the ban core
//! queues in the outbox, and hands what other nodes did to the running
//! server, through the same registry as every other source of time-outs.

use std::sync::Arc;

use actors::{FleetOutlet, ServerHandle};
use fleet::{FleetConfig, FleetLink, FleetTarget};
use model::{BanInfo, Cidr};
use storage::Store;

/// The fleet of one server: its link (started once the server runs) and
/// its outlet (handed to the ban core before).
pub struct Fleet {
    config: FleetConfig,
    link: FleetLink,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Self {
        Fleet {
            config,
            link: FleetLink::new(),
        }
    }

    /// Where the ban core queues its changes.
    pub fn outlet(&self, store: &Store) -> FleetOutlet {
        FleetOutlet::new(store.outbox().clone(), self.link.waker())
    }

    /// Starts the link once the local restore is done, so the node
    /// enforces its own table first and the bucket is merged in after.
    pub fn start(&self, store: &Store, server: ServerHandle) -> std::io::Result<()> {
        let pending = store.outbox().len();
        log::info!(
            "fleet: node {} on {} (bucket {}){}",
            self.config.node_id,
            self.config.servers.join(","),
            self.config.bucket,
            if pending > 0 {
                format!("; the outbox holds {pending} unpublished changes from before")
            } else {
                String::new()
            }
        );
        self.link.start(
            self.config.clone(),
            store.outbox().clone(),
            Arc::new(Registry(server)),
        )
    }

    pub fn stats(&self) -> Arc<fleet::FleetStats> {
        self.link.stats()
    }
}

struct Registry(ServerHandle);

impl FleetTarget for Registry {
    fn apply(&self, records: Vec<BanInfo>) {
        if !records.is_empty() {
            self.0.apply_remote(records);
        }
    }

    fn release(&self, prefix: Cidr) {
        self.0.release_remote(prefix);
    }
}

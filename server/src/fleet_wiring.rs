//! The fleet, wired: the link (crate `fleet`) publishes what the ban core
//! queues in the outbox, and hands what other nodes did to the running
//! server, through the same registry as every other source of time-outs.

use std::sync::Arc;

use actors::{FleetOutlet, ServerHandle};
use fleet::{FleetConfig, FleetLink, FleetTarget, NodePublicKey, Trust};
use model::ban::Origin;
use model::{BanInfo, Cidr};
use storage::Store;

/// What a reload needs to replace the trusted node keys: the link's
/// handle, and this node's own key and name (always trusted).
#[derive(Clone)]
pub struct TrustHandle {
    pub trust: Trust,
    pub own_key: NodePublicKey,
    pub name: Origin,
}

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

    /// What a reload replaces; `None` for a node that does not sign (it
    /// has no key of its own to keep trusting).
    pub fn trust_handle(&self) -> Option<TrustHandle> {
        let own_key = self.config.node_key.as_ref()?.public_key();
        Some(TrustHandle {
            trust: self.config.trust.clone(),
            own_key,
            name: self.config.node_id,
        })
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
        let trusted = self.config.trust.get().len();
        match &self.config.node_key {
            Some(key) => log::info!(
                "fleet: signing as {} (node key {}); trusting {} node keys, this one included",
                self.config.node_id,
                key.public_key().fingerprint(),
                trusted
            ),
            None => log::warn!("fleet: this node does not sign its records"),
        }
        if trusted <= 1 && self.config.require_signatures {
            log::warn!(
                "fleet: no other node is trusted (fleet.trusted_nodes lists none): other nodes' time-outs will be rejected (reason \"unknown key\")"
            );
        }
        if !self.config.require_signatures {
            log::warn!(
                "fleet: fleet.require_signatures is false: UNSIGNED records are applied too (anyone who can write the bucket can time out or release anyone); set it true once every node signs"
            );
        }
        self.link
            .start(self.config.clone(), store, Arc::new(Registry(server)))
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

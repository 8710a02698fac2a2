//! # penaltybox-fleet
//!
//! Time-outs shared across servers through a NATS JetStream key-value
//! bucket: an existing distributed engine (clustering, replication,
//! per-key TTLs), not a protocol of our own.
//!
//! - [`key`]: one key per prefix, a key-safe spelling of the CIDR;
//! - [`record`]: the bucket's value, a versioned record with hard limits,
//!   signed by the node that made it ([`node_key`]);
//! - [`trust`]: which node keys this node believes, under which names;
//! - [`freshness`]: no replay of an older record over a newer change;
//! - [`link`]: the task that publishes the outbox and watches the bucket,
//!   on its own thread and runtime, so the ban path never waits on the
//!   network and a slow engine never slows an acceptor.
//!
//! What the fleet does with a remote time-out (allow-list, bound, expiry,
//! kernel map) is the ban core's business: the link only hands records to
//! a [`FleetTarget`].

pub mod freshness;
pub mod key;
pub mod link;
pub mod node_key;
pub mod record;
pub mod trust;

pub use link::{Auth, FleetConfig, FleetLink, FleetStats, FleetTarget, Tls};
pub use node_key::{NodeKey, NodePublicKey};
pub use trust::{Rejection, Trust, TrustedNodes};

/// Why the fleet could not do something (logged by the link; the node
/// keeps working alone).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot connect to {servers}: {detail}")]
    Connect { servers: String, detail: String },
    #[error("cannot read the credentials file {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("bucket {bucket}: {detail}")]
    Bucket { bucket: String, detail: String },
    #[error("publishing {key}: {detail}")]
    Publish { key: String, detail: String },
    #[error("watching bucket {bucket}: {detail}")]
    Watch { bucket: String, detail: String },
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
}

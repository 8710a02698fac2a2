//! # penaltybox-actors
//!
//! The running server, as actix actors that exchange typed messages:
//!
//! - [`acceptor::Acceptor`], one per listen address: accepts every
//!   connection, closes it at once (RST, nothing read) when its source is
//!   timed out, else starts a session on a worker arbiter;
//! - [`session::Session`], one per connection: handshake under a deadline,
//!   then requests; any protocol violation becomes a `Ban` for the registry;
//! - [`registry::BanRegistry`]: the only writer of the time-out table. It
//!   applies the [`policy`], keeps the [`view::BanView`] the acceptors read
//!   without a round trip, persists through `storage`, mirrors bans into the
//!   kernel tier when there is one ([`kernel::KernelSync`]), and releases
//!   expired time-outs.
//!
//! [`service`] answers requests; [`limits`] and [`stats`] are shared
//! counters. No CLI parsing here: the `penaltybox` binary builds a
//! [`ServerConfig`] and calls [`server::start`].

pub mod acceptor;
pub mod kernel;
pub mod limits;
pub mod policy;
pub mod registry;
pub mod server;
pub mod service;
pub mod session;
pub mod stats;
pub mod view;

pub use server::{RunningServer, ServerConfig, start};

/// Wall-clock now, Unix milliseconds: what bans are stored with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

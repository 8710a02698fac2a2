//! # penaltybox-actors
//!
//! The running server, as actix actors that exchange typed messages. The
//! path of one connection reads in one direction (docs/ARCHITECTURE.md):
//!
//! 1. `acceptor` (one actor per listen address) accepts every connection;
//!    a timed-out source is closed at once (RST, nothing read) after one
//!    lookup in the [`BanView`]; otherwise `admission` gives it a slot and
//!    a `session` actor starts on a worker arbiter. What both read is in
//!    `shared`.
//! 2. `session` runs the handshake under a deadline, then answers requests
//!    (`requests`). A protocol violation is a `Ban` message to the registry.
//! 3. `registry`, the `BanRegistry` actor, is a thin mailbox over the
//!    [`BanCore`], the one place where a time-out is decided. The core hands
//!    each decision to the [`BanTable`], which keeps the view, storage, the
//!    kernel table ([`KernelTable`]) and the fleet outbox in step and ends
//!    every time-out with its reason ([`Ending`]). The registry tells live
//!    sessions of a newly timed-out prefix to close (`Kick`).
//!
//! No CLI parsing and no aya here: the `penaltybox` binary builds a
//! [`ServerConfig`] (with its kernel-table adapter) and calls [`start`];
//! the offline admin commands use [`BanCore::offline`].

mod acceptor;
mod admission;
mod allow_list;
mod ban_core;
mod ban_table;
mod error_summary;
mod fleet_outlet;
mod kernel_table;
mod listener;
mod policy;
mod proxy_header;
mod rate_limit;
mod registry;
mod requests;
mod session;
mod shared;
mod startup;
mod stats;
#[cfg(test)]
mod testing;
mod view;
mod widen;

pub use admission::LimitConfig;
pub use allow_list::AllowList;
pub use ban_core::{
    BanCore, BanOutcome, CoreParts, FeedList, Imported, PolicyChange, RemoteOutcome, hex_preview,
};
pub use ban_table::{BanTable, BootReport, Ending, FeedApplied, KernelReplay, feed_cause};
pub use fleet_outlet::FleetOutlet;
pub use kernel_table::{KernelError, KernelTable};
pub use listener::bind;
pub use policy::{AdminBan, BanPolicy, Durations, expiry_after};
pub use shared::{Deadlines, ReloadError, Reloader, ServiceConfig, TierStatus};
pub use startup::{RunningServer, ServerConfig, ServerHandle, StartError, start};
pub use stats::{HistogramSnapshot, LATENCY_BUCKETS, MetricsSnapshot, Stats};
pub use view::BanView;
pub use widen::WidenPolicy;

use model::Cidr;

/// Why a ban operation failed, as the registry answers it across the actor
/// boundary. The service tells the two kinds apart: the client's mistake
/// ([`BanError::is_server_fault`] false) is `InvalidRequest`, the server's
/// is `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("{prefix} is inside the allow-list entry {entry}")]
    AllowListed { prefix: Cidr, entry: Cidr },
    #[error(
        "{prefix} covers the allow-list entry {entry}; add --force to time it out anyway (allow-listed addresses stay reachable)"
    )]
    CoversAllowListed { prefix: Cidr, entry: Cidr },
    #[error(
        "{prefix} covers your own address {requester}; add --force to time it out anyway (and lose this connection)"
    )]
    CoversRequester {
        prefix: Cidr,
        requester: std::net::IpAddr,
    },
    #[error("a time-out must be longer than 0s")]
    ZeroDuration,
    #[error(
        "a time-out of {} is longer than bans.max_duration ({})",
        humantime::format_duration(*requested),
        humantime::format_duration(*max)
    )]
    OverMaxDuration {
        requested: std::time::Duration,
        max: std::time::Duration,
    },
    #[error(
        "the server is in monitor mode (bans.mode = \"monitor\"): nothing is timed out; set bans.mode = \"enforce\" and reload"
    )]
    MonitorMode,
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    /// The registry actor stopped: nothing is being timed out any more.
    #[error("the ban registry is not running")]
    RegistryGone,
}

impl BanError {
    pub fn is_server_fault(&self) -> bool {
        match self {
            BanError::AllowListed { .. }
            | BanError::CoversAllowListed { .. }
            | BanError::CoversRequester { .. }
            | BanError::ZeroDuration
            | BanError::OverMaxDuration { .. }
            | BanError::MonitorMode => false,
            BanError::Storage(_) | BanError::RegistryGone => true,
        }
    }
}

/// Wall-clock now, Unix milliseconds: what bans are stored with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_MS: u64 = 253_402_300_799_000;

/// A Unix-ms instant as RFC 3339 (seconds), for logs and listings. Never
/// panics: an instant past year 9999 (an absurd stored expiry) is written
/// as that last second with a `+`.
pub fn format_time(unix_ms: u64) -> String {
    let clamped = unix_ms.min(LAST_RFC3339_MS);
    let text = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(clamped),
    )
    .to_string();
    if unix_ms > LAST_RFC3339_MS {
        format!("{text}+")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_instant_formats(ms: u64) {
            let text = super::format_time(ms);
            prop_assert!(text.starts_with(|c: char| c.is_ascii_digit()));
        }

        #[test]
        fn expiries_never_wrap(now: u64, secs: u64, nanos in 0u32..1_000_000_000) {
            let expiry = super::expiry_after(now, std::time::Duration::new(secs, nanos));
            prop_assert!(expiry >= now);
        }
    }

    #[test]
    fn times_format_without_panicking() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00Z");
        // date -u -d @1700000000
        assert_eq!(
            super::format_time(1_700_000_000_123),
            "2023-11-14T22:13:20Z"
        );
        // date -u -d @951782400 (a leap day)
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::format_time(u64::MAX), "9999-12-31T23:59:59Z+");
        assert_eq!(
            super::format_time(super::LAST_RFC3339_MS),
            "9999-12-31T23:59:59Z"
        );
    }
}

//! # penaltybox-model
//!
//! The values every penaltybox crate shares, and nothing else: no I/O, no
//! policy. `protocol` carries them on the wire, `storage` keeps them with
//! its own versioned encoding, `actors` decides with them, `xdp` writes
//! prefixes into kernel maps.
//!
//! - [`cidr`]: IP prefixes in canonical form, the unit of a time-out;
//! - [`ban`]: ban records and the stable names of ban causes;
//! - [`volume`]: the tape-volume inventory's records;
//! - [`inline`]: fixed-capacity text, so every bounded field is bounded
//!   when it is decoded, not after.
//!
//! The bincode `Encode`/`Decode` impls here are the wire's encoding of these
//! values; storage does not use them for new records.

pub mod ban;
pub mod cidr;
pub mod inline;
pub mod volume;

pub use ban::{
    BanCause, BanHistory, BanInfo, BanReport, Cause, CauseClass, FirstBytes, KernelEntry,
    KernelSeen, Origin, WidenedFrom,
};
pub use cidr::{Cidr, CidrError};

//! # penaltybox-protocol
//!
//! Every byte penaltybox puts on the wire, and a client that speaks it.
//! `docs/PROTOCOL.md` is the byte-level specification; the modules follow it:
//!
//! - [`initiation`]: the client's first message (magic, version, pattern,
//!   length, mac1) and its classification, which lets a server reject
//!   foreign protocols from the first read, before any Diffie-Hellman;
//! - [`handshake`]: the Noise IK/NK handshake, client roles, replay guard;
//! - [`frame`]: encrypted, optionally compressed transport frames;
//! - [`message`]: the requests and responses the frames carry; the values
//!   inside them (prefixes, ban and volume records) are `model`'s;
//! - [`connection`]: message I/O over an async byte stream;
//! - [`keys`]: key files, public keys, authorized-keys lists;
//! - [`client`]: the async client.
//!
//! This crate owns no policy: what a server does about a rejected first
//! message (which time-out, under which cause name) is the `actors`
//! crate's business; [`Rejection`] only says what was wrong.

pub mod client;
pub mod connection;
pub mod frame;
pub mod handshake;
pub mod initiation;
pub mod keys;
pub mod message;

pub use client::{Client, ClientConfig, ClientError};
pub use handshake::{Accepted, AccessPolicy, Peer, Responder, Role};
pub use initiation::Rejection;
pub use keys::{PrivateKey, PublicKey};
pub use message::{AdminRequest, Request, Response};
pub use model::inline;

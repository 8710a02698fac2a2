//! # penaltybox-feeds
//!
//! Blocklist feeds: plain files of CIDRs, one a line with comments
//! (Spamhaus DROP/EDROP, FireHOL netsets, a CrowdSec blocklist export),
//! read from a path or fetched from a URL. This crate says what a feed
//! lists now: it fetches ([`fetch`]) within a size and a time limit, with
//! the last answer's validators, and parses ([`parse`]) with hard limits.
//! What the entries become (time-outs of cause `feed:NAME`, applied as a
//! difference so that nothing listed twice is ever out of force) is the
//! ban core's, in `actors`.

mod fetch;
mod parse;

pub use fetch::{FetchError, Fetched, Limits, Source, Validators, fetch};
pub use parse::{BAD_LINES_KEPT, BadLine, Parsed, TooMany, WIDEST_IPV4, WIDEST_IPV6, parse};

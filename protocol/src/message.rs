//! The messages carried in frames: requests from clients, responses from the
//! server. Encoding is bincode 2 (see `frame`); this module owns the types and
//! the semantic limits a server checks after decoding (`Request::validate`).
//!
//! The conversation is strictly request/response in order, so messages carry
//! no request ids.

use bincode::{Decode, Encode};
use model::Cidr;
pub use model::ban::{
    BanHistory, BanInfo, BanReport, Cause, FirstBytes, KernelEntry, MAX_CAUSE_LEN, MAX_FIRST_BYTES,
};
pub use model::volume::{
    Location, MAX_LOCATION_LEN, MAX_MEDIA_TYPE_LEN, MAX_VOLUME_ID_LEN, MediaType, Volume, VolumeId,
    VolumeSpec, VolumeStatus,
};
use model::volume::{check_text, check_token};

/// Largest page a list request may ask for; a server may return fewer.
pub const MAX_PAGE: u16 = 256;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    Ping {
        nonce: u64,
    },
    /// Creates or replaces a volume; the server stamps `updated_at`.
    PutVolume(VolumeSpec),
    GetVolume {
        id: VolumeId,
    },
    MoveVolume {
        id: VolumeId,
        location: Location,
    },
    /// Volumes in id order, starting after `after`.
    ListVolumes {
        after: Option<VolumeId>,
        limit: u16,
    },
    /// Accepted only on sessions whose key is an admin key.
    Admin(AdminRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AdminRequest {
    /// Bans in prefix order, starting after `after`.
    ListBans {
        after: Option<Cidr>,
        limit: u16,
    },
    /// `duration_secs: None` uses the server's default for admin bans.
    /// `force`: also a prefix that covers allow-listed addresses or the
    /// requester's own (the allow-list still holds).
    AddBan {
        prefix: Cidr,
        duration_secs: Option<u64>,
        cause: Cause,
        force: bool,
    },
    RemoveBan {
        prefix: Cidr,
    },
    Stats,
    /// What covers an address or prefix, its history, its kernel entry.
    ShowBan {
        target: Cidr,
    },
    /// Re-read the server's settings and apply what can change live (as
    /// SIGHUP does).
    Reload,
    /// Bans of one cause (`feed:NAME`, `widened`, an admin's note) in
    /// prefix order, starting after `after`.
    ListBansByCause {
        cause: Cause,
        after: Option<Cidr>,
        limit: u16,
    },
    /// Every blocklist feed: entries, last refresh, errors.
    Feeds,
    /// Admin time-outs of many prefixes at once (`bans import`), each as
    /// `AddBan` would make it; at most [`MAX_IMPORT`] a request.
    ImportBans {
        prefixes: Vec<Cidr>,
        duration_secs: Option<u64>,
        cause: Cause,
        force: bool,
    },
    /// What `penaltybox top` shows, in one bounded answer: the counters,
    /// time-outs by cause, the newest `recent` time-outs (at most
    /// [`MAX_TOP_RECENT`]), the kernel tier and the fleet.
    Top {
        recent: u16,
    },
}

/// Time-outs one `Top` answer may carry (about 12 KB encoded).
pub const MAX_TOP_RECENT: u16 = 100;

/// Prefixes one `ImportBans` request may carry (about 40 KB encoded).
pub const MAX_IMPORT: usize = 2048;

/// One blocklist feed as the server sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct FeedStat {
    pub name: String,
    /// Its path or URL.
    pub source: String,
    /// Entries in force now.
    pub entries: u64,
    /// When its list was last applied (Unix ms; 0: not yet).
    pub last_refresh_ms: u64,
    pub refreshes: u64,
    /// Refreshes that failed (the list before stayed in force).
    pub refresh_errors: u64,
    /// The last failure, one line ("" if none since the last good one).
    pub last_error: String,
    /// Lines of its last list that were not entries.
    pub bad_lines: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    Pong {
        nonce: u64,
    },
    Volume(Volume),
    Volumes {
        volumes: Vec<Volume>,
        next_after: Option<VolumeId>,
    },
    Bans {
        bans: Vec<BanInfo>,
        next_after: Option<Cidr>,
    },
    BanAdded(BanInfo),
    BanRemoved {
        prefix: Cidr,
        existed: bool,
    },
    Stats(ServerStats),
    Error {
        code: ErrorCode,
        message: String,
    },
    BanShown(Box<BanReport>),
    /// What a reload changed, one line.
    Reloaded {
        summary: String,
    },
    Feeds(Vec<FeedStat>),
    /// What an `ImportBans` did: how many were timed out, how many
    /// refused (inside the allow-list, covering it without force, ...),
    /// and the first refusal in words.
    Imported {
        added: u32,
        refused: u32,
        first_refusal: String,
    },
    Top(Box<TopView>),
}

/// One `Top` answer: what the server counts now. Rates are the client's
/// to compute, from two answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct TopView {
    /// The server's clock (Unix ms), for the time-outs' remaining time.
    pub now_ms: u64,
    pub stats: ServerStats,
    pub active_ipv4: u64,
    pub active_ipv6: u64,
    /// Time-outs made since start, by cause.
    pub by_cause: Vec<CauseCount>,
    /// The newest time-outs made here or applied from the fleet, newest
    /// first.
    pub recent: Vec<BanInfo>,
    /// `None`: no kernel tier configured.
    pub kernel: Option<KernelTierView>,
    /// `None`: no fleet configured.
    pub fleet_connected: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct CauseCount {
    pub cause: String,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct KernelTierView {
    /// Its pinned maps answer.
    pub up: bool,
    /// Packets dropped for a time-out since the program was attached.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ErrorCode {
    NotFound,
    InvalidRequest,
    /// An admin request on a session without an admin key, or a write on
    /// an anonymous session where only keys may write.
    Forbidden,
    Internal,
    /// A quota or rate limit: the request may succeed later.
    LimitExceeded,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct ServerStats {
    pub uptime_secs: u64,
    pub connections_accepted: u64,
    /// Connections closed at accept because their source was timed out.
    pub connections_refused: u64,
    /// Connections closed at accept because a connection limit was reached.
    pub connections_over_limit: u64,
    pub sessions_active: u64,
    /// Pending connections closed to make room when the table was full.
    pub pending_evicted: u64,
    /// Sessions closed because the peer did not take its responses.
    pub sessions_not_reading: u64,
    /// Requests refused by the per-session rate limit.
    pub requests_rate_limited: u64,
    /// Established sessions closed because their source was timed out.
    pub sessions_kicked: u64,
    pub handshakes_completed: u64,
    pub bans_active: u64,
    pub bans_total: u64,
    /// Time-outs evicted early because the table was full.
    pub bans_evicted: u64,
    /// Completed group-commit flushes of the database.
    pub storage_flushes: u64,
    /// Writes a crash now would lose (0 once the group commit caught up).
    pub storage_unflushed: u64,
    pub storage_errors: u64,
    /// Kernel-tier table updates that failed.
    pub kernel_errors: u64,
    /// Detections the kernel tier reported (port scans, SYN floods, bad
    /// TCP flags), before the policy (the allow-list) had its say.
    pub kernel_detections: u64,
}

impl Request {
    /// Semantic checks a server applies after decoding. A failure is answered
    /// with `ErrorCode::InvalidRequest`, not a ban: the frame authenticated,
    /// so it came from a real client with a bug, not a scanner.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            Request::Ping { .. } => Ok(()),
            Request::PutVolume(spec) => Ok(spec.validate()?),
            Request::GetVolume { id } => Ok(check_token("volume id", id.as_str())?),
            Request::MoveVolume { id, location } => {
                check_token("volume id", id.as_str())?;
                Ok(check_text("location", location.as_str())?)
            }
            Request::ListVolumes { after, limit } => {
                if let Some(after) = after {
                    check_token("volume id", after.as_str())?;
                }
                check_page(*limit)
            }
            Request::Admin(
                AdminRequest::ListBans { limit, .. } | AdminRequest::ListBansByCause { limit, .. },
            ) => check_page(*limit),
            Request::Admin(AdminRequest::ImportBans {
                prefixes, cause, ..
            }) => {
                if prefixes.is_empty() || prefixes.len() > MAX_IMPORT {
                    return Err(InvalidRequest::ImportSize(prefixes.len()));
                }
                Ok(check_text("cause", cause.as_str())?)
            }
            Request::Admin(AdminRequest::AddBan { cause, .. }) => {
                Ok(check_text("cause", cause.as_str())?)
            }
            Request::Admin(
                AdminRequest::RemoveBan { .. }
                | AdminRequest::Stats
                | AdminRequest::ShowBan { .. }
                | AdminRequest::Reload
                | AdminRequest::Feeds,
            ) => Ok(()),
            Request::Admin(AdminRequest::Top { recent }) => {
                if *recent > MAX_TOP_RECENT {
                    return Err(InvalidRequest::TopRecent(*recent));
                }
                Ok(())
            }
        }
    }
}

/// Why a decoded request is not served (answered `InvalidRequest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error(transparent)]
    Field(#[from] model::volume::FieldError),
    #[error("page limit must be 1..={MAX_PAGE}, got {0}")]
    PageLimit(u16),
    #[error("an import carries 1..={MAX_IMPORT} prefixes, got {0}")]
    ImportSize(usize),
    #[error("top shows 0..={MAX_TOP_RECENT} recent time-outs, got {0}")]
    TopRecent(u16),
}

fn check_page(limit: u16) -> Result<(), InvalidRequest> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(InvalidRequest::PageLimit(limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest `Top` answer fits one frame, and a request for more
    /// than it carries is refused.
    #[test]
    fn a_full_top_answer_fits_one_frame() {
        let long = |c: char| c.to_string().repeat(model::ban::MAX_CAUSE_LEN);
        let ban = BanInfo {
            prefix: "2001:db8::/64".parse().unwrap(),
            cause: long('c').parse().unwrap(),
            first_bytes: model::ban::FirstBytes::truncated(&[0xff; 64]),
            banned_at_ms: u64::MAX,
            expires_at_ms: u64::MAX,
            repeat: u32::MAX,
            origin: long('o').parse().unwrap(),
        };
        let view = TopView {
            by_cause: vec![
                CauseCount {
                    cause: long('x'),
                    total: u64::MAX,
                };
                32
            ],
            recent: vec![ban; usize::from(MAX_TOP_RECENT)],
            kernel: Some(KernelTierView::default()),
            fleet_connected: Some(true),
            ..TopView::default()
        };
        let encoded =
            bincode::encode_to_vec(Response::Top(Box::new(view)), crate::frame::wire_config())
                .unwrap();
        assert!(
            encoded.len() < crate::frame::MAX_MESSAGE_LEN,
            "{}",
            encoded.len()
        );
        let too_many = Request::Admin(AdminRequest::Top {
            recent: MAX_TOP_RECENT + 1,
        });
        assert_eq!(
            too_many.validate(),
            Err(InvalidRequest::TopRecent(MAX_TOP_RECENT + 1))
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = VolumeSpec {
            id: "A00001L9".parse().unwrap(),
            media_type: "LTO-9".parse().unwrap(),
            location: "Vault 3, shelf 12".parse().unwrap(),
            status: VolumeStatus::Active,
        };
        assert_eq!(spec.validate(), Ok(()));
        spec.id = "A 1".parse().unwrap();
        let error = |spec: &VolumeSpec| spec.validate().unwrap_err().to_string();
        assert!(error(&spec).contains("volume id"));
        spec.id = "A1".parse().unwrap();
        spec.location = "shelf\n12".parse().unwrap();
        assert!(error(&spec).contains("location"));
        spec.location = "".parse().unwrap();
        assert!(error(&spec).contains("location"));
        let list = Request::ListVolumes {
            after: None,
            limit: 0,
        };
        assert_eq!(list.validate(), Err(InvalidRequest::PageLimit(0)));
        assert!(
            list.validate()
                .unwrap_err()
                .to_string()
                .contains("page limit")
        );
    }
}

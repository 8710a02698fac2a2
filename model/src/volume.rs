//! The tape-volume inventory's records: what a client supplies for a volume
//! and what the server stores, with the semantic checks a server applies.

use std::str::FromStr;

use bincode::{Decode, Encode};

use crate::inline::InlineStr;

/// Limits on text fields; they keep any list page far below the frame limit.
pub const MAX_VOLUME_ID_LEN: usize = 32;
pub const MAX_MEDIA_TYPE_LEN: usize = 16;
pub const MAX_LOCATION_LEN: usize = 64;

/// Volume serial, e.g. "A00001L9".
pub type VolumeId = InlineStr<MAX_VOLUME_ID_LEN>;
/// e.g. "LTO-9".
pub type MediaType = InlineStr<MAX_MEDIA_TYPE_LEN>;
pub type Location = InlineStr<MAX_LOCATION_LEN>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum VolumeStatus {
    Scratch,
    Active,
    Full,
    Offsite,
    InTransit,
    Retired,
}

impl VolumeStatus {
    pub const ALL: [VolumeStatus; 6] = [
        VolumeStatus::Scratch,
        VolumeStatus::Active,
        VolumeStatus::Full,
        VolumeStatus::Offsite,
        VolumeStatus::InTransit,
        VolumeStatus::Retired,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VolumeStatus::Scratch => "scratch",
            VolumeStatus::Active => "active",
            VolumeStatus::Full => "full",
            VolumeStatus::Offsite => "offsite",
            VolumeStatus::InTransit => "in-transit",
            VolumeStatus::Retired => "retired",
        }
    }
}

impl FromStr for VolumeStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown status {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// What a client supplies for a volume.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VolumeSpec {
    pub id: VolumeId,
    pub media_type: MediaType,
    pub location: Location,
    pub status: VolumeStatus,
}

/// A volume as stored by the server.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Volume {
    pub spec: VolumeSpec,
    /// Milliseconds since the Unix epoch, set by the server.
    pub updated_at_ms: u64,
}

impl VolumeSpec {
    pub fn validate(&self) -> Result<(), String> {
        check_token("volume id", self.id.as_str())?;
        check_token("media type", self.media_type.as_str())?;
        check_text("location", self.location.as_str())
    }
}

/// Identifiers: ASCII letters, digits, '-', '_', '.'.
pub fn check_token(what: &str, value: &str) -> Result<(), String> {
    check_text(what, value)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{what} {value:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Free text: non-empty, no control characters. (Lengths are bounded by
/// the field types and enforced when decoding.)
pub fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in VolumeStatus::ALL {
            assert_eq!(status.name().parse::<VolumeStatus>(), Ok(status));
        }
        assert!(
            "lost"
                .parse::<VolumeStatus>()
                .unwrap_err()
                .contains("in-transit")
        );
    }
}

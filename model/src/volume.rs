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
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|status| status.name() == s)
            .ok_or_else(|| FieldError::UnknownStatus(s.to_owned()))
    }
}

/// What is wrong with a field a client sent: answered as an invalid
/// request (the frame authenticated, so this is a client's bug, not an
/// attack), with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} must not contain control characters")]
    ControlCharacters { field: &'static str },
    #[error("{field} {value:?} may only contain letters, digits, '-', '_' and '.'")]
    NotAToken { field: &'static str, value: String },
    #[error(
        "unknown status {0:?}; expected one of scratch, active, full, offsite, in-transit, retired"
    )]
    UnknownStatus(String),
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
    pub fn validate(&self) -> Result<(), FieldError> {
        check_token("volume id", self.id.as_str())?;
        check_token("media type", self.media_type.as_str())?;
        check_text("location", self.location.as_str())
    }
}

/// Identifiers: ASCII letters, digits, '-', '_', '.'.
pub fn check_token(field: &'static str, value: &str) -> Result<(), FieldError> {
    check_text(field, value)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FieldError::NotAToken {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Free text: non-empty, no control characters. (Lengths are bounded by
/// the field types and enforced when decoding.)
pub fn check_text(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::Empty { field });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::ControlCharacters { field });
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
        let names: Vec<_> = VolumeStatus::ALL.iter().map(|s| s.name()).collect();
        let error = "lost".parse::<VolumeStatus>().unwrap_err().to_string();
        assert!(error.ends_with(&names.join(", ")), "{error}");
    }
}

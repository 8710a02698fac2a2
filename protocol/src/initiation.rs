//! The client's first message: fixed header, Noise message 1, and mac1.
//!
//! Everything here runs before any Diffie-Hellman. Its job is to let the
//! server say "this is not our protocol" from the first bytes it reads, as
//! cheaply as possible and with a precise reason, so that scanners (TLS
//! hellos, HTTP, SSDP, SSH banners, RDP/SMB probes, random bytes) are timed
//! out without costing a handshake.
//!
//! ```text
//! offset  size  field
//! 0       4     magic  F0 50 42 58  ("\xF0PBX")
//! 4       1     version (1)
//! 5       1     pattern (1 = Noise NK, anonymous client; 2 = Noise IK, client key)
//! 6       2     total length of the message, big-endian (84 for NK, 132 for IK)
//! 8       n     Noise message 1 (60 bytes NK, 108 bytes IK); prologue = bytes 0..8
//! 8+n     16    mac1 = BLAKE2s-MAC-128(key = BLAKE2s-256("mac1----" || server static public), bytes 0..8+n)
//! ```
//!
//! mac1 is WireGuard's construction: it proves the sender knows the server's
//! public key, which every scanner lacks, before the server spends a DH on it.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::keys::PublicKey;

pub const MAGIC: [u8; 4] = [0xF0, b'P', b'B', b'X'];
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
pub const MAC1_LEN: usize = 16;

/// The longest first message of any pattern: the most a server reads before
/// deciding, and the size of its read buffer.
pub const MAX_INITIATION_LEN: usize = Pattern::IK.initiation_len();

/// The Noise handshake pattern a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Anonymous client; only the server is authenticated.
    NK,
    /// The client proves a static key the server may check against a list.
    IK,
}

/// The TAI64N timestamp a first message carries (encrypted): 12 bytes.
pub const TIMESTAMP_LEN: usize = 12;

impl Pattern {
    pub const fn wire_id(self) -> u8 {
        match self {
            Pattern::NK => 1,
            Pattern::IK => 2,
        }
    }

    pub fn from_wire_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Pattern::NK),
            2 => Some(Pattern::IK),
            _ => None,
        }
    }

    pub const fn noise_params(self) -> &'static str {
        match self {
            Pattern::NK => "Noise_NK_25519_ChaChaPoly_BLAKE2s",
            Pattern::IK => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
        }
    }

    /// Length of Noise message 1: ephemeral key, (IK: encrypted static key),
    /// and the encrypted 12-byte TAI64N timestamp payload.
    pub const fn noise_len(self) -> usize {
        match self {
            Pattern::NK => 32 + (TIMESTAMP_LEN + 16),
            Pattern::IK => 32 + (32 + 16) + (TIMESTAMP_LEN + 16),
        }
    }

    pub const fn initiation_len(self) -> usize {
        HEADER_LEN + self.noise_len() + MAC1_LEN
    }
}

/// Why a first message is not penaltybox. Each is a distinct ban cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("unknown handshake pattern {0}")]
    BadPattern(u8),
    #[error("bad length {declared} (expected {expected})")]
    BadLength { declared: u16, expected: u16 },
    #[error("bad mac1 (sender does not know the server's public key)")]
    BadMac1,
    #[error("handshake failed (message 1 did not decrypt)")]
    HandshakeFailed,
    #[error("anonymous clients are not allowed on this server")]
    AnonymousNotAllowed,
    #[error("client key {0} is not authorized")]
    Unauthorized(PublicKey),
    #[error(
        "replayed initiation (its ephemeral key was seen before, or its timestamp is not newer than the last one from this key)"
    )]
    Replayed,
    #[error("initiation timestamp far ahead of the server's clock")]
    FutureTimestamp,
}

impl Rejection {
    /// True for the reasons that mean "not our protocol at all" (decided
    /// before mac1), as opposed to a penaltybox client that failed to
    /// authenticate. Servers give the two different time-outs.
    pub fn is_foreign_protocol(&self) -> bool {
        matches!(
            self,
            Rejection::BadMagic
                | Rejection::BadVersion(_)
                | Rejection::BadPattern(_)
                | Rejection::BadLength { .. }
        )
    }
}

/// First byte of a rejection notice. A notice is two bytes, optionally
/// followed by [`TIMED_OUT_TAG`] and a big-endian u32 of seconds (the
/// time-out the rejection put the sender's address in), then the server
/// closes; a real response is [`crate::handshake::RESPONSE_LEN`] bytes, so
/// the length tells the two apart.
pub const NOTICE_TAG: u8 = 0xFF;
pub const TIMED_OUT_TAG: u8 = b'T';
/// The longest notice: tag, code, timed-out tag, seconds.
pub const MAX_NOTICE_LEN: usize = 7;

/// A rejection notice that says the sender is now timed out for `secs`.
pub fn notice_with_time_out(notice: [u8; 2], secs: u64) -> [u8; MAX_NOTICE_LEN] {
    let secs = u32::try_from(secs).unwrap_or(u32::MAX).to_be_bytes();
    [
        notice[0],
        notice[1],
        TIMED_OUT_TAG,
        secs[0],
        secs[1],
        secs[2],
        secs[3],
    ]
}

impl Rejection {
    /// The two bytes a server sends before closing when it rejects a message
    /// whose header was valid: that sender is a penaltybox client (only they
    /// know the header), and telling it why (most often a wrong server key)
    /// saves its user a guess. Foreign protocols get no answer at all.
    pub fn notice(&self) -> Option<[u8; 2]> {
        let code = match self {
            Rejection::BadMac1 => 1,
            Rejection::AnonymousNotAllowed | Rejection::Unauthorized(_) => 2,
            Rejection::HandshakeFailed => 3,
            Rejection::Replayed => 4,
            Rejection::FutureTimestamp => 5,
            _ => return None,
        };
        Some([NOTICE_TAG, code])
    }
}

/// What a rejection notice told the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Notice {
    #[error("the server key given is not this server's key (bad mac1)")]
    WrongServerKey,
    #[error(
        "this client's key is not authorized on the server (or the server needs a client key: pass --key)"
    )]
    Unauthorized,
    #[error("the server could not complete the handshake")]
    HandshakeFailed,
    #[error("the server saw this initiation before (is the client clock going backwards?)")]
    Replayed,
    #[error("this client's clock is more than 5 minutes ahead of the server's")]
    ClockAhead,
    #[error("the server is busy (too many handshakes in progress); try again shortly")]
    Busy,
    #[error("too many connections from this client's address")]
    TooManyFromSource,
}

impl Notice {
    /// What a server sends at accept, before reading anything, when a
    /// connection is over one of its limits (not a rejection of bytes).
    pub fn over_limit(too_many_from_source: bool) -> [u8; 2] {
        [NOTICE_TAG, if too_many_from_source { 7 } else { 6 }]
    }

    /// A notice and, if it says so, how long the sender is timed out.
    pub fn parse_with_time_out(bytes: &[u8]) -> Option<(Notice, Option<std::time::Duration>)> {
        match bytes {
            [a, b] => Some((Notice::parse(&[*a, *b])?, None)),
            [a, b, TIMED_OUT_TAG, s0, s1, s2, s3] => Some((
                Notice::parse(&[*a, *b])?,
                Some(std::time::Duration::from_secs(u64::from(
                    u32::from_be_bytes([*s0, *s1, *s2, *s3]),
                ))),
            )),
            _ => None,
        }
    }

    pub fn parse(bytes: &[u8]) -> Option<Notice> {
        match bytes {
            [NOTICE_TAG, 1] => Some(Notice::WrongServerKey),
            [NOTICE_TAG, 2] => Some(Notice::Unauthorized),
            [NOTICE_TAG, 3] => Some(Notice::HandshakeFailed),
            [NOTICE_TAG, 4] => Some(Notice::Replayed),
            [NOTICE_TAG, 5] => Some(Notice::ClockAhead),
            [NOTICE_TAG, 6] => Some(Notice::Busy),
            [NOTICE_TAG, 7] => Some(Notice::TooManyFromSource),
            _ => None,
        }
    }
}

/// What the bytes received so far say about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// Consistent with a first message; read more.
    NeedMore,
    /// The header is valid; the whole message is this long.
    Header {
        pattern: Pattern,
        len: usize,
    },
    Reject(Rejection),
}

/// Classifies a prefix of the first message. Decides as early as the bytes
/// allow: a single wrong first byte is already `BadMagic`.
pub fn classify(prefix: &[u8]) -> Classification {
    let magic_seen = prefix.len().min(MAGIC.len());
    if prefix[..magic_seen] != MAGIC[..magic_seen] {
        return Classification::Reject(Rejection::BadMagic);
    }
    if prefix.len() > 4 && prefix[4] != VERSION {
        return Classification::Reject(Rejection::BadVersion(prefix[4]));
    }
    if prefix.len() <= 5 {
        return Classification::NeedMore;
    }
    let Some(pattern) = Pattern::from_wire_id(prefix[5]) else {
        return Classification::Reject(Rejection::BadPattern(prefix[5]));
    };
    if prefix.len() < HEADER_LEN {
        return Classification::NeedMore;
    }
    let declared = u16::from_be_bytes([prefix[6], prefix[7]]);
    let expected = pattern.initiation_len();
    if usize::from(declared) != expected || prefix.len() > expected {
        return Classification::Reject(Rejection::BadLength {
            declared,
            expected: expected as u16,
        });
    }
    Classification::Header {
        pattern,
        len: expected,
    }
}

/// The key mac1 is computed with; derived once per server key.
#[derive(Clone)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    pub fn new(server_public: &PublicKey) -> Self {
        let digest = Blake2s256::new()
            .chain_update(b"mac1----")
            .chain_update(server_public.as_bytes())
            .finalize();
        Mac1Key(digest.into())
    }

    pub fn compute(&self, covered: &[u8]) -> [u8; MAC1_LEN] {
        let mut mac = self.mac();
        Update::update(&mut mac, covered);
        mac.finalize_fixed().into()
    }

    /// Checks the trailing mac1 of a complete first message in constant time.
    pub fn verify(&self, message: &[u8]) -> bool {
        let Some(split) = message.len().checked_sub(MAC1_LEN) else {
            return false;
        };
        let mut mac = self.mac();
        Update::update(&mut mac, &message[..split]);
        blake2::digest::Mac::verify_slice(mac, &message[split..]).is_ok()
    }

    fn mac(&self) -> Blake2sMac<U16> {
        <Blake2sMac<U16> as KeyInit>::new_from_slice(&self.0)
            .expect("32-byte key is valid for BLAKE2s")
    }
}

/// Builds the 8-byte header for a message of `pattern`.
pub fn header(pattern: Pattern) -> [u8; HEADER_LEN] {
    let len = (pattern.initiation_len() as u16).to_be_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        VERSION,
        pattern.wire_id(),
        len[0],
        len[1],
    ]
}

/// Why reading a first message from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadInitiationError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("connection closed after {0} bytes, before a complete first message")]
    Closed(usize),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one first message into `buf` (cleared first), classifying after
/// every read so that foreign bytes are rejected on the read that brings
/// them. Never reads past the message, and never holds more than
/// [`MAX_INITIATION_LEN`] bytes. On error `buf` holds what was seen, for logs.
///
/// mac1 is not checked here; [`crate::handshake::Responder::accept`] does.
pub async fn read_initiation<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Pattern, ReadInitiationError> {
    buf.clear();
    let mut chunk = [0u8; MAX_INITIATION_LEN];
    // Until the header is known, read at most the header; afterwards exactly
    // the rest, so no byte of a following frame is consumed.
    let mut wanted = HEADER_LEN;
    loop {
        let n = reader.read(&mut chunk[..wanted - buf.len()]).await?;
        if n == 0 {
            return Err(ReadInitiationError::Closed(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
        match classify(buf) {
            Classification::Reject(reason) => return Err(ReadInitiationError::Rejected(reason)),
            Classification::NeedMore => {}
            Classification::Header { pattern, len } => {
                if buf.len() == len {
                    return Ok(pattern);
                }
                wanted = len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_documented_layout() {
        assert_eq!(Pattern::NK.initiation_len(), 84);
        assert_eq!(Pattern::IK.initiation_len(), 132);
        assert_eq!(header(Pattern::IK)[6..], 132u16.to_be_bytes());
    }

    #[test]
    fn classification_decides_on_the_first_wrong_byte() {
        assert_eq!(classify(b""), Classification::NeedMore);
        assert_eq!(classify(&MAGIC[..2]), Classification::NeedMore);
        assert_eq!(classify(b"G"), Classification::Reject(Rejection::BadMagic));
        let mut bytes = header(Pattern::NK).to_vec();
        bytes[4] = 9;
        assert_eq!(
            classify(&bytes[..5]),
            Classification::Reject(Rejection::BadVersion(9))
        );
        bytes[4] = VERSION;
        bytes[5] = 7;
        assert_eq!(
            classify(&bytes[..6]),
            Classification::Reject(Rejection::BadPattern(7))
        );
        bytes[5] = Pattern::NK.wire_id();
        bytes[6..8].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            classify(&bytes),
            Classification::Reject(Rejection::BadLength {
                declared: 1000,
                expected: 84
            })
        );
        assert_eq!(
            classify(&header(Pattern::NK)),
            Classification::Header {
                pattern: Pattern::NK,
                len: 84
            }
        );
    }

    #[test]
    fn mac1_matches_an_independent_blake2s() {
        // Expected values computed with Python's hashlib (an independent
        // BLAKE2s): key = blake2s(b"mac1----" + bytes(range(32))), then
        // blake2s(msg, key=key, digest_size=16).
        let server = PublicKey::from_bytes(std::array::from_fn(|i| i as u8));
        let key = Mac1Key::new(&server);
        assert_eq!(
            hex(&key.0),
            "4fb2527ac956001553dc1ad9b55171b7d9daa3de1cdbcd71451830170c7e6cac"
        );
        let tag = key.compute(b"penaltybox first message");
        assert_eq!(hex(&tag), "fc28f45d8f08aa1547f0a09a301a490e");
        let mut message = b"penaltybox first message".to_vec();
        message.extend_from_slice(&tag);
        assert!(key.verify(&message));
        message[0] ^= 1;
        assert!(!key.verify(&message));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

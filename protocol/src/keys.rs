//! Static X25519 keys: generation, the on-disk key file, base64 public keys,
//! authorized-keys lists and fingerprints.
//!
//! Key material is handled with x25519-dalek types; the Noise handshake only
//! ever sees the raw 32 bytes. The file format is WireGuard's (one line of
//! standard base64 holding the 32 bytes) after a one-line type header that
//! `keygen` and `serve` write: [`PRIVATE_HEADER`] or [`PUBLIC_HEADER`]. The
//! readers refuse a file of the other type with a one-line explanation, so
//! a private key given where a public key is expected (and the reverse)
//! fails here, before any connection. A file without a header (`wg genkey`,
//! a key written by an earlier release) is still read.

use std::collections::HashSet;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::{Blake2s256, Digest};
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

/// Length of an X25519 key, private or public.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: already exists; refusing to overwrite a key file")]
    Exists { path: PathBuf },
    #[error("{what}: not a key: expected 44 characters of base64 encoding 32 bytes")]
    Malformed { what: String },
    #[error("{path}:{line}: not a public key: expected 44 characters of base64 encoding 32 bytes")]
    MalformedLine { path: PathBuf, line: usize },
    #[error(
        "{path}: this is a public key file; a private key is needed here (the file keygen wrote without .pub)"
    )]
    PublicWherePrivate { path: PathBuf },
    #[error(
        "{path}: this is a PRIVATE key file; a public key is needed here (the .pub file beside it, or server.pub); keep the private one secret"
    )]
    PrivateWherePublic { path: PathBuf },
}

/// The first line of a private key file.
pub const PRIVATE_HEADER: &str = "# penaltybox private key (X25519); keep it secret";
/// The first line of a public key file.
pub const PUBLIC_HEADER: &str = "# penaltybox public key (X25519)";

/// What a key file's header says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Private,
    Public,
    /// No header: a bare key (WireGuard's format, earlier releases).
    Unknown,
}

fn kind_of(text: &str) -> KeyKind {
    match text.lines().next().map(str::trim) {
        Some(PRIVATE_HEADER) => KeyKind::Private,
        Some(PUBLIC_HEADER) => KeyKind::Public,
        _ => KeyKind::Unknown,
    }
}

/// The key line of a key file: the first line that is not a comment.
pub fn key_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .unwrap_or("")
}

/// Reads a public key file (`server.pub`, a `.pub` keygen wrote): refuses
/// a private key file.
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, KeyError> {
    let text = read_key_text(path)?;
    parse_public_key_text(&text, &path.display().to_string()).map_err(|error| match error {
        KeyError::PrivateWherePublic { .. } => KeyError::PrivateWherePublic {
            path: path.to_owned(),
        },
        other => other,
    })
}

/// A public key given as text: bare base64, or a public key file's whole
/// content (`--server-key "$(cat server.pub)"`); `what` names it in errors.
pub fn parse_public_key_text(text: &str, what: &str) -> Result<PublicKey, KeyError> {
    if kind_of(text) == KeyKind::Private {
        return Err(KeyError::PrivateWherePublic { path: what.into() });
    }
    decode_key(key_line(text))
        .map(PublicKey)
        .ok_or_else(|| KeyError::Malformed { what: what.into() })
}

/// A key file is a few short lines; refuse to slurp anything large.
pub fn read_key_text(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > 1024 {
        return Err(KeyError::Malformed {
            what: path.display().to_string(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Writes a public key file (with its header). Never overwrites.
pub fn write_public_key_file(key: &PublicKey, path: &Path) -> Result<(), KeyError> {
    write_new_key_file(path, 0o644, &format!("{PUBLIC_HEADER}\n{key}\n"))
}

/// Creates `path` with `mode` and writes `text`, synced. Never overwrites.
pub fn write_new_key_file(path: &Path, mode: u32, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => io(source),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// A static private key. Zeroized on drop by x25519-dalek.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

/// A static public key, as pinned by clients and listed in authorized-keys files.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PrivateKey {
    pub fn generate() -> Self {
        PrivateKey(StaticSecret::random())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(StaticSecret::from(bytes))
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&self.0).to_bytes())
    }

    /// Reads a key file written by [`PrivateKey::write_new`] (or `wg genkey`).
    /// A file readable by group or others is accepted with a warning, as ssh
    /// would not: refusing would lock users out of a running deployment.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{}: private key is readable by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        let text = read_key_text(path)?;
        let named_pub = path.extension().is_some_and(|e| e == "pub");
        if kind_of(&text) == KeyKind::Public || (kind_of(&text) == KeyKind::Unknown && named_pub) {
            return Err(KeyError::PublicWherePrivate {
                path: path.to_owned(),
            });
        }
        let bytes = decode_key(key_line(&text)).ok_or_else(|| KeyError::Malformed {
            what: path.display().to_string(),
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Writes the key to a new file with mode 0600. Never overwrites.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let text = format!("{PRIVATE_HEADER}\n{}\n", B64.encode(self.to_bytes()));
        write_new_key_file(path, 0o600, &text)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short, stable name for logs: 16 hex digits of BLAKE2s(key).
    pub fn fingerprint(&self) -> String {
        let digest = Blake2s256::new()
            .chain_update(b"penaltybox key fingerprint")
            .chain_update(self.0)
            .finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s.trim())
            .map(PublicKey)
            .ok_or_else(|| KeyError::Malformed {
                what: format!("public key {s:?}"),
            })
    }
}

/// 32 bytes from 44 characters of standard base64; `None` otherwise.
pub fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    // 44 base64 characters encode 32 bytes; checking first bounds the decode.
    if text.len() != 44 {
        return None;
    }
    B64.decode(text).ok()?.try_into().ok()
}

/// Reads an authorized-keys file: one base64 public key per line, as
/// `authorized_keys` has them: `KEY`, `KEY comment`, `KEY # comment`;
/// blank lines and lines starting with `#` are ignored. A private key file
/// given here is refused (its key would otherwise pass for a public one).
pub fn read_public_keys(path: &Path) -> Result<HashSet<PublicKey>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    if kind_of(&text) == KeyKind::Private {
        return Err(KeyError::PrivateWherePublic {
            path: path.to_owned(),
        });
    }
    let mut keys = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("");
        let Some(content) = content.split_whitespace().next() else {
            continue;
        };
        let key = decode_key(content).ok_or_else(|| KeyError::MalformedLine {
            path: path.to_owned(),
            line: index + 1,
        })?;
        keys.insert(PublicKey(key));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_is_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.key");
        let key = PrivateKey::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = PrivateKey::read(&path).unwrap();
        assert_eq!(read.public_key(), key.public_key());
        let again = PrivateKey::generate().write_new(&path);
        assert!(matches!(again, Err(KeyError::Exists { .. })), "{again:?}");
        assert_eq!(
            PrivateKey::read(&path).unwrap().public_key(),
            key.public_key()
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_refused_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("me.key");
        let public = dir.path().join("me.pub");
        let key = PrivateKey::generate();
        key.write_new(&private).unwrap();
        write_public_key_file(&key.public_key(), &public).unwrap();
        assert_eq!(read_public_key_file(&public).unwrap(), key.public_key());
        let err = read_public_key_file(&private).unwrap_err();
        assert!(matches!(err, KeyError::PrivateWherePublic { .. }), "{err}");
        let err = PrivateKey::read(&public).unwrap_err();
        assert!(matches!(err, KeyError::PublicWherePrivate { .. }), "{err}");
        let err = read_public_keys(&private).unwrap_err();
        assert!(matches!(err, KeyError::PrivateWherePublic { .. }), "{err}");
        // A bare key (wg genkey, earlier releases) still reads.
        let bare = dir.path().join("wg.key");
        std::fs::write(&bare, format!("{}\n", B64.encode(key.to_bytes()))).unwrap();
        assert_eq!(
            PrivateKey::read(&bare).unwrap().public_key(),
            key.public_key()
        );
    }

    #[test]
    fn x25519_known_answer_from_rfc7748() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private: [u8; 32] =
            hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(
            PrivateKey::from_bytes(private).public_key(),
            PublicKey(public)
        );
    }

    #[test]
    fn public_key_text_round_trip_and_rejects_garbage() {
        let public = PrivateKey::generate().public_key();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        for bad in [
            "",
            "abc",
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
            &"A".repeat(88),
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn authorized_keys_allow_comments_and_name_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized");
        let a = PrivateKey::generate().public_key();
        let b = PrivateKey::generate().public_key();
        let c = PrivateKey::generate().public_key();
        std::fs::write(
            &path,
            format!("# team\n{a} # alice\n\n  {b}\n{c} carol@laptop\n"),
        )
        .unwrap();
        let keys = read_public_keys(&path).unwrap();
        assert_eq!(keys, HashSet::from([a, b, c]));
        std::fs::write(&path, format!("{a}\nnot-a-key\n")).unwrap();
        let err = read_public_keys(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::MalformedLine { line: 2, .. }),
            "{err}"
        );
    }

    fn hex32(text: &str) -> [u8; 32] {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }
}

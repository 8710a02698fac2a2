//! A node's Ed25519 key pair: it signs every record the node writes to the
//! bucket, so a writer of the bucket without it cannot pass for the node.
//!
//! The files look like the server's X25519 key files (one header line,
//! one line of base64, the private one mode 0600, `.pub` beside it), with
//! headers of their own so that one kind is never read as the other. The
//! file helpers are the protocol crate's; the signatures are
//! ed25519-dalek's.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::{Blake2s256, Digest};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use protocol::keys::{KeyError, decode_key, key_line, read_key_text, write_new_key_file};

/// The first line of a node's private key file.
pub const NODE_PRIVATE_HEADER: &str = "# penaltybox fleet node key (Ed25519); keep it secret";
/// The first line of a node's public key file.
pub const NODE_PUBLIC_HEADER: &str = "# penaltybox fleet node public key (Ed25519)";

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error(transparent)]
    File(#[from] KeyError),
    #[error("{path}: not a fleet node key (its first line is not {NODE_PRIVATE_HEADER:?})")]
    NotANodeKey { path: PathBuf },
    #[error("{what}: not a node public key (44 characters of base64 encoding 32 bytes)")]
    BadPublicKey { what: String },
    #[error("cannot make a node key: the system's random source failed ({0})")]
    Random(getrandom::Error),
}

/// A node's signing key. ed25519-dalek zeroizes it on drop.
pub struct NodeKey(SigningKey);

/// A node's public key, as `fleet.trusted_nodes` lists it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodePublicKey(VerifyingKey);

impl NodeKey {
    /// A new key from the kernel's random source.
    pub fn generate() -> Result<Self, NodeKeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(NodeKeyError::Random)?;
        Ok(NodeKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public_key(&self) -> NodePublicKey {
        NodePublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }

    /// Reads a key file [`NodeKey::write_new`] wrote; any other key file
    /// (the server's X25519 key, a public key) is refused by its header.
    pub fn read(path: &Path) -> Result<Self, NodeKeyError> {
        let text = read_key_text(path)?;
        if text.lines().next().map(str::trim) != Some(NODE_PRIVATE_HEADER) {
            return Err(NodeKeyError::NotANodeKey {
                path: path.to_owned(),
            });
        }
        let seed = decode_key(key_line(&text)).ok_or_else(|| KeyError::Malformed {
            what: path.display().to_string(),
        })?;
        Ok(NodeKey(SigningKey::from_bytes(&seed)))
    }

    /// Writes the key (0600) and its public key beside it (`.pub`).
    /// Never overwrites the private key; a `.pub` left from an earlier key
    /// is replaced (it names no secret).
    pub fn write_new(&self, path: &Path) -> Result<PathBuf, NodeKeyError> {
        let text = format!("{NODE_PRIVATE_HEADER}\n{}\n", B64.encode(self.0.to_bytes()));
        write_new_key_file(path, 0o600, &text)?;
        let public_path = path.with_extension("pub");
        if public_path.exists() {
            std::fs::remove_file(&public_path).map_err(|source| KeyError::Io {
                path: public_path.clone(),
                source,
            })?;
        }
        let text = format!("{NODE_PUBLIC_HEADER}\n{}\n", self.public_key());
        write_new_key_file(&public_path, 0o644, &text)?;
        Ok(public_path)
    }

    /// The key at `path`, made there (with its `.pub`) if the file does not
    /// exist: `Ok((key, true))` when it was made now.
    pub fn read_or_create(path: &Path) -> Result<(Self, bool), NodeKeyError> {
        if path.exists() {
            return Ok((Self::read(path)?, false));
        }
        let key = Self::generate()?;
        key.write_new(path)?;
        Ok((key, true))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public {})", self.public_key())
    }
}

impl NodePublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes).ok().map(NodePublicKey)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Strict verification (no malleable or small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let signature = Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }

    /// Whether every `(key, message, signature)` verifies, checked at once
    /// (ed25519-dalek's batch verification: about half the work of one by
    /// one). `false` says only that at least one does not: the caller then
    /// checks them one by one to learn which. The batch equation is the
    /// cofactored one: it can pass a signature `verify_strict` refuses only
    /// if the key's owner built it so (small-order parts); a writer of the
    /// bucket without the key can make nothing it passes.
    pub fn verify_all(items: &[(&NodePublicKey, &[u8], &[u8; SIGNATURE_LEN])]) -> bool {
        let keys: Vec<VerifyingKey> = items.iter().map(|(key, _, _)| key.0).collect();
        let messages: Vec<&[u8]> = items.iter().map(|(_, message, _)| *message).collect();
        let signatures: Vec<Signature> = items
            .iter()
            .map(|(_, _, signature)| Signature::from_bytes(signature))
            .collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    }

    /// A short, stable name for logs: 16 hex digits of BLAKE2s(key).
    pub fn fingerprint(&self) -> String {
        let digest = Blake2s256::new()
            .chain_update(b"penaltybox node key fingerprint")
            .chain_update(self.0.as_bytes())
            .finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A public key given as text: bare base64, or a `.pub` file's content.
    pub fn parse(text: &str, what: &str) -> Result<Self, NodeKeyError> {
        decode_key(key_line(text))
            .and_then(|bytes| Self::from_bytes(&bytes))
            .ok_or_else(|| NodeKeyError::BadPublicKey { what: what.into() })
    }
}

impl fmt::Display for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (made, new) = NodeKey::read_or_create(&path).unwrap();
        assert!(new);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, new) = NodeKey::read_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(read.public_key(), made.public_key());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        assert_eq!(
            NodePublicKey::parse(&public, "node.pub").unwrap(),
            made.public_key()
        );
        let signature = read.sign(b"message");
        assert!(made.public_key().verify(b"message", &signature));
        assert!(!made.public_key().verify(b"massage", &signature));
    }

    #[test]
    fn other_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("server.key");
        protocol::PrivateKey::generate().write_new(&server).unwrap();
        let error = NodeKey::read(&server).unwrap_err().to_string();
        assert!(error.contains("not a fleet node key"), "{error}");
        let node = dir.path().join("node.key");
        NodeKey::generate().unwrap().write_new(&node).unwrap();
        let error = NodeKey::read(&node.with_extension("pub"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a fleet node key"), "{error}");
        assert!(NodePublicKey::parse("AAAA", "x").is_err());
    }
}

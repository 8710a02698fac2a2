//! Which node keys this node believes, and under which names:
//! `fleet.trusted_nodes`, a file of `KEY node-name` lines as
//! `authorized_keys` has them (blank lines and `#` comments ignored).
//!
//! A record is applied only if a key listed here signed it *and* the name
//! listed with that key is the record's origin, so a trusted node cannot
//! pass for another either. The node's own key is always trusted under its
//! own name. One name may have several keys (a key being rotated); one key
//! has one name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use model::ban::{MAX_ORIGIN_LEN, Origin};

use crate::node_key::NodePublicKey;
use crate::record::Record;

/// Far above any real fleet (a line is under 120 bytes).
pub const MAX_TRUST_FILE_LEN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {len} bytes (at most {MAX_TRUST_FILE_LEN})")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("{path}:{line}: {detail}")]
    Line {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

/// Why a bucket entry was not applied, as the metric's `reason` label
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No signature (a format 1 record, or a bare KV delete).
    Unsigned,
    /// Signed by a key not in `fleet.trusted_nodes`.
    UnknownKey,
    /// The signature does not verify (the record was changed).
    BadSignature,
    /// A trusted key, signing for another node's name.
    OriginMismatch,
    /// Expired, or no newer than a change already applied (a replay).
    Stale,
}

impl Rejection {
    pub const ALL: [Rejection; 5] = [
        Rejection::Unsigned,
        Rejection::UnknownKey,
        Rejection::BadSignature,
        Rejection::OriginMismatch,
        Rejection::Stale,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownKey => "unknown key",
            Rejection::BadSignature => "bad signature",
            Rejection::OriginMismatch => "origin mismatch",
            Rejection::Stale => "stale",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The trusted keys in force, shared by the link (which reads them for
/// every record) and a reload (which replaces them whole).
#[derive(Debug, Clone, Default)]
pub struct Trust(Arc<RwLock<Arc<TrustedNodes>>>);

impl Trust {
    pub fn new(nodes: TrustedNodes) -> Self {
        Trust(Arc::new(RwLock::new(Arc::new(nodes))))
    }

    pub fn get(&self) -> Arc<TrustedNodes> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set(&self, nodes: TrustedNodes) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(nodes);
    }
}

/// The keys believed, each with the one node name it may sign for.
#[derive(Debug, Clone, Default)]
pub struct TrustedNodes {
    names: HashMap<[u8; 32], (NodePublicKey, Origin)>,
}

/// A node name as `fleet.node_id` and the trusted-nodes file spell it:
/// 1 to 64 letters, digits, `-`, `_` and `.`.
pub fn node_name(text: &str) -> Option<Origin> {
    let ok = !text.is_empty()
        && text.len() <= MAX_ORIGIN_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| Origin::new(text).ok()).flatten()
}

impl TrustedNodes {
    /// Only this node's own key.
    pub fn own(key: NodePublicKey, name: Origin) -> Self {
        TrustedNodes {
            names: HashMap::from([(*key.as_bytes(), (key, name))]),
        }
    }

    /// Reads `path` and adds its keys to `self` (the node's own).
    pub fn read(mut self, path: &Path) -> Result<Self, TrustError> {
        let io = |source| TrustError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_TRUST_FILE_LEN {
            return Err(TrustError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let own = self.names.clone();
        for (index, line) in text.lines().enumerate() {
            let bad = |detail: String| TrustError::Line {
                path: path.to_owned(),
                line: index + 1,
                detail,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(key), Some(name), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("expected `KEY node-name` (two words)".into()));
            };
            let key = NodePublicKey::parse(key, "key").map_err(|_| {
                bad(format!(
                    "{key:?} is not a node public key (the line `penaltybox key pub` prints)"
                ))
            })?;
            let name = node_name(name).ok_or_else(|| {
                bad(format!(
                    "{name:?} is not a node name (1 to {MAX_ORIGIN_LEN} letters, digits, -, _ and .)"
                ))
            })?;
            match self.names.insert(*key.as_bytes(), (key, name)) {
                Some((_, earlier)) if earlier != name && !own.contains_key(key.as_bytes()) => {
                    return Err(bad(format!(
                        "key {} is listed for {earlier} already (one key, one node)",
                        key.fingerprint()
                    )));
                }
                Some((_, earlier)) if earlier != name => {
                    return Err(bad(format!(
                        "this is this node's own key, whose name is {earlier}"
                    )));
                }
                _ => {}
            }
        }
        Ok(self)
    }

    /// The name `key` may sign for; `None` for a key not trusted.
    pub fn name_of(&self, key: &NodePublicKey) -> Option<Origin> {
        self.names.get(key.as_bytes()).map(|(_, name)| *name)
    }

    /// Whether a trusted node made `record`: its seal verifies under a
    /// trusted key whose name is the record's origin. Unsigned records
    /// pass only when signatures are not required (a roll-out).
    pub fn check(&self, record: &Record, require_signatures: bool) -> Result<(), Rejection> {
        self.check_all(&[record], require_signatures)
            .pop()
            .expect("one verdict a record")
    }

    /// [`TrustedNodes::check`] of each record, their signatures verified
    /// at once (one by one only if one of them does not verify).
    pub fn check_all(
        &self,
        records: &[&Record],
        require_signatures: bool,
    ) -> Vec<Result<(), Rejection>> {
        let mut verdicts: Vec<Result<(), Rejection>> = Vec::with_capacity(records.len());
        let mut signed = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let verdict = match &record.seal {
                None if require_signatures => Err(Rejection::Unsigned),
                None => Ok(()),
                Some(seal) => match self.names.get(&seal.signer) {
                    None => Err(Rejection::UnknownKey),
                    Some((key, name)) => {
                        signed.push((i, key, seal, *name));
                        Ok(())
                    }
                },
            };
            verdicts.push(verdict);
        }
        let items: Vec<_> = signed
            .iter()
            .map(|(_, key, seal, _)| {
                let (message, signature) = seal.signed();
                (*key, message, signature)
            })
            .collect();
        let all_verify = items.len() > 1 && NodePublicKey::verify_all(&items);
        for (i, key, seal, name) in signed {
            verdicts[i] = if !all_verify && !seal.verify(key) {
                Err(Rejection::BadSignature)
            } else if name != records[i].change.origin() {
                Err(Rejection::OriginMismatch)
            } else {
                Ok(())
            };
        }
        verdicts
    }

    /// Keys trusted, the node's own included.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_key::NodeKey;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("trusted_nodes");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn lines_name_keys_and_bad_lines_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let (own, a, b) = (
            NodeKey::generate().unwrap(),
            NodeKey::generate().unwrap(),
            NodeKey::generate().unwrap(),
        );
        let me = node_name("me").unwrap();
        let start = || TrustedNodes::own(own.public_key(), me);
        let path = write(
            dir.path(),
            &format!(
                "# the fleet\n{} node-a\n\n  {} node-b # rack 2\n{} me\n",
                a.public_key(),
                b.public_key(),
                own.public_key()
            ),
        );
        let trusted = start().read(&path).unwrap();
        assert_eq!(trusted.len(), 3);
        assert_eq!(trusted.name_of(&a.public_key()), node_name("node-a"));
        assert_eq!(trusted.name_of(&b.public_key()), node_name("node-b"));
        assert_eq!(trusted.name_of(&own.public_key()), Some(me));
        assert_eq!(
            trusted.name_of(&NodeKey::generate().unwrap().public_key()),
            None
        );

        let cases = [
            (
                format!("{}\n", a.public_key()),
                ":1: expected `KEY node-name`",
            ),
            ("AAAA node-a\n".to_string(), "is not a node public key"),
            (
                format!("{} no/slash\n", a.public_key()),
                "is not a node name",
            ),
            (
                format!("\n{0} node-a\n{0} node-b\n", a.public_key()),
                ":3: key",
            ),
            (
                format!("{} other\n", own.public_key()),
                "this node's own key",
            ),
        ];
        for (text, expected) in cases {
            let error = start()
                .read(&write(dir.path(), &text))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let missing = start().read(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, TrustError::Io { .. }));
    }

    #[test]
    fn records_checked_together_get_the_verdicts_of_one_by_one() {
        use crate::record::{Change, decode, encode_signed, encode_unsigned};
        let (a, b) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
        let trusted = TrustedNodes::own(a.public_key(), node_name("node-a").unwrap());
        let dir = tempfile::tempdir().unwrap();
        let trusted = trusted
            .read(&write(dir.path(), &format!("{} node-b\n", b.public_key())))
            .unwrap();
        // Signed for 198.18.0.`i`, read under the key of .`under`.
        let moved = |origin: &str, by: &NodeKey, i: u8, under: u8| {
            let prefix: model::Cidr = format!("198.18.0.{i}/32").parse().unwrap();
            let key = crate::key::key_of(&prefix);
            let ban = model::BanInfo {
                prefix,
                cause: "bad-magic".parse().unwrap(),
                first_bytes: Default::default(),
                banned_at_ms: 1,
                expires_at_ms: 2,
                repeat: 1,
                origin: node_name(origin).unwrap(),
            };
            let bytes = encode_signed(&key, &Change::TimeOut(ban), by);
            let read_as: model::Cidr = format!("198.18.0.{under}/32").parse().unwrap();
            decode(&crate::key::key_of(&read_as), read_as, &bytes).unwrap()
        };
        let record = |origin: &str, by: &NodeKey, i: u8| moved(origin, by, i, i);
        let good: Vec<Record> = (0..8).map(|i| record("node-b", &b, i)).collect();
        let all: Vec<&Record> = good.iter().collect();
        assert!(trusted.check_all(&all, true).iter().all(Result::is_ok));

        let forged = moved("node-b", &b, 20, 21);
        let posing = record("node-a", &b, 22);
        let stranger = record("node-b", &NodeKey::generate().unwrap(), 23);
        let prefix: model::Cidr = "198.18.0.24/32".parse().unwrap();
        let unsigned = decode(
            &crate::key::key_of(&prefix),
            prefix,
            &encode_unsigned(&model::BanInfo {
                origin: node_name("node-b").unwrap(),
                ..match &good[0].change {
                    Change::TimeOut(ban) => ban.clone(),
                    Change::Release { .. } => unreachable!(),
                }
            }),
        )
        .unwrap();
        let mut mixed: Vec<&Record> = good.iter().collect();
        mixed.extend([&forged, &posing, &stranger, &unsigned]);
        let verdicts = trusted.check_all(&mixed, true);
        assert!(verdicts[..8].iter().all(Result::is_ok), "{verdicts:?}");
        assert_eq!(
            &verdicts[8..],
            &[
                Err(Rejection::BadSignature),
                Err(Rejection::OriginMismatch),
                Err(Rejection::UnknownKey),
                Err(Rejection::Unsigned),
            ]
        );
        for (record, verdict) in mixed.iter().zip(&verdicts) {
            assert_eq!(&trusted.check(record, true), verdict);
        }
    }
}

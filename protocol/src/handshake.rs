//! The Noise handshake: one message each way, then transport keys.
//!
//! Patterns are Noise IK (client authenticated by its static key) and NK
//! (anonymous client), both `25519_ChaChaPoly_BLAKE2s`, run by the `snow`
//! crate. The prologue is the 8-byte first-message header, so the version and
//! pattern are bound into the handshake hash.
//!
//! Message 1's payload is a TAI64N timestamp. For IK the responder keeps the
//! newest timestamp per client key and rejects one that is not newer, as
//! WireGuard does: a replayed initiation then cannot even make the server
//! build session state. For NK a replayer gets a response it cannot use (it
//! lacks the ephemeral private key), so no session opens either way.
//!
//! Message 2 (server to client, exactly [`RESPONSE_LEN`] bytes) carries the
//! protocol version and the role the server granted.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::frame::Transport;
use crate::initiation::{
    self, Classification, HEADER_LEN, MAC1_LEN, Mac1Key, Pattern, Rejection, TIMESTAMP_LEN,
};
use crate::keys::{PrivateKey, PublicKey};

/// Server response: ephemeral key (32) + encrypted 2-byte payload (2 + 16).
pub const RESPONSE_LEN: usize = 32 + 2 + 16;
/// How many client keys the replay guard remembers when no authorized-keys
/// list bounds them. Past it the oldest entry is forgotten; see `ReplayGuard`.
pub const REPLAY_GUARD_CAPACITY: usize = 65_536;
/// How many recent initiators' ephemeral keys the responder remembers.
pub const EPHEMERAL_GUARD_CAPACITY: usize = 65_536;

/// What an authenticated peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Admin,
}

/// Who completed the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Anonymous,
    Key(PublicKey),
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "the server's reply did not authenticate: the server key given is not this server's key"
    )]
    BadResponse,
    #[error("the server speaks protocol version {0}, this client speaks {v}", v = initiation::VERSION)]
    VersionMismatch(u8),
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
}

/// A TAI64N label (8 bytes seconds + 2^62, 4 bytes nanoseconds, both
/// big-endian): ordered bytewise, so comparing arrays compares times.
pub fn tai64n_now() -> [u8; TIMESTAMP_LEN] {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = [0u8; TIMESTAMP_LEN];
    out[..8].copy_from_slice(&((1u64 << 62) + now.as_secs()).to_be_bytes());
    out[8..].copy_from_slice(&now.subsec_nanos().to_be_bytes());
    out
}

/// How far ahead of the server's clock an initiation's timestamp may be.
/// WireGuard accepts any newer timestamp; we also refuse one from the far
/// future, because remembering it would refuse every honest handshake of
/// that key until the clock caught up (an attacker holding a captured
/// future initiation could lock a key out for years).
pub const MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// Is `stamp` (TAI64N) more than [`MAX_CLOCK_AHEAD`] after `now`?
fn from_the_future(stamp: &[u8; TIMESTAMP_LEN], now: &[u8; TIMESTAMP_LEN]) -> bool {
    let secs = |t: &[u8; TIMESTAMP_LEN]| {
        let mut label = [0u8; 8];
        label.copy_from_slice(&t[..8]);
        u64::from_be_bytes(label)
    };
    secs(stamp) > secs(now).saturating_add(MAX_CLOCK_AHEAD.as_secs())
}

/// Client side of a handshake in progress.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl Initiator {
    /// Builds the first message. With a client key the pattern is IK, else NK.
    pub fn start(
        server_key: &PublicKey,
        client_key: Option<&PrivateKey>,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::start_at(server_key, client_key, tai64n_now())
    }

    /// As [`Initiator::start`] with a given timestamp (tests and replay fixtures).
    pub fn start_at(
        server_key: &PublicKey,
        client_key: Option<&PrivateKey>,
        timestamp: [u8; TIMESTAMP_LEN],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let pattern = if client_key.is_some() {
            Pattern::IK
        } else {
            Pattern::NK
        };
        let header = initiation::header(pattern);
        let private = client_key.map(PrivateKey::to_bytes);
        let mut builder = snow::Builder::new(params(pattern))
            .prologue(&header)?
            .remote_public_key(server_key.as_bytes())?;
        if let Some(private) = private.as_ref() {
            builder = builder.local_private_key(private)?;
        }
        let mut state = builder.build_initiator()?;

        let mut message = vec![0u8; pattern.initiation_len()];
        message[..HEADER_LEN].copy_from_slice(&header);
        let noise_end = HEADER_LEN + pattern.noise_len();
        let written = state.write_message(&timestamp, &mut message[HEADER_LEN..noise_end])?;
        debug_assert_eq!(written, pattern.noise_len());
        let mac1 = Mac1Key::new(server_key).compute(&message[..noise_end]);
        message[noise_end..].copy_from_slice(&mac1);
        Ok((Initiator { state }, message))
    }

    /// Reads the server's response and switches to transport keys.
    pub fn finish(
        mut self,
        response: &[u8; RESPONSE_LEN],
    ) -> Result<(Transport, Role), HandshakeError> {
        let mut payload = [0u8; RESPONSE_LEN];
        let n = self
            .state
            .read_message(response, &mut payload)
            .map_err(|_| HandshakeError::BadResponse)?;
        if n != 2 {
            return Err(HandshakeError::BadResponse);
        }
        if payload[0] != initiation::VERSION {
            return Err(HandshakeError::VersionMismatch(payload[0]));
        }
        let role = match payload[1] {
            0 => Role::User,
            1 => Role::Admin,
            _ => return Err(HandshakeError::BadResponse),
        };
        Ok((Transport::new(self.state.into_transport_mode()?), role))
    }
}

/// Who may complete a handshake with a server.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// When set, only these keys (and the admin keys) complete a handshake,
    /// and anonymous (NK) clients are refused.
    pub authorized: Option<HashSet<PublicKey>>,
    /// Keys whose sessions may send admin requests.
    pub admins: HashSet<PublicKey>,
}

/// A handshake the server accepted.
pub struct Accepted {
    pub response: [u8; RESPONSE_LEN],
    pub transport: Transport,
    pub peer: Peer,
    pub role: Role,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("peer", &self.peer)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Server side: checks first messages and answers them. Shared by all
/// sessions of a server (`Send + Sync`); the only mutable state is the replay
/// guard.
pub struct Responder {
    private: [u8; 32],
    /// Parsed once: parsing the Noise name per handshake is measurable.
    params: [snow::params::NoiseParams; 2],
    mac1: Mac1Key,
    /// Replaced whole by a reload; read once per handshake.
    policy: std::sync::RwLock<AccessPolicy>,
    replay: Mutex<ReplayGuard>,
    ephemerals: Mutex<EphemeralGuard>,
}

impl Responder {
    pub fn new(server_key: &PrivateKey, policy: AccessPolicy) -> Self {
        Responder {
            private: server_key.to_bytes(),
            params: [params(Pattern::NK), params(Pattern::IK)],
            mac1: Mac1Key::new(&server_key.public_key()),
            policy: std::sync::RwLock::new(policy),
            replay: Mutex::new(ReplayGuard::new(REPLAY_GUARD_CAPACITY)),
            ephemerals: Mutex::new(EphemeralGuard::new(EPHEMERAL_GUARD_CAPACITY)),
        }
    }

    /// Who may connect from now on (a reload); sessions already
    /// established keep the role they were given.
    pub fn set_access(&self, policy: AccessPolicy) {
        *self
            .policy
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = policy;
    }

    fn access(&self) -> std::sync::RwLockReadGuard<'_, AccessPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates a complete first message (as read by
    /// [`initiation::read_initiation`]) and, if it is acceptable, produces the
    /// response and the session's transport. Cheap checks come first: header,
    /// then mac1, and only then the Diffie-Hellman operations.
    pub fn accept(&self, message: &[u8]) -> Result<Accepted, Rejection> {
        let pattern = match initiation::classify(message) {
            Classification::Header { pattern, len } if len == message.len() => pattern,
            Classification::Reject(reason) => return Err(reason),
            // Too short for its declared length: only a caller that did not
            // use read_initiation can get here.
            _ => {
                return Err(Rejection::BadLength {
                    declared: message.len() as u16,
                    expected: Pattern::NK.initiation_len() as u16,
                });
            }
        };
        if !self.mac1.verify(message) {
            return Err(Rejection::BadMac1);
        }
        if pattern == Pattern::NK && self.access().authorized.is_some() {
            return Err(Rejection::AnonymousNotAllowed);
        }

        let header = &message[..HEADER_LEN];
        let noise = &message[HEADER_LEN..message.len() - MAC1_LEN];
        // Noise message 1 opens with the initiator's ephemeral public key,
        // in the clear ("-> e"). Every honest initiation draws a fresh one,
        // so one seen before is a replay: refused here, before any
        // Diffie-Hellman, which makes replaying a captured first message
        // cost the server a hash lookup instead of four DH operations. (An
        // IK replay would also fail the timestamp check, but only after them.)
        // The key is reserved at once, under one lock, so that copies
        // arriving together on several workers do not all get past; the
        // reservation is dropped again if this initiation fails, so junk
        // cannot fill the guard.
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&noise[..32]);
        let mut reservation = self.reserve_ephemeral(ephemeral)?;
        let params = self.params[usize::from(pattern == Pattern::IK)].clone();
        let mut state = snow::Builder::new(params)
            .prologue(header)
            .and_then(|b| b.local_private_key(&self.private))
            .and_then(|b| b.build_responder())
            .map_err(|_| Rejection::HandshakeFailed)?;
        let mut timestamp = [0u8; 64];
        let n = state
            .read_message(noise, &mut timestamp)
            .map_err(|_| Rejection::HandshakeFailed)?;
        if n != TIMESTAMP_LEN {
            return Err(Rejection::HandshakeFailed);
        }

        let (peer, role) = match state.get_remote_static() {
            None => (Peer::Anonymous, Role::User),
            Some(bytes) => {
                let key = PublicKey::from_bytes(
                    bytes.try_into().map_err(|_| Rejection::HandshakeFailed)?,
                );
                let admin = {
                    let access = self.access();
                    let admin = access.admins.contains(&key);
                    if let Some(authorized) = &access.authorized
                        && !admin
                        && !authorized.contains(&key)
                    {
                        return Err(Rejection::Unauthorized(key));
                    }
                    admin
                };
                let stamp: [u8; TIMESTAMP_LEN] = timestamp[..TIMESTAMP_LEN]
                    .try_into()
                    .expect("checked length");
                // Checked before the replay guard, so it is never remembered.
                if from_the_future(&stamp, &tai64n_now()) {
                    return Err(Rejection::FutureTimestamp);
                }
                if !self
                    .replay
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .check_and_record(key, stamp)
                {
                    return Err(Rejection::Replayed);
                }
                (Peer::Key(key), if admin { Role::Admin } else { Role::User })
            }
        };

        // The initiation has proved itself: its ephemeral key stays known.
        reservation.keep = true;
        let payload = [initiation::VERSION, matches!(role, Role::Admin) as u8];
        let mut response = [0u8; RESPONSE_LEN];
        let written = state
            .write_message(&payload, &mut response)
            .map_err(|_| Rejection::HandshakeFailed)?;
        debug_assert_eq!(written, RESPONSE_LEN);
        let transport = state
            .into_transport_mode()
            .map_err(|_| Rejection::HandshakeFailed)?;
        Ok(Accepted {
            response,
            transport: Transport::new(transport),
            peer,
            role,
        })
    }
}

impl Responder {
    fn reserve_ephemeral(&self, ephemeral: [u8; 32]) -> Result<Reservation<'_>, Rejection> {
        let mut guard = self
            .ephemerals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !guard.record(ephemeral) {
            return Err(Rejection::Replayed);
        }
        Ok(Reservation {
            responder: self,
            ephemeral,
            keep: false,
        })
    }
}

/// An ephemeral key taken by an initiation in progress; given back on drop
/// unless the initiation succeeded (`keep`).
struct Reservation<'a> {
    responder: &'a Responder,
    ephemeral: [u8; 32],
    keep: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.responder
                .ephemerals
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .forget(&self.ephemeral);
        }
    }
}

fn params(pattern: Pattern) -> snow::params::NoiseParams {
    pattern
        .noise_params()
        .parse()
        .expect("the two pattern strings are valid Noise parameters")
}

/// The ephemeral keys of the last `capacity` accepted initiations, oldest
/// forgotten first. Forgetting one only lets a replay of that old message be
/// answered again (the answer is useless without the initiator's private
/// ephemeral key), at the cost of the DH it takes.
struct EphemeralGuard {
    capacity: usize,
    seen: HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl EphemeralGuard {
    fn new(capacity: usize) -> Self {
        EphemeralGuard {
            capacity,
            seen: HashSet::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    /// Remembers `ephemeral`; false if it was known already.
    fn record(&mut self, ephemeral: [u8; 32]) -> bool {
        if !self.seen.insert(ephemeral) {
            return false;
        }
        self.order.push_back(ephemeral);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }

    /// Forgets a key just recorded (an initiation that failed).
    fn forget(&mut self, ephemeral: &[u8; 32]) {
        if self.seen.remove(ephemeral)
            && let Some(at) = self.order.iter().rposition(|e| e == ephemeral)
        {
            self.order.remove(at);
        }
    }
}

/// Newest initiation timestamp seen per client key. Bounded: past capacity
/// the least recently *updated* key is forgotten. Forgetting only lets an old
/// initiation of that key be answered again; the answer is useless to a
/// replayer, who lacks the initiator's ephemeral private key.
struct ReplayGuard {
    capacity: usize,
    newest: HashMap<PublicKey, ([u8; TIMESTAMP_LEN], u64)>,
    clock: u64,
}

impl ReplayGuard {
    fn new(capacity: usize) -> Self {
        ReplayGuard {
            capacity,
            newest: HashMap::new(),
            clock: 0,
        }
    }

    fn check_and_record(&mut self, key: PublicKey, stamp: [u8; TIMESTAMP_LEN]) -> bool {
        self.clock += 1;
        if let Some((seen, _)) = self.newest.get(&key)
            && stamp <= *seen
        {
            return false;
        }
        if self.newest.len() >= self.capacity && !self.newest.contains_key(&key) {
            // O(n) eviction is fine: it only happens with more distinct
            // client keys than the capacity, an unusual deployment.
            if let Some(oldest) = self
                .newest
                .iter()
                .min_by_key(|(_, (_, touched))| *touched)
                .map(|(k, _)| *k)
            {
                self.newest.remove(&oldest);
            }
        }
        self.newest.insert(key, (stamp, self.clock));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_guard_forgets_the_oldest_and_gives_back_failures() {
        let mut guard = EphemeralGuard::new(2);
        for byte in 1..=3u8 {
            assert!(guard.record([byte; 32]));
        }
        assert!(guard.record([1; 32]), "forgotten past capacity");
        assert!(!guard.record([3; 32]), "seen");
        guard.forget(&[3; 32]);
        assert!(guard.record([3; 32]), "given back");
        assert_eq!(guard.order.len(), guard.seen.len());
    }

    #[test]
    fn far_future_timestamps_are_told_apart() {
        let now = tai64n_now();
        let at = |secs_ahead: u64| {
            let mut t = now;
            let mut label = [0u8; 8];
            label.copy_from_slice(&t[..8]);
            let label = u64::from_be_bytes(label).saturating_add(secs_ahead);
            t[..8].copy_from_slice(&label.to_be_bytes());
            t
        };
        assert!(!from_the_future(&now, &now));
        assert!(!from_the_future(&at(299), &now));
        assert!(from_the_future(&at(301), &now));
        assert!(from_the_future(&[0xff; TIMESTAMP_LEN], &now));
    }

    #[test]
    fn tai64n_orders_bytewise() {
        let a = tai64n_now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(tai64n_now() > a);
    }

    #[test]
    fn replay_guard_is_bounded_and_monotonic() {
        let mut guard = ReplayGuard::new(2);
        let keys: Vec<PublicKey> = (0..3)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        let t = |n: u8| [n; TIMESTAMP_LEN];
        assert!(guard.check_and_record(keys[0], t(5)));
        assert!(!guard.check_and_record(keys[0], t(5)));
        assert!(!guard.check_and_record(keys[0], t(4)));
        assert!(guard.check_and_record(keys[1], t(1)));
        assert!(guard.check_and_record(keys[2], t(1)));
        assert_eq!(guard.newest.len(), 2);
        // keys[0] was the least recently updated and is forgotten.
        assert!(!guard.newest.contains_key(&keys[0]));
    }
}

//! The protocol end to end without sockets: handshakes, every class of bad
//! first bytes, and frame integrity (tampering, truncation, replay, reorder,
//! oversized length prefixes).

use std::collections::HashSet;

use protocol::connection::{Connection, ConnectionError};
use protocol::frame::{FrameError, MAX_MESSAGE_LEN, Transport};
use protocol::handshake::{HandshakeError, Initiator, RESPONSE_LEN, tai64n_now};
use protocol::initiation::TIMESTAMP_LEN;
use protocol::initiation::{self, Mac1Key, Pattern, ReadInitiationError, read_initiation};
use protocol::message::{Volume, VolumeSpec, VolumeStatus};
use protocol::{AccessPolicy, Peer, PrivateKey, Rejection, Request, Responder, Response, Role};

fn server() -> (PrivateKey, Responder) {
    let key = PrivateKey::generate();
    let responder = Responder::new(&key, AccessPolicy::default());
    (key, responder)
}

/// A finished handshake: (client transport, server transport).
fn session(client_key: Option<&PrivateKey>) -> (Transport, Transport) {
    let (server_key, responder) = server();
    let (initiator, first) = Initiator::start(&server_key.public_key(), client_key).unwrap();
    let accepted = responder.accept(&first).unwrap();
    let (client, _) = initiator.finish(&accepted.response).unwrap();
    (client, accepted.transport)
}

fn seal(transport: &mut Transport, message: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    transport.seal(message, &mut out).unwrap();
    out
}

#[test]
fn ik_handshake_identifies_the_client_and_grants_admin_by_list() {
    let server_key = PrivateKey::generate();
    let admin = PrivateKey::generate();
    let user = PrivateKey::generate();
    let responder = Responder::new(
        &server_key,
        AccessPolicy {
            authorized: Some(HashSet::from([user.public_key()])),
            admins: HashSet::from([admin.public_key()]),
        },
    );
    for (key, role) in [(&admin, Role::Admin), (&user, Role::User)] {
        let (initiator, first) = Initiator::start(&server_key.public_key(), Some(key)).unwrap();
        assert_eq!(first.len(), Pattern::IK.initiation_len());
        let accepted = responder.accept(&first).unwrap();
        assert_eq!(accepted.peer, Peer::Key(key.public_key()));
        assert_eq!(accepted.role, role);
        let (_, client_role) = initiator.finish(&accepted.response).unwrap();
        assert_eq!(client_role, role);
    }
}

#[test]
fn nk_handshake_is_anonymous_and_both_directions_carry_messages() {
    let (server_key, responder) = server();
    let (initiator, first) = Initiator::start(&server_key.public_key(), None).unwrap();
    assert_eq!(first.len(), Pattern::NK.initiation_len());
    let accepted = responder.accept(&first).unwrap();
    assert_eq!(accepted.peer, Peer::Anonymous);
    let (mut client, role) = initiator.finish(&accepted.response).unwrap();
    assert_eq!(role, Role::User);
    let mut server = accepted.transport;

    let frame = seal(&mut client, &Request::Ping { nonce: 7 });
    assert_eq!(
        server.open::<Request>(&frame[4..]).unwrap(),
        Request::Ping { nonce: 7 }
    );
    let mut out = Vec::new();
    server.seal(&Response::Pong { nonce: 7 }, &mut out).unwrap();
    assert_eq!(
        client.open::<Response>(&out[4..]).unwrap(),
        Response::Pong { nonce: 7 }
    );
}

/// Real first bytes of common scanners and clients. None may get past the
/// first read, and none may cost a Diffie-Hellman.
fn foreign_first_bytes() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // TLS 1.2 record header + ClientHello start, as openssl s_client sends.
        (
            "tls-client-hello",
            vec![
                0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
            ],
        ),
        (
            "http-get",
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
        ),
        (
            "ssdp-m-search",
            b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n\r\n"
                .to_vec(),
        ),
        ("ssh-banner", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec()),
        // RDP: TPKT header + X.224 connection request with an mstshash cookie.
        (
            "rdp-x224",
            vec![
                0x03, 0x00, 0x00, 0x2b, 0x26, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, b'C', b'o', b'o',
                b'k', b'i', b'e',
            ],
        ),
        // SMB1 negotiate over NetBIOS session service.
        (
            "smb1-negotiate",
            vec![0x00, 0x00, 0x00, 0x54, 0xff, b'S', b'M', b'B', 0x72],
        ),
        // SMB2 negotiate.
        (
            "smb2-negotiate",
            vec![0x00, 0x00, 0x00, 0x66, 0xfe, b'S', b'M', b'B', 0x40, 0x00],
        ),
        ("redis-ping", b"*1\r\n$4\r\nPING\r\n".to_vec()),
        ("nmap-null-probe-then-crlf", b"\r\n\r\n".to_vec()),
    ]
}

#[test]
fn foreign_protocols_are_rejected_as_bad_magic_by_header_and_responder() {
    let (_, responder) = server();
    for (name, bytes) in foreign_first_bytes() {
        assert_eq!(
            initiation::classify(&bytes),
            initiation::Classification::Reject(Rejection::BadMagic),
            "{name}"
        );
        let rejection = responder.accept(&bytes).unwrap_err();
        assert_eq!(rejection, Rejection::BadMagic, "{name}");
        assert!(rejection.is_foreign_protocol(), "{name}");
        assert_eq!(rejection.notice(), None, "{name}: scanners get no answer");
    }
}

#[tokio::test]
async fn read_initiation_rejects_a_tls_hello_on_the_first_read() {
    // The writer half stays open: the reader must decide from the bytes it
    // has, not wait for more.
    let (mut client, mut server_side) = tokio::io::duplex(4096);
    for (name, bytes) in foreign_first_bytes() {
        tokio::io::AsyncWriteExt::write_all(&mut client, &bytes)
            .await
            .unwrap();
        let mut seen = Vec::new();
        let result = read_initiation(&mut server_side, &mut seen).await;
        assert!(
            matches!(
                result,
                Err(ReadInitiationError::Rejected(Rejection::BadMagic))
            ),
            "{name}: {result:?}"
        );
        assert!(
            !seen.is_empty() && seen.len() <= initiation::HEADER_LEN,
            "{name}"
        );
        // Drain what the reader left, for the next case.
        let mut rest = vec![0; bytes.len() - seen.len()];
        tokio::io::AsyncReadExt::read_exact(&mut server_side, &mut rest)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn read_initiation_stops_exactly_at_the_end_of_the_message() {
    let (server_key, responder) = server();
    let (_, first) =
        Initiator::start(&server_key.public_key(), Some(&PrivateKey::generate())).unwrap();
    let (mut client, mut server_side) = tokio::io::duplex(4096);
    let mut wire = first.clone();
    wire.extend_from_slice(b"next frame");
    // Dribble the bytes in one at a time, like a slow network.
    tokio::spawn(async move {
        for byte in wire {
            tokio::io::AsyncWriteExt::write_all(&mut client, &[byte])
                .await
                .unwrap();
        }
        client
    });
    let mut seen = Vec::new();
    let pattern = read_initiation(&mut server_side, &mut seen).await.unwrap();
    assert_eq!(pattern, Pattern::IK);
    assert_eq!(seen, first);
    assert!(responder.accept(&seen).is_ok());
    let mut rest = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut server_side, &mut rest)
        .await
        .unwrap();
    assert_eq!(&rest, b"next frame");
}

#[test]
fn each_bad_header_field_has_its_own_reason() {
    let (server_key, responder) = server();
    let (_, good) = Initiator::start(&server_key.public_key(), None).unwrap();

    let mut bad_version = good.clone();
    bad_version[4] = 2;
    assert_eq!(
        responder.accept(&bad_version).unwrap_err(),
        Rejection::BadVersion(2)
    );

    let mut bad_pattern = good.clone();
    bad_pattern[5] = 0;
    assert_eq!(
        responder.accept(&bad_pattern).unwrap_err(),
        Rejection::BadPattern(0)
    );

    let mut bad_length = good.clone();
    bad_length[6..8].copy_from_slice(&132u16.to_be_bytes());
    assert_eq!(
        responder.accept(&bad_length).unwrap_err(),
        Rejection::BadLength {
            declared: 132,
            expected: 84
        }
    );

    let mut too_long = good.clone();
    too_long.push(0);
    assert!(matches!(
        responder.accept(&too_long).unwrap_err(),
        Rejection::BadLength { .. }
    ));

    let mut bad_mac = good.clone();
    let last = bad_mac.len() - 1;
    bad_mac[last] ^= 0x80;
    assert_eq!(responder.accept(&bad_mac).unwrap_err(), Rejection::BadMac1);

    assert!(responder.accept(&good).is_ok());
}

#[test]
fn wrong_server_key_fails_mac1_and_the_notice_says_so() {
    let (_, responder) = server();
    let someone_else = PrivateKey::generate().public_key();
    let (_, first) = Initiator::start(&someone_else, None).unwrap();
    let rejection = responder.accept(&first).unwrap_err();
    assert_eq!(rejection, Rejection::BadMac1);
    let notice = rejection.notice().unwrap();
    assert_eq!(
        initiation::Notice::parse(&notice),
        Some(initiation::Notice::WrongServerKey)
    );
}

#[test]
fn tampered_noise_with_valid_mac1_is_a_handshake_failure() {
    let (server_key, responder) = server();
    let (_, mut first) =
        Initiator::start(&server_key.public_key(), Some(&PrivateKey::generate())).unwrap();
    // Flip a ciphertext bit and recompute mac1, as an attacker who knows the
    // server key could: the AEAD inside Noise still catches it.
    first[60] ^= 1;
    let covered = first.len() - initiation::MAC1_LEN;
    let mac = Mac1Key::new(&server_key.public_key()).compute(&first[..covered]);
    first[covered..].copy_from_slice(&mac);
    assert_eq!(
        responder.accept(&first).unwrap_err(),
        Rejection::HandshakeFailed
    );
}

#[test]
fn authorized_list_refuses_unknown_keys_and_anonymous_clients() {
    let server_key = PrivateKey::generate();
    let listed = PrivateKey::generate();
    let stranger = PrivateKey::generate();
    let responder = Responder::new(
        &server_key,
        AccessPolicy {
            authorized: Some(HashSet::from([listed.public_key()])),
            admins: HashSet::new(),
        },
    );
    let (_, first) = Initiator::start(&server_key.public_key(), Some(&stranger)).unwrap();
    assert_eq!(
        responder.accept(&first).unwrap_err(),
        Rejection::Unauthorized(stranger.public_key())
    );
    let (_, first) = Initiator::start(&server_key.public_key(), None).unwrap();
    assert_eq!(
        responder.accept(&first).unwrap_err(),
        Rejection::AnonymousNotAllowed
    );
    let (_, first) = Initiator::start(&server_key.public_key(), Some(&listed)).unwrap();
    assert!(responder.accept(&first).is_ok());
}

#[test]
fn replayed_ik_initiation_is_refused() {
    let (server_key, responder) = server();
    let client = PrivateKey::generate();
    let (_, first) = Initiator::start(&server_key.public_key(), Some(&client)).unwrap();
    assert!(responder.accept(&first).is_ok());
    assert_eq!(responder.accept(&first).unwrap_err(), Rejection::Replayed);

    // An older timestamp than the newest seen is a replay too.
    let old = [0u8; TIMESTAMP_LEN];
    let (_, stale) = Initiator::start_at(&server_key.public_key(), Some(&client), old).unwrap();
    assert_eq!(responder.accept(&stale).unwrap_err(), Rejection::Replayed);

    let (_, fresh) =
        Initiator::start_at(&server_key.public_key(), Some(&client), tai64n_now()).unwrap();
    assert!(responder.accept(&fresh).is_ok());
}

#[test]
fn a_far_future_ik_timestamp_is_refused_and_not_remembered() {
    let (server_key, responder) = server();
    let client = PrivateKey::generate();
    let mut ten_years = tai64n_now();
    let secs = u64::from_be_bytes(ten_years[..8].try_into().unwrap()) + 10 * 365 * 86_400;
    ten_years[..8].copy_from_slice(&secs.to_be_bytes());
    let (_, future) =
        Initiator::start_at(&server_key.public_key(), Some(&client), ten_years).unwrap();
    let refused = responder.accept(&future).unwrap_err();
    assert_eq!(refused, Rejection::FutureTimestamp);
    assert_eq!(
        protocol::initiation::Notice::parse(&refused.notice().unwrap()),
        Some(protocol::initiation::Notice::ClockAhead)
    );
    // Not remembered: an honest initiation of that key right after passes.
    let (_, honest) = Initiator::start(&server_key.public_key(), Some(&client)).unwrap();
    assert!(responder.accept(&honest).is_ok());
}

#[test]
fn replayed_nk_initiation_is_refused_and_gives_the_replayer_nothing_usable() {
    let (server_key, responder) = server();
    let (initiator, first) = Initiator::start(&server_key.public_key(), None).unwrap();
    let genuine = responder.accept(&first).unwrap();
    let (mut client, _) = initiator.finish(&genuine.response).unwrap();

    // The same server refuses it outright: its ephemeral key was seen.
    assert_eq!(responder.accept(&first).unwrap_err(), Rejection::Replayed);

    // A server that never saw it (another node, or after a restart) answers,
    // but the session it opens has keys from a fresh server ephemeral:
    // frames the genuine client (or anyone holding its old keys) seals do
    // not open there.
    let other = Responder::new(&server_key, AccessPolicy::default());
    let replayed = other.accept(&first).unwrap();
    assert_ne!(replayed.response, genuine.response);
    let mut server_side = replayed.transport;
    let frame = seal(&mut client, &Request::Ping { nonce: 1 });
    assert!(matches!(
        server_side.open::<Request>(&frame[4..]),
        Err(FrameError::Decrypt)
    ));
}

#[test]
fn an_impostor_server_cannot_answer_for_the_real_key() {
    let real = PrivateKey::generate();
    let impostor_key = PrivateKey::generate();
    let impostor = Responder::new(&impostor_key, AccessPolicy::default());
    let (initiator, first) = Initiator::start(&real.public_key(), None).unwrap();
    // Even with mac1 recomputed for its own key, the impostor cannot
    // decrypt a message 1 made for the real key.
    let mut forged = first.clone();
    let covered = first.len() - initiation::MAC1_LEN;
    let mac = Mac1Key::new(&impostor_key.public_key()).compute(&first[..covered]);
    forged[covered..].copy_from_slice(&mac);
    assert_eq!(
        impostor.accept(&forged).unwrap_err(),
        Rejection::HandshakeFailed
    );
    // And a made-up response does not authenticate at the client.
    let garbage = [0x42u8; RESPONSE_LEN];
    assert!(matches!(
        initiator.finish(&garbage),
        Err(HandshakeError::BadResponse)
    ));
}

#[test]
fn tampered_truncated_replayed_and_reordered_frames_fail() {
    let (mut client, mut server_side) = session(None);
    let first = seal(&mut client, &Request::Ping { nonce: 1 });
    let second = seal(&mut client, &Request::Ping { nonce: 2 });

    // Reordered: the second frame first.
    assert!(matches!(
        server_side.open::<Request>(&second[4..]),
        Err(FrameError::Decrypt)
    ));
    // A failed open does not advance the nonce: the in-order frame still opens.
    assert_eq!(
        server_side.open::<Request>(&first[4..]).unwrap(),
        Request::Ping { nonce: 1 }
    );
    // Replayed: the first frame again.
    assert!(matches!(
        server_side.open::<Request>(&first[4..]),
        Err(FrameError::Decrypt)
    ));

    for position in [4, 5, second.len() - 1] {
        let mut tampered = second.clone();
        tampered[position] ^= 0x01;
        assert!(
            matches!(
                server_side.open::<Request>(&tampered[4..]),
                Err(FrameError::Decrypt)
            ),
            "bit flip at {position}"
        );
    }
    let truncated = &second[4..second.len() - 1];
    assert!(matches!(
        server_side.open::<Request>(truncated),
        Err(FrameError::Decrypt)
    ));
    assert!(matches!(
        server_side.open::<Request>(&second[4..10]),
        Err(FrameError::TooShort(6))
    ));
    assert_eq!(
        server_side.open::<Request>(&second[4..]).unwrap(),
        Request::Ping { nonce: 2 }
    );
}

#[test]
fn large_compressible_messages_are_compressed_and_oversized_ones_refused() {
    let (mut client, mut server_side) = session(None);
    let volume = |i: usize| Volume {
        spec: VolumeSpec {
            id: format!("A{i:05}L9").parse().unwrap(),
            media_type: "LTO-9".parse().unwrap(),
            location: "Vault 3, shelf 12".parse().unwrap(),
            status: VolumeStatus::Offsite,
        },
        updated_at_ms: 1_700_000_000_000 + i as u64,
    };
    let page = Response::Volumes {
        volumes: (0..200).map(volume).collect(),
        next_after: Some("A00199L9".parse().unwrap()),
    };
    let encoded_len = bincode::encode_to_vec(&page, protocol::frame::wire_config())
        .unwrap()
        .len();
    let mut frame = Vec::new();
    client.seal(&page, &mut frame).unwrap();
    assert!(
        frame.len() < encoded_len / 2,
        "frame of {} bytes for {encoded_len} bytes of bincode",
        frame.len()
    );
    assert_eq!(server_side.open::<Response>(&frame[4..]).unwrap(), page);

    let huge = Response::Error {
        code: protocol::message::ErrorCode::Internal,
        message: "x".repeat(MAX_MESSAGE_LEN),
    };
    assert!(matches!(
        client.seal(&huge, &mut Vec::new()),
        Err(FrameError::DoesNotFit)
    ));
}

#[tokio::test]
async fn a_4_gib_length_prefix_is_refused_before_any_allocation() {
    let (_, server_side) = session(None);
    let (mut wire, server_stream) = tokio::io::duplex(64);
    let mut connection = Connection::new(server_stream, server_side);
    tokio::io::AsyncWriteExt::write_all(&mut wire, &[0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let result = connection.receive::<Request>().await;
    assert!(
        matches!(
            result,
            Err(ConnectionError::Frame(FrameError::TooLong(0xffff_ffff)))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_frame_cut_short_by_close_is_truncated_and_a_clean_close_is_none() {
    let (mut client, server_side) = session(None);
    let frame = seal(&mut client, &Request::Ping { nonce: 3 });
    let (mut wire, server_stream) = tokio::io::duplex(4096);
    let mut connection = Connection::new(server_stream, server_side);
    tokio::io::AsyncWriteExt::write_all(&mut wire, &frame[..frame.len() - 3])
        .await
        .unwrap();
    drop(wire);
    assert!(matches!(
        connection.receive::<Request>().await,
        Err(ConnectionError::Truncated)
    ));

    let (_, server_side) = session(None);
    let (wire, server_stream) = tokio::io::duplex(64);
    let mut connection = Connection::new(server_stream, server_side);
    drop(wire);
    assert!(connection.receive::<Request>().await.unwrap().is_none());
}

#[test]
fn bincode_encoding_known_answers() {
    // The wire encoding of messages is bincode 2's standard configuration:
    // enum variant index as varint, integers as varints (251 = u16 follows,
    // little-endian), strings as varint length + UTF-8.
    let config = protocol::frame::wire_config();
    assert_eq!(
        bincode::encode_to_vec(Request::Ping { nonce: 300 }, config).unwrap(),
        [0x00, 0xfb, 0x2c, 0x01]
    );
    assert_eq!(
        bincode::encode_to_vec(
            Request::GetVolume {
                id: "A1".parse().unwrap()
            },
            config
        )
        .unwrap(),
        [0x02, 0x02, b'A', b'1']
    );
    let cidr: model::Cidr = "10.0.0.0/8".parse().unwrap();
    assert_eq!(
        bincode::encode_to_vec(
            Request::Admin(protocol::AdminRequest::RemoveBan { prefix: cidr }),
            config
        )
        .unwrap(),
        // Admin, RemoveBan, IpAddr::V4, 10.0.0.0, /8
        [0x05, 0x02, 0x00, 10, 0, 0, 0, 8]
    );
}

#[test]
fn a_non_canonical_cidr_on_the_wire_is_refused() {
    let config = protocol::frame::wire_config();
    // IpAddr::V4 10.0.0.0 with prefix length 40.
    let bytes = [0x05, 0x02, 0x00, 10, 0, 0, 0, 40];
    assert!(bincode::decode_from_slice::<Request, _>(&bytes, config).is_err());
}

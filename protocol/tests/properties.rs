//! Property tests for the codec: every message survives seal/open, no input
//! makes a decoder panic, and classification is consistent with prefixes.

use model::Cidr;
use proptest::prelude::*;

use protocol::frame::{self, Transport};
use protocol::handshake::Initiator;
use protocol::initiation::{self, Classification, MAGIC};
use protocol::inline::{InlineBytes, InlineStr};
use protocol::message::{BanInfo, ErrorCode, ServerStats, Volume, VolumeSpec, VolumeStatus};
use protocol::{AccessPolicy, AdminRequest, PrivateKey, Rejection, Request, Responder, Response};

fn session() -> (Transport, Transport) {
    let server_key = PrivateKey::generate();
    let responder = Responder::new(&server_key, AccessPolicy::default());
    let (initiator, first) = Initiator::start(&server_key.public_key(), None).unwrap();
    let accepted = responder.accept(&first).unwrap();
    let (client, _) = initiator.finish(&accepted.response).unwrap();
    (client, accepted.transport)
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Cidr::new(a.into(), l).unwrap()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Cidr::new(a.into(), l).unwrap()),
    ]
}

/// Text from `regex` that fits an `InlineStr<N>` (multi-byte characters can
/// push a string past its byte capacity; those are skipped).
fn text<const N: usize>(regex: &'static str) -> impl Strategy<Value = InlineStr<N>> {
    regex.prop_filter_map("fits the field", |s: String| s.parse().ok())
}

fn status() -> impl Strategy<Value = VolumeStatus> {
    proptest::sample::select(VolumeStatus::ALL.to_vec())
}

fn spec() -> impl Strategy<Value = VolumeSpec> {
    (
        text("[A-Z0-9]{1,32}"),
        text("[A-Z0-9-]{1,16}"),
        text("\\PC{1,20}"),
        status(),
    )
        .prop_map(|(id, media_type, location, status)| VolumeSpec {
            id,
            media_type,
            location,
            status,
        })
}

fn volume() -> impl Strategy<Value = Volume> {
    (spec(), any::<u64>()).prop_map(|(spec, updated_at_ms)| Volume {
        spec,
        updated_at_ms,
    })
}

fn ban() -> impl Strategy<Value = BanInfo> {
    (
        cidr(),
        text("[a-z-]{1,20}"),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| InlineBytes::new(&b).unwrap()),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(prefix, cause, first_bytes, banned_at_ms, expires_at_ms, repeat)| BanInfo {
                prefix,
                cause,
                first_bytes,
                banned_at_ms,
                expires_at_ms,
                repeat,
                origin: Default::default(),
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| Request::Ping { nonce }),
        spec().prop_map(Request::PutVolume),
        text::<32>("[A-Z0-9]{1,32}").prop_map(|id| Request::GetVolume { id }),
        (text::<32>("[A-Z0-9]{1,32}"), text::<64>("\\PC{1,30}"))
            .prop_map(|(id, location)| Request::MoveVolume { id, location }),
        (
            proptest::option::of(text::<32>("[A-Z0-9]{1,32}")),
            any::<u16>()
        )
            .prop_map(|(after, limit)| Request::ListVolumes { after, limit }),
        (proptest::option::of(cidr()), any::<u16>())
            .prop_map(|(after, limit)| Request::Admin(AdminRequest::ListBans { after, limit })),
        (
            cidr(),
            proptest::option::of(any::<u64>()),
            text("\\PC{0,30}"),
            any::<bool>()
        )
            .prop_map(|(prefix, duration_secs, cause, force)| Request::Admin(
                AdminRequest::AddBan {
                    prefix,
                    duration_secs,
                    cause,
                    force
                }
            )),
        cidr().prop_map(|prefix| Request::Admin(AdminRequest::RemoveBan { prefix })),
        Just(Request::Admin(AdminRequest::Stats)),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| Response::Pong { nonce }),
        volume().prop_map(Response::Volume),
        (
            proptest::collection::vec(volume(), 0..50),
            proptest::option::of(text("[A-Z0-9]{1,32}"))
        )
            .prop_map(|(volumes, next_after)| Response::Volumes {
                volumes,
                next_after
            }),
        (
            proptest::collection::vec(ban(), 0..50),
            proptest::option::of(cidr())
        )
            .prop_map(|(bans, next_after)| Response::Bans { bans, next_after }),
        ban().prop_map(Response::BanAdded),
        (cidr(), any::<bool>())
            .prop_map(|(prefix, existed)| Response::BanRemoved { prefix, existed }),
        any::<[u64; 18]>().prop_map(|v| Response::Stats(ServerStats {
            uptime_secs: v[0],
            connections_accepted: v[1],
            connections_refused: v[2],
            connections_over_limit: v[3],
            sessions_active: v[4],
            pending_evicted: v[14],
            sessions_not_reading: v[15],
            requests_rate_limited: v[16],
            sessions_kicked: v[5],
            handshakes_completed: v[6],
            bans_active: v[7],
            bans_total: v[8],
            bans_evicted: v[9],
            storage_flushes: v[10],
            storage_unflushed: v[11],
            storage_errors: v[12],
            kernel_errors: v[13],
            kernel_detections: v[17],
        })),
        (
            proptest::sample::select(vec![
                ErrorCode::NotFound,
                ErrorCode::InvalidRequest,
                ErrorCode::Forbidden,
                ErrorCode::Internal,
                ErrorCode::LimitExceeded
            ]),
            "\\PC{0,100}"
        )
            .prop_map(|(code, message)| Response::Error { code, message }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_survive_a_session(requests in proptest::collection::vec(request(), 1..8)) {
        let (mut client, mut server) = session();
        for request in &requests {
            let mut wire = Vec::new();
            client.seal(request, &mut wire).unwrap();
            let len = frame::frame_len(wire[..4].try_into().unwrap()).unwrap();
            prop_assert_eq!(len, wire.len() - 4);
            prop_assert_eq!(&server.open::<Request>(&wire[4..]).unwrap(), request);
        }
    }

    #[test]
    fn responses_survive_a_session(responses in proptest::collection::vec(response(), 1..4)) {
        let (mut client, mut server) = session();
        for response in &responses {
            let mut wire = Vec::new();
            server.seal(response, &mut wire).unwrap();
            prop_assert_eq!(&client.open::<Response>(&wire[4..]).unwrap(), response);
        }
    }

    #[test]
    fn arbitrary_ciphertext_never_opens_or_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_, mut server) = session();
        prop_assert!(server.open::<Request>(&bytes).is_err());
    }

    #[test]
    fn arbitrary_first_messages_are_rejected_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let server_key = PrivateKey::generate();
        let responder = Responder::new(&server_key, AccessPolicy::default());
        prop_assert!(responder.accept(&bytes).is_err());
    }

    #[test]
    fn random_bytes_not_starting_with_the_magic_are_bad_magic(first in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(first != MAGIC[0]);
        let mut bytes = vec![first];
        bytes.extend(rest);
        prop_assert_eq!(initiation::classify(&bytes), Classification::Reject(Rejection::BadMagic));
    }

    #[test]
    fn a_rejected_prefix_stays_rejected_when_extended(bytes in proptest::collection::vec(any::<u8>(), 1..140), split in 0usize..140) {
        // Decisions are final: a prefix rejected for a reason is rejected for
        // the same reason with more bytes, so the server may decide early.
        let split = split.min(bytes.len());
        if let Classification::Reject(reason) = initiation::classify(&bytes[..split]) {
            prop_assert_eq!(initiation::classify(&bytes), Classification::Reject(reason));
        }
    }

    #[test]
    fn cidr_text_round_trips(prefix in cidr()) {
        prop_assert_eq!(prefix.to_string().parse::<Cidr>().unwrap(), prefix);
        prop_assert!(prefix.contains(prefix.addr()));
    }
}

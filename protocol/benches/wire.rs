//! Server-side cost of the protocol, each figure beside the bare primitive
//! it is built from, measured in the same run (docs/BENCHMARKS.md):
//!
//! - `dh/x25519` vs `handshake/responder_{ik,nk}`: a handshake should reach
//!   80 % of (DH/s ÷ DH operations per handshake);
//! - `seal_bytes`/`open_bytes` vs `bare_*`: framing, bincode and copies
//!   should cost at most 20 % over ChaCha20-Poly1305 + snappy on the same
//!   bytes; `*_volumes` adds (de)serializing the structs those bytes encode.
//!
//! Run: `cargo bench -p penaltybox-protocol --bench wire`.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use protocol::frame::{MAX_MESSAGE_LEN, Transport, wire_config};
use protocol::handshake::Initiator;
use protocol::message::{Volume, VolumeSpec, VolumeStatus};
use protocol::{AccessPolicy, PrivateKey, Responder, Response};

fn session() -> (Transport, Transport) {
    let key = PrivateKey::generate();
    let responder = Responder::new(&key, AccessPolicy::default());
    let (initiator, first) = Initiator::start(&key.public_key(), None).unwrap();
    let accepted = responder.accept(&first).unwrap();
    (
        initiator.finish(&accepted.response).unwrap().0,
        accepted.transport,
    )
}

/// A volume-list response whose bincode encoding is close to `target` bytes.
fn volume_page(target: usize) -> Response {
    let volume = |i: usize| Volume {
        spec: VolumeSpec {
            id: format!("A{i:05}L9").parse().unwrap(),
            media_type: "LTO-9".parse().unwrap(),
            location: format!("Iron Mountain vault {}, rack {}, slot {}", i % 7, i % 31, i)
                .parse()
                .unwrap(),
            status: VolumeStatus::ALL[i % 6],
        },
        updated_at_ms: 1_763_000_000_000 + (i as u64) * 7919,
    };
    let mut volumes = Vec::new();
    loop {
        volumes.push(volume(volumes.len()));
        let page = Response::Volumes {
            volumes: volumes.clone(),
            next_after: None,
        };
        let len = bincode::encode_to_vec(&page, wire_config()).unwrap().len();
        if len >= target.min(MAX_MESSAGE_LEN - 200) {
            return page;
        }
    }
}

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    let a = x25519_dalek::StaticSecret::random();
    let b = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random());
    group.bench_function("dh/x25519", |bench| {
        bench.iter(|| black_box(a.diffie_hellman(black_box(&b))))
    });

    let server = PrivateKey::generate();
    let responder = Responder::new(&server, AccessPolicy::default());
    let server_public = server.public_key();
    for (name, client_key) in [
        ("responder_ik", Some(PrivateKey::generate())),
        ("responder_nk", None),
    ] {
        group.bench_function(name, |bench| {
            bench.iter_batched(
                // Timestamps grow, so the replay guard accepts every one.
                || {
                    Initiator::start(&server_public, client_key.as_ref())
                        .unwrap()
                        .1
                },
                |first| black_box(responder.accept(&first).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    for (label, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let page = volume_page(size);
        // The same bytes as an opaque payload: what framing costs on its own
        // (length prefix, flags, bincode of a byte string, copies) without
        // building 600 structs, so it compares with the bare primitives.
        let raw = bincode::encode_to_vec(&page, wire_config()).unwrap();
        let mut group = c.benchmark_group(format!("frame_{label}"));
        group.throughput(Throughput::Bytes(raw.len() as u64));

        let (mut sender, _) = session();
        let mut wire = Vec::with_capacity(70_000);
        group.bench_function("seal_bytes", |bench| {
            bench.iter(|| {
                wire.clear();
                sender.seal(black_box(&raw), &mut wire).unwrap();
            })
        });
        group.bench_function("seal_volumes", |bench| {
            bench.iter(|| {
                wire.clear();
                sender.seal(black_box(&page), &mut wire).unwrap();
            })
        });

        // Bare primitives on the same bytes: snappy, then AEAD in place.
        let cipher = ChaCha20Poly1305::new(&[9u8; 32].into());
        let mut encoder = snap::raw::Encoder::new();
        let mut compressed = vec![0u8; snap::raw::max_compress_len(raw.len())];
        let mut nonce = 0u64;
        group.bench_function("bare_seal", |bench| {
            bench.iter(|| {
                let n = encoder.compress(black_box(&raw), &mut compressed).unwrap();
                nonce += 1;
                let mut nonce_bytes = [0u8; 12];
                nonce_bytes[4..].copy_from_slice(&nonce.to_le_bytes());
                let tag = cipher
                    .encrypt_in_place_detached(
                        Nonce::from_slice(&nonce_bytes),
                        &[],
                        &mut compressed[..n],
                    )
                    .unwrap();
                black_box(tag);
            })
        });

        // Opening needs a fresh frame per call (nonces advance), so frames
        // are sealed in setup, outside the measurement, on a session of
        // their own. One at a time: a batch would keep every decoded message
        // alive until its end and measure the kernel's page faults instead.
        let (mut sender, mut receiver) = session();
        group.bench_function("open_bytes", |bench| {
            bench.iter_batched_ref(
                || {
                    let mut frame = Vec::new();
                    sender.seal(&raw, &mut frame).unwrap();
                    frame
                },
                |frame| black_box(receiver.open::<Vec<u8>>(&frame[4..]).unwrap()),
                BatchSize::PerIteration,
            )
        });
        group.bench_function("open_volumes", |bench| {
            bench.iter_batched_ref(
                || {
                    let mut frame = Vec::new();
                    sender.seal(&page, &mut frame).unwrap();
                    frame
                },
                |frame| black_box(receiver.open::<Response>(&frame[4..]).unwrap()),
                BatchSize::PerIteration,
            )
        });

        let compressed_len = encoder.compress(&raw, &mut compressed).unwrap();
        let sealed = {
            let mut buf = compressed[..compressed_len].to_vec();
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&[0u8; 12]), &[], &mut buf)
                .unwrap();
            (buf, tag)
        };
        let mut decrypted = sealed.0.clone();
        let mut decompressed = vec![0u8; raw.len()];
        let mut decoder = snap::raw::Decoder::new();
        group.bench_function("bare_open", |bench| {
            bench.iter(|| {
                decrypted.copy_from_slice(&sealed.0);
                cipher
                    .decrypt_in_place_detached(
                        Nonce::from_slice(&[0u8; 12]),
                        &[],
                        &mut decrypted,
                        &sealed.1,
                    )
                    .unwrap();
                black_box(decoder.decompress(&decrypted, &mut decompressed).unwrap());
            })
        });
        group.finish();
    }
}

criterion_group!(benches, handshakes, frames);
criterion_main!(benches);

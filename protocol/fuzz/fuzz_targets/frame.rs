//! What an authenticated peer (or a tamperer) sends after the handshake:
//! length prefix + ciphertext through a live transport, and the plaintext
//! decoder directly (random bytes never get past the AEAD otherwise).
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use protocol::frame::{LEN_PREFIX, MAX_MESSAGE_LEN, Transport, decode_plaintext, frame_len};
use protocol::handshake::Initiator;
use protocol::{AccessPolicy, PrivateKey, Request, Responder};

fn server_transport() -> &'static Mutex<Transport> {
    static TRANSPORT: OnceLock<Mutex<Transport>> = OnceLock::new();
    TRANSPORT.get_or_init(|| {
        let key = PrivateKey::from_bytes([7; 32]);
        let responder = Responder::new(&key, AccessPolicy::default());
        let (_, first) = Initiator::start(&key.public_key(), None).unwrap();
        Mutex::new(responder.accept(&first).unwrap().transport)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    if let Ok(request) = decode_plaintext::<Request>(data, &mut scratch) {
        // What the server does next with a decoded request: its semantic
        // checks, which must answer (never panic) whatever decoded.
        let _ = request.validate();
    }
    assert!(scratch.len() <= MAX_MESSAGE_LEN);

    if let Some((prefix, rest)) = data.split_first_chunk::<LEN_PREFIX>() {
        if let Ok(len) = frame_len(*prefix) {
            let body = &rest[..len.min(rest.len())];
            assert!(server_transport().lock().unwrap().open::<Request>(body).is_err());
        }
    }
});

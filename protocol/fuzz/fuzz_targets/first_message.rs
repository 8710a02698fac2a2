//! Whatever a stranger sends first: the classifier on every prefix, then the
//! responder on the whole. Neither may panic, and a rejection is final.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protocol::initiation::{Classification, classify};
use protocol::{AccessPolicy, PrivateKey, Responder};

fn responder() -> &'static Responder {
    static RESPONDER: OnceLock<Responder> = OnceLock::new();
    RESPONDER.get_or_init(|| Responder::new(&PrivateKey::from_bytes([7; 32]), AccessPolicy::default()))
}

fuzz_target!(|data: &[u8]| {
    let mut rejected = None;
    for end in 0..=data.len().min(200) {
        match (classify(&data[..end]), rejected) {
            (Classification::Reject(reason), None) => rejected = Some(reason),
            (Classification::Reject(reason), Some(first)) => assert_eq!(reason, first),
            (other, Some(first)) => panic!("{first:?} undone by {other:?}"),
            _ => {}
        }
    }
    let _ = responder().accept(data);
});

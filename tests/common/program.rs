//! The programs loaded for a test run (`BPF_PROG_TEST_RUN`): the real
//! verifier's load, the real `PinnedMaps` and `EventReader` on their maps,
//! attached to nothing. Shared by the program-level tests.

#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{is_root, skip_or_fail};
use model::Cidr;
use xdp::{Detected, Detection, Detector, EventReader, PinnedMaps, TestProgram};

pub const TC_ACT_OK: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Loaded {
    pub program: TestProgram,
    pub table: PinnedMaps,
    pub events: EventReader,
}

impl Loaded {
    pub fn new(detection: &Detection) -> Option<Loaded> {
        if !is_root() {
            skip_or_fail("BPF_PROG_TEST_RUN needs root (CAP_BPF)");
            return None;
        }
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/penaltybox-prog-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let program = TestProgram::load(&pin_dir).expect("load the program");
        let mut table = PinnedMaps::open(&pin_dir).expect("open its maps");
        table.set_detection(detection).unwrap();
        let events = EventReader::open(&pin_dir).unwrap();
        Some(Loaded {
            program,
            table,
            events,
        })
    }

    pub fn verdict(&self, frame: &[u8]) -> u32 {
        self.program.run(frame, 1).unwrap().0
    }

    pub fn events(&mut self) -> Vec<Detected> {
        self.events.by_ref().collect()
    }

    pub fn status(&self) -> xdp::Status {
        xdp::status(self.program.pin_dir()).unwrap()
    }

    pub fn ban(&mut self, prefix: &str) {
        let now = actors::now_ms();
        self.table
            .insert(&prefix.parse::<Cidr>().unwrap(), now + 3_600_000, now)
            .unwrap();
    }
}

pub fn event(source: &str, detector: Detector, figure: u32, port: u16) -> Detected {
    Detected {
        source: source.parse().unwrap(),
        detector,
        figure,
        port,
    }
}

impl Loaded {
    /// The egress program's verdict on a frame this host sends.
    pub fn egress(&self, frame: &[u8]) -> u32 {
        self.program
            .run_egress(xdp::EGRESS_PROGRAM, frame, 1)
            .unwrap()
            .0
    }
}

//! The programs run on packets we make, through `BPF_PROG_TEST_RUN`:
//! loaded by the verifier like `attach` loads them, their maps pinned the
//! same way (so [`crate::PinnedMaps`] and [`crate::EventReader`] work on
//! them), but attached to nothing. For the program-level tests and the
//! per-packet benchmark; needs CAP_BPF. (A test run hands the egress
//! program no socket: a reset it sees is one the stack sent for no
//! connection.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};

use crate::attach::{MapSizes, egress_program, ensure_bpffs, load_program, pin_maps, unpin_maps};
use crate::{OBJECT, XdpError};

/// A loaded, unattached copy of a program; unpinned on drop.
pub struct TestProgram {
    ebpf: aya::Ebpf,
    program: String,
    pin_dir: PathBuf,
}

impl TestProgram {
    /// Loads the embedded program and pins its maps under `pin_dir` (which
    /// must not exist yet).
    pub fn load(pin_dir: &Path) -> Result<Self, XdpError> {
        Self::load_sized(pin_dir, MapSizes::default())
    }

    /// [`TestProgram::load`] with maps of the sizes given.
    pub fn load_sized(pin_dir: &Path, sizes: MapSizes) -> Result<Self, XdpError> {
        Self::load_object(pin_dir, OBJECT, ebpf_common::PROGRAM, sizes)
    }

    /// [`TestProgram::load`] for another object (the bench's) and program.
    pub fn load_object(
        pin_dir: &Path,
        object: &[u8],
        program: &str,
        sizes: MapSizes,
    ) -> Result<Self, XdpError> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir)
            .map_err(|e| XdpError::from_os(format!("create {}", pin_dir.display()), &e))?;
        let mut ebpf = load_program(object, program, sizes)?;
        let egress = egress_program(&mut ebpf)?;
        crate::verified(egress.load(), "load the egress program")?;
        let loaded = TestProgram {
            ebpf,
            program: program.to_owned(),
            pin_dir: pin_dir.to_owned(),
        };
        pin_maps(&loaded.ebpf, pin_dir)?;
        Ok(loaded)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Runs the program on `packet` (an Ethernet frame) `repeat` times;
    /// returns its verdict (`XDP_DROP` = 1, `XDP_PASS` = 2) and the
    /// kernel's average time per run.
    pub fn run(&self, packet: &[u8], repeat: u32) -> Result<(u32, Duration), XdpError> {
        let xdp: &Xdp = self
            .ebpf
            .program(&self.program)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| XdpError::Kernel {
                what: "test run".into(),
                detail: format!("no XDP program {:?}", self.program),
            })?;
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|e| XdpError::from_os("BPF_PROG_TEST_RUN", &e))?;
        Ok((result.return_value, result.duration))
    }
}

impl TestProgram {
    /// Runs the egress program (or `program` of the object, a classifier)
    /// on `packet` `repeat` times; returns its verdict (`TC_ACT_OK` = 0)
    /// and the kernel's average time per run.
    pub fn run_egress(
        &self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), XdpError> {
        let classifier: &SchedClassifier = self
            .ebpf
            .program(program)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| XdpError::Kernel {
                what: "test run".into(),
                detail: format!("no loaded classifier {program:?}"),
            })?;
        let result = classifier
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|e| XdpError::from_os("BPF_PROG_TEST_RUN", &e))?;
        Ok((result.return_value, result.duration))
    }

    /// Loads another XDP program of the object (the bench's baselines).
    pub fn load_xdp(&mut self, program: &str) -> Result<(), XdpError> {
        let xdp = crate::attach::xdp_program(&mut self.ebpf, program)?;
        crate::verified(xdp.load(), "load an XDP program")
    }

    /// Runs another loaded XDP program of the object on `packet`.
    pub fn run_xdp(
        &self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), XdpError> {
        let xdp: &Xdp = self
            .ebpf
            .program(program)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| XdpError::Kernel {
                what: "test run".into(),
                detail: format!("no loaded XDP program {program:?}"),
            })?;
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|e| XdpError::from_os("BPF_PROG_TEST_RUN", &e))?;
        Ok((result.return_value, result.duration))
    }

    /// Loads another classifier of the object (the bench's baseline).
    pub fn load_classifier(&mut self, program: &str) -> Result<(), XdpError> {
        let classifier: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| XdpError::Kernel {
                what: "load a classifier".into(),
                detail: format!("no classifier {program:?} in the object"),
            })?;
        crate::verified(classifier.load(), "load a classifier")
    }
}

impl Drop for TestProgram {
    fn drop(&mut self) {
        unpin_maps(&self.pin_dir);
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}

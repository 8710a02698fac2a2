//! What the unit tests of the ban core and table share: a kernel table in
//! memory, and a core over a real sled database in a temporary directory.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::Cidr;
use model::ban::BanInfo;
use storage::Store;

use crate::allow_list::AllowList;
use crate::ban_core::{BanCore, BanOutcome, CoreParts};
use crate::kernel_table::{KernelError, KernelTable};
use crate::policy::{AdminBan, BanPolicy};
use crate::stats::Stats;
use crate::view::BanView;

pub const NOW: u64 = 1_800_000_000_000;
pub const MIN: u64 = 60_000;

/// The kernel table in memory; a handle the test keeps sees what the
/// table wrote. `fail` makes every insert fail.
#[derive(Clone, Default)]
pub struct FakeKernel {
    pub entries: Arc<Mutex<BTreeMap<Cidr, u64>>>,
    pub allowed: Arc<Mutex<Vec<Cidr>>>,
    pub fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("map full")]
struct MapFull;

impl KernelTable for FakeKernel {
    fn insert(&mut self, prefix: &Cidr, expires: u64, _: u64) -> Result<(), KernelError> {
        if self.fail {
            return Err(KernelError::new(MapFull));
        }
        self.entries.lock().unwrap().insert(*prefix, expires);
        Ok(())
    }

    fn remove(&mut self, prefix: &Cidr) -> Result<(), KernelError> {
        self.entries.lock().unwrap().remove(prefix);
        Ok(())
    }

    fn set_allowed(&mut self, allow: &[Cidr]) -> Result<(), KernelError> {
        *self.allowed.lock().unwrap() = allow.to_vec();
        Ok(())
    }

    fn prefixes(&mut self) -> Result<Vec<Cidr>, KernelError> {
        Ok(self.entries.lock().unwrap().keys().copied().collect())
    }

    fn lookup(&mut self, prefix: &Cidr) -> Result<Option<u64>, KernelError> {
        Ok(self
            .entries
            .lock()
            .unwrap()
            .contains_key(prefix)
            .then_some(0))
    }
}

impl FakeKernel {
    pub fn holds(&self, prefix: &str) -> bool {
        self.entries
            .lock()
            .unwrap()
            .contains_key(&prefix.parse().unwrap())
    }
}

/// A core with a fake kernel table over a database of its own.
pub struct Bed {
    pub core: BanCore,
    pub kernel: FakeKernel,
    pub stats: Arc<Stats>,
    pub store: Store,
    pub allow: AllowList,
    pub dir: tempfile::TempDir,
}

impl Bed {
    pub fn new(policy: BanPolicy) -> Bed {
        Bed::with(policy, AllowList::default(), FakeKernel::default())
    }

    pub fn allowing(policy: BanPolicy, allow: &[&str]) -> Bed {
        let allow = AllowList::new(allow.iter().map(|a| a.parse().unwrap()).collect(), &[]);
        Bed::with(policy, allow, FakeKernel::default())
    }

    pub fn with(policy: BanPolicy, allow: AllowList, kernel: FakeKernel) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
        let stats = Arc::new(Stats::default());
        let (core, _) = restore(policy, &allow, store.clone(), &stats, &kernel, NOW);
        Bed {
            core,
            kernel,
            stats,
            store,
            allow,
            dir,
        }
    }
}

/// Restores a core over `store` with `kernel` as its kernel table.
pub fn restore(
    policy: BanPolicy,
    allow: &AllowList,
    store: Store,
    stats: &Arc<Stats>,
    kernel: &FakeKernel,
    now: u64,
) -> (BanCore, crate::BootReport) {
    let parts = CoreParts {
        allow: allow.clone(),
        store,
        view: Arc::new(BanView::default()),
        stats: stats.clone(),
        kernel: Some(Box::new(kernel.clone())),
    };
    BanCore::restore(policy, parts, now).unwrap()
}

pub fn admin(prefix: Cidr, duration: Option<Duration>, cause: &str) -> AdminBan {
    AdminBan {
        prefix,
        duration,
        cause: cause.parse().unwrap(),
        force: false,
        requester: None,
    }
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn banned(outcome: BanOutcome) -> BanInfo {
    match outcome {
        BanOutcome::Banned(record) => record,
        other => panic!("expected a ban, got {other:?}"),
    }
}

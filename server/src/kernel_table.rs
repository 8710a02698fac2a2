//! The kernel table of the ban core ([`actors::KernelTable`]) over the
//! pinned XDP maps ([`xdp::PinnedMaps`]): the one place where the actors'
//! view of the kernel meets aya (the actors crate links none).

use actors::{KernelError, KernelTable};
use model::Cidr;
use xdp::PinnedMaps;

/// The pinned XDP maps as the ban core's kernel table. Errors keep their
/// `XdpError` type inside the [`KernelError`].
pub struct Pinned(pub PinnedMaps);

impl KernelTable for Pinned {
    fn insert(
        &mut self,
        prefix: &Cidr,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), KernelError> {
        self.0
            .insert(prefix, expires_at_ms, now_ms)
            .map_err(KernelError::new)
    }

    fn remove(&mut self, prefix: &Cidr) -> Result<(), KernelError> {
        self.0.remove(prefix).map_err(KernelError::new)
    }

    fn set_allowed(&mut self, allow: &[Cidr]) -> Result<(), KernelError> {
        self.0.set_allowed(allow).map_err(KernelError::new)
    }

    fn lookup(&mut self, prefix: &Cidr) -> Result<Option<u64>, KernelError> {
        let entry = self.0.get(prefix).map_err(KernelError::new)?;
        Ok(entry.map(|value| value.drops))
    }

    fn prefixes(&mut self) -> Result<Vec<Cidr>, KernelError> {
        let entries = self.0.entries().map_err(KernelError::new)?;
        Ok(entries.into_iter().map(|(prefix, _)| prefix).collect())
    }

    fn insert_all(&mut self, entries: &[(Cidr, u64)], now_ms: u64) -> Vec<(Cidr, KernelError)> {
        let failures = self.0.insert_all(entries, now_ms, threads());
        failures
            .into_iter()
            .map(|(prefix, error)| (prefix, KernelError::new(error)))
            .collect()
    }

    fn remove_all(&mut self, prefixes: &[Cidr]) -> Vec<(Cidr, KernelError)> {
        let failures = self.0.remove_all(prefixes, threads());
        failures
            .into_iter()
            .map(|(prefix, error)| (prefix, KernelError::new(error)))
            .collect()
    }
}

/// One writer thread a core: the maps' syscalls are the cost.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

//! The kernel table: the kernel tier as the ban table sees it, a copy of
//! the time-out table to keep in step. The binary implements it for the
//! pinned XDP maps (`server/src/kernel_table.rs`), so this crate links no
//! aya; the unit tests implement it in memory.

use model::Cidr;

/// A kernel-table operation that failed. It carries the kernel side's own
/// error (the `xdp` crate's typed `XdpError` in the server) as its source,
/// so nothing is flattened to text on the way.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl KernelError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        KernelError(Box::new(error))
    }

    /// The kernel side's error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref()
    }
}

pub trait KernelTable: Send + 'static {
    /// Drop `prefix` in the kernel until `expires_at_ms` (Unix ms).
    fn insert(&mut self, prefix: &Cidr, expires_at_ms: u64, now_ms: u64)
    -> Result<(), KernelError>;
    /// Stop dropping `prefix`; absent is not an error.
    fn remove(&mut self, prefix: &Cidr) -> Result<(), KernelError>;
    /// Makes the kernel's allow-list exactly `allow`: those sources pass
    /// whatever ban covers them.
    fn set_allowed(&mut self, allow: &[Cidr]) -> Result<(), KernelError>;
    /// The kernel's entry for exactly `prefix`: its drop count if present.
    fn lookup(&mut self, prefix: &Cidr) -> Result<Option<u64>, KernelError>;
    /// Every prefix the kernel table holds now.
    fn prefixes(&mut self) -> Result<Vec<Cidr>, KernelError>;
    /// Many inserts at once (boot replay); returns the failures.
    fn insert_all(&mut self, entries: &[(Cidr, u64)], now_ms: u64) -> Vec<(Cidr, KernelError)> {
        entries
            .iter()
            .filter_map(|(prefix, expires)| {
                self.insert(prefix, *expires, now_ms)
                    .err()
                    .map(|e| (*prefix, e))
            })
            .collect()
    }
    /// Many removals at once (a feed's entries that left it); returns the
    /// failures.
    fn remove_all(&mut self, prefixes: &[Cidr]) -> Vec<(Cidr, KernelError)> {
        prefixes
            .iter()
            .filter_map(|prefix| self.remove(prefix).err().map(|e| (*prefix, e)))
            .collect()
    }
}

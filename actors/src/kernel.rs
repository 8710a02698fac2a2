//! The kernel tier as the ban registry sees it: a table to keep in step with
//! the time-out table. Implemented for the pinned XDP maps
//! ([`xdp::KernelTable`]); a trait so the registry can be tested without
//! a kernel.

use protocol::Cidr;
use xdp::KernelTable;

pub trait KernelSync: Send + 'static {
    /// Drop `prefix` in the kernel until `expires_at_ms` (Unix ms).
    fn insert(&mut self, prefix: &Cidr, expires_at_ms: u64, now_ms: u64) -> Result<(), String>;
    /// Stop dropping `prefix`; absent is not an error.
    fn remove(&mut self, prefix: &Cidr) -> Result<(), String>;
    /// Every prefix the kernel table holds now.
    fn prefixes(&mut self) -> Result<Vec<Cidr>, String>;
    /// Many inserts at once (boot replay); returns the failures.
    fn insert_all(&mut self, entries: &[(Cidr, u64)], now_ms: u64) -> Vec<(Cidr, String)> {
        entries
            .iter()
            .filter_map(|(prefix, expires)| {
                self.insert(prefix, *expires, now_ms)
                    .err()
                    .map(|e| (*prefix, e))
            })
            .collect()
    }
}

impl KernelSync for KernelTable {
    fn insert(&mut self, prefix: &Cidr, expires_at_ms: u64, now_ms: u64) -> Result<(), String> {
        KernelTable::insert(self, prefix, expires_at_ms, now_ms).map_err(|e| e.to_string())
    }

    fn remove(&mut self, prefix: &Cidr) -> Result<(), String> {
        KernelTable::remove(self, prefix).map_err(|e| e.to_string())
    }

    fn prefixes(&mut self) -> Result<Vec<Cidr>, String> {
        Ok(self
            .entries()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    fn insert_all(&mut self, entries: &[(Cidr, u64)], now_ms: u64) -> Vec<(Cidr, String)> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        KernelTable::insert_all(self, entries, now_ms, threads)
            .into_iter()
            .map(|(p, e)| (p, e.to_string()))
            .collect()
    }
}

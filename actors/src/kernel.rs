//! The kernel tier as the ban registry sees it: a table to keep in step with
//! the time-out table. The binary implements it over the pinned XDP maps
//! (the `xdp` crate), so this crate does not depend on aya.

use protocol::Cidr;

pub trait KernelSync: Send + 'static {
    /// Drop `prefix` in the kernel until `expires_at_ms` (Unix ms).
    fn insert(&mut self, prefix: &Cidr, expires_at_ms: u64, now_ms: u64) -> Result<(), String>;
    /// Stop dropping `prefix`; absent is not an error.
    fn remove(&mut self, prefix: &Cidr) -> Result<(), String>;
    /// Every prefix the kernel table holds now.
    fn prefixes(&mut self) -> Result<Vec<Cidr>, String>;
}

//! Wiring of the kernel tier for `serve`: open the pinned table named by
//! `-B` (attaching first with `--xdp-iface`) and hand it to the ban core
//! as its [`KernelSync`] (the adapter is `pinned_table.rs`). Any failure is one
//! warning line and the server goes on with the userspace tier alone.

use std::path::PathBuf;

use actors::KernelSync;
use xdp::{AttachMode, KernelTable};

use crate::pinned_table::PinnedTable;

use crate::settings::KernelSettings;

/// The kernel table to keep in step, if the settings ask for one and the
/// kernel lets us have it.
pub fn open(settings: &KernelSettings) -> Option<Box<dyn KernelSync>> {
    let table_path = settings.table.clone().or_else(|| {
        settings
            .xdp_iface
            .as_ref()
            .map(|_| PathBuf::from(xdp::DEFAULT_PIN_DIR))
    })?;
    if let Some(iface) = &settings.xdp_iface {
        // One-step mode owns its attachment: a pin left by an earlier start
        // may point at an interface that no longer exists (a restarted
        // container gets a new one), so start afresh. The live bans are
        // replayed from storage into the new table right after.
        match xdp::detach(&table_path) {
            Ok(true) => log::info!(
                "replacing the XDP program pinned under {}",
                table_path.display()
            ),
            Ok(false) => {}
            Err(error) => log::warn!("cannot detach the old XDP program: {error}"),
        }
        match xdp::attach(iface, settings.mode(), &table_path) {
            Ok(()) => log::info!(
                "attached the XDP program to {iface}, pinned under {}",
                table_path.display()
            ),
            Err(error) => {
                log::warn!("kernel tier off, userspace tier only: {error}");
                return None;
            }
        }
    }
    match KernelTable::open(&table_path) {
        Ok(table) => {
            log::info!("kernel tier on: ban table {}", table.location().display());
            Some(Box::new(PinnedTable(table)))
        }
        Err(error) => {
            log::warn!("kernel tier off, userspace tier only: {error}");
            None
        }
    }
}

/// `--mode` values.
pub fn parse_mode(text: &str) -> Result<AttachMode, String> {
    match text {
        "auto" => Ok(AttachMode::Auto),
        "driver" => Ok(AttachMode::Driver),
        "skb" => Ok(AttachMode::Skb),
        other => Err(format!(
            "unknown XDP mode {other:?}; expected auto, driver or skb"
        )),
    }
}

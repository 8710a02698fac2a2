//! Wiring of the kernel tier for `serve`: open the pinned table named by
//! `-B` (attaching first with `--xdp-iface`) for the registry to keep in
//! step. Any failure is one warning line and the server goes on with the
//! userspace tier alone.

use std::path::PathBuf;

use actors::kernel::KernelSync;
use xdp::{AttachMode, KernelTable};

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
        match xdp::attach(iface, settings.mode(), &table_path, xdp::PROGRAM) {
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
            Some(Box::new(table))
        }
        Err(error) => {
            log::warn!("kernel tier off, userspace tier only: {error}");
            None
        }
    }
}

/// Raises every capability in the permitted set into the effective set.
///
/// The Docker image gives the binary *permitted* file capabilities (BPF,
/// NET_ADMIN, DAC_OVERRIDE) without the effective bit: with the bit, exec
/// would fail outright in a container started without those capabilities;
/// without it, the binary starts either way and takes what it was granted
/// here. Outside such a setup this is a no-op.
pub fn raise_permitted_capabilities() {
    let Ok(permitted) = caps::read(None, caps::CapSet::Permitted) else {
        return;
    };
    for capability in permitted {
        if let Err(error) = caps::raise(None, caps::CapSet::Effective, capability) {
            log::debug!("cannot raise {capability}: {error}");
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

//! What the admin `Top` request says of the tiers the actors do not see:
//! the kernel tier's pinned maps (their drop counters) and the fleet's
//! link (connected or not). Read when asked, as the metrics are.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use protocol::message::KernelTierView;

pub struct Tiers {
    pub kernel: Option<PathBuf>,
    pub fleet: Option<Arc<fleet::FleetStats>>,
}

impl actors::TierStatus for Tiers {
    fn kernel(&self) -> Option<KernelTierView> {
        let pins = self.kernel.as_ref()?;
        Some(match xdp::counters(pins) {
            Ok(c) => KernelTierView {
                up: true,
                dropped: c
                    .dropped_by_address
                    .saturating_add(c.dropped_by_prefix)
                    .saturating_add(c.dropped_unparsed),
            },
            Err(_) => KernelTierView::default(),
        })
    }

    fn fleet_connected(&self) -> Option<bool> {
        let fleet = self.fleet.as_ref()?;
        Some(fleet.connected.load(Ordering::Relaxed))
    }
}

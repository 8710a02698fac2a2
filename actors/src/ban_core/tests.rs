//! The decisions: escalation, aggregation, the allow-list, releases, other
//! nodes' records, the offline core, a reload's policy.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use model::Cidr;
use model::ban::{BanCause, BanInfo, FirstBytes};
use storage::{FleetChange, Store};

use crate::BanError;
use crate::allow_list::AllowList;
use crate::ban_core::{BanCore, BanOutcome, RemoteOutcome};
use crate::fleet_outlet::FleetOutlet;
use crate::policy::BanPolicy;
use crate::testing::{Bed, MIN, NOW, admin, banned, ip};

#[test]
fn a_ban_is_in_the_view_storage_and_kernel_and_escalates_on_repeat() {
    let mut bed = Bed::new(BanPolicy::default());
    let first = banned(bed.core.ban(
        ip("192.0.2.7"),
        BanCause::BadMagic,
        FirstBytes::truncated(b"GET /"),
        NOW,
    ));
    assert_eq!(first.expires_at_ms, NOW + 15 * MIN);
    assert_eq!(first.cause.as_str(), "bad-magic");
    assert!(bed.core.view().is_banned(ip("192.0.2.7"), NOW));
    assert!(bed.kernel.holds("192.0.2.7/32"));
    assert_eq!(
        bed.store.bans().get(&first.prefix).unwrap(),
        Some(first.clone())
    );

    // A second ban while the first is live is a no-op.
    assert_eq!(
        bed.core.ban(
            ip("192.0.2.7"),
            BanCause::BadMac1,
            FirstBytes::default(),
            NOW + 1
        ),
        BanOutcome::AlreadyBanned(first.prefix)
    );

    // After it ends: a repeat within the window doubles.
    assert_eq!(bed.core.release_expired(NOW + 15 * MIN), 1);
    assert!(!bed.core.view().is_banned(ip("192.0.2.7"), NOW + 15 * MIN));
    assert!(!bed.kernel.holds("192.0.2.7/32"));
    assert_eq!(bed.store.bans().get(&first.prefix).unwrap(), None);
    let later = NOW + 20 * MIN;
    let second = banned(bed.core.ban(
        ip("192.0.2.7"),
        BanCause::BadMagic,
        FirstBytes::default(),
        later,
    ));
    assert_eq!(second.repeat, 2);
    assert_eq!(second.expires_at_ms, later + 30 * MIN);
    assert_eq!(bed.stats.bans_total.load(Ordering::Relaxed), 2);
}

#[test]
fn ipv6_sources_aggregate_per_64_and_the_allow_list_wins() {
    let mut bed = Bed::allowing(BanPolicy::default(), &["10.0.0.0/8"]);
    let record = banned(bed.core.ban(
        ip("2001:db8:1:2:3:4:5:6"),
        BanCause::HandshakeTimeout,
        FirstBytes::default(),
        NOW,
    ));
    assert_eq!(record.prefix.to_string(), "2001:db8:1:2::/64");
    assert!(bed.core.view().is_banned(ip("2001:db8:1:2::99"), NOW));
    assert!(bed.kernel.holds("2001:db8:1:2::/64"));

    assert_eq!(
        bed.core.ban(
            ip("10.9.9.9"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW
        ),
        BanOutcome::AllowListed
    );
    assert!(!bed.core.view().is_banned(ip("10.9.9.9"), NOW));
    let refused = bed
        .core
        .admin_ban(admin("10.1.0.0/16".parse().unwrap(), None, "x"), NOW)
        .unwrap_err();
    assert!(matches!(refused, BanError::AllowListed { .. }), "{refused}");
    assert!(!refused.is_server_fault());
}

#[test]
fn release_forgets_history_and_finds_the_aggregate_of_an_address() {
    let mut bed = Bed::new(BanPolicy::default());
    banned(bed.core.ban(
        ip("2001:db8::5"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    let released = bed.core.release("2001:db8::5".parse().unwrap()).unwrap();
    assert_eq!(released, Some("2001:db8::/64".parse().unwrap()));
    assert!(!bed.core.view().is_banned(ip("2001:db8::5"), NOW));
    assert!(!bed.kernel.holds("2001:db8::/64"));
    let prefix: Cidr = "2001:db8::/64".parse().unwrap();
    assert_eq!(bed.store.bans().history(&prefix).unwrap(), None);
    assert_eq!(bed.core.release(prefix).unwrap(), None);
}

#[test]
fn an_offence_right_at_expiry_before_the_sweep_still_escalates() {
    let mut bed = Bed::new(BanPolicy::default());
    let first = banned(bed.core.ban(
        ip("192.0.2.5"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    // Over, but the sweep has not run yet.
    let at = first.expires_at_ms;
    let again = banned(bed.core.ban(
        ip("192.0.2.5"),
        BanCause::BadMagic,
        FirstBytes::default(),
        at,
    ));
    assert_eq!(again.repeat, 2);
    assert_eq!(again.expires_at_ms, at + 30 * MIN);
    // The first ban's heap entry is stale now: the sweep leaves the new one.
    assert_eq!(bed.core.release_expired(at + MIN), 0);
    assert!(bed.core.view().is_banned(ip("192.0.2.5"), at + MIN));
}

#[test]
fn a_reload_releases_what_the_allow_list_now_covers_and_keeps_its_history() {
    let mut bed = Bed::new(BanPolicy::default());
    for source in ["192.0.2.7", "198.51.100.7"] {
        banned(
            bed.core
                .ban(ip(source), BanCause::BadMagic, FirstBytes::default(), NOW),
        );
    }
    let newly = bed.allow.replace(vec!["192.0.2.0/24".parse().unwrap()]);
    let change = bed.core.set_policy(BanPolicy::default(), &newly, NOW + 1);
    assert_eq!(change.released, 1);
    assert!(!bed.kernel.holds("192.0.2.7/32") && bed.kernel.holds("198.51.100.7/32"));
    assert_eq!(
        *bed.kernel.allowed.lock().unwrap(),
        vec!["192.0.2.0/24".parse::<Cidr>().unwrap()]
    );
    let prefix: Cidr = "192.0.2.7".parse().unwrap();
    assert!(bed.store.bans().history(&prefix).unwrap().is_some());
    // The same list again releases nothing more.
    let newly = bed.allow.replace(vec!["192.0.2.0/24".parse().unwrap()]);
    assert!(newly.is_empty());
}

#[test]
fn remote_time_outs_keep_their_expiry_and_yield_to_the_allow_list() {
    let mut bed = Bed::allowing(BanPolicy::default(), &["192.0.2.250/32"]);
    let record = |prefix: &str, expires_at_ms| BanInfo {
        prefix: prefix.parse().unwrap(),
        cause: "port-scan".parse().unwrap(),
        first_bytes: FirstBytes::default(),
        banned_at_ms: NOW - MIN,
        expires_at_ms,
        repeat: 4,
        origin: model::Origin::new("node-b").unwrap(),
    };
    assert_eq!(
        bed.core
            .apply_remote(record("198.51.100.0/24", NOW + 7 * MIN), NOW),
        RemoteOutcome::Applied
    );
    let stored = bed
        .store
        .bans()
        .get(&"198.51.100.0/24".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((stored.expires_at_ms, stored.repeat), (NOW + 7 * MIN, 4));
    assert!(bed.kernel.holds("198.51.100.0/24"));
    assert_eq!(
        bed.core
            .apply_remote(record("192.0.2.0/24", NOW + MIN), NOW),
        RemoteOutcome::AllowListed,
        "covers an allow-listed address"
    );
    assert_eq!(
        bed.core
            .apply_remote(record("203.0.113.0/24", NOW - 1), NOW),
        RemoteOutcome::Expired
    );
    assert_eq!(
        bed.core
            .apply_remote(record("198.51.100.0/24", NOW + MIN), NOW),
        RemoteOutcome::Superseded
    );
}

#[test]
fn local_changes_are_shared_and_remote_ones_are_not() {
    let mut bed = Bed::new(BanPolicy::default());
    let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = wakes.clone();
    bed.core.set_fleet(FleetOutlet::new(
        bed.store.outbox().clone(),
        Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }),
    ));
    let pending = |bed: &Bed| -> Vec<FleetChange> {
        let outbox = bed.store.outbox();
        outbox
            .pending(10)
            .unwrap()
            .into_iter()
            .map(|p| p.change)
            .collect()
    };
    let local = banned(bed.core.ban(
        ip("192.0.2.7"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    assert_eq!(pending(&bed), vec![FleetChange::Put(local.clone())]);
    assert_eq!(wakes.load(Ordering::Relaxed), 1);

    // Another node's time-out is applied, kept with its origin, and not
    // sent back.
    let remote = BanInfo {
        prefix: "198.51.100.9/32".parse().unwrap(),
        origin: model::Origin::new("node-b").unwrap(),
        ..local.clone()
    };
    assert_eq!(
        bed.core.apply_remote(remote.clone(), NOW),
        RemoteOutcome::Applied
    );
    assert_eq!(
        bed.store.bans().get(&remote.prefix).unwrap(),
        Some(remote.clone())
    );
    assert_eq!(pending(&bed).len(), 1);

    // Released on another node: released here, not shared again.
    assert!(bed.core.release_remote(remote.prefix).unwrap());
    assert!(!bed.core.view().is_banned(ip("198.51.100.9"), NOW));
    assert!(!bed.kernel.holds("198.51.100.9/32"));
    assert!(
        !bed.core.release_remote(remote.prefix).unwrap(),
        "nothing left"
    );
    assert_eq!(pending(&bed).len(), 1);

    // An admin's release here replaces the pending put of its prefix.
    assert_eq!(bed.core.release(local.prefix).unwrap(), Some(local.prefix));
    assert_eq!(pending(&bed), vec![FleetChange::Delete(local.prefix)]);
    assert_eq!(wakes.load(Ordering::Relaxed), 2);
}

#[test]
fn the_offline_core_writes_only_storage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
    let mut core = BanCore::offline(BanPolicy::default(), AllowList::default(), store.clone());
    let record = core
        .admin_ban(admin("192.0.2.0/24".parse().unwrap(), None, "admin"), NOW)
        .unwrap();
    assert_eq!(record.expires_at_ms, NOW + 60 * MIN);
    assert_eq!(
        store.bans().get(&record.prefix).unwrap(),
        Some(record.clone())
    );
    assert_eq!(core.release(record.prefix).unwrap(), Some(record.prefix));
    assert_eq!(store.bans().get(&record.prefix).unwrap(), None);
}

#[test]
fn monitor_mode_decides_once_and_enforces_nothing() {
    let policy = BanPolicy {
        monitor: true,
        ..BanPolicy::default()
    };
    let mut bed = Bed::new(policy);
    let would = match bed.core.ban(
        ip("192.0.2.7"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ) {
        BanOutcome::Monitored(record) => record,
        other => panic!("{other:?}"),
    };
    assert!(!bed.core.view().is_banned(ip("192.0.2.7"), NOW));
    assert!(!bed.kernel.holds("192.0.2.7/32"));
    assert_eq!(
        bed.core.ban(
            ip("192.0.2.7"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW + 1
        ),
        BanOutcome::Monitored(would.clone())
    );
    let report = bed
        .core
        .show("192.0.2.7".parse().unwrap(), NOW + 2)
        .unwrap();
    assert_eq!(report.monitored, Some(would));
    assert!(matches!(
        bed.core
            .admin_ban(admin("192.0.2.0/24".parse().unwrap(), None, "a"), NOW),
        Err(BanError::MonitorMode)
    ));
    let _ = Duration::ZERO;
}

#[test]
fn a_kernel_detection_keeps_what_the_kernel_saw_in_its_record() {
    let mut bed = Bed::new(BanPolicy::default());
    let seen = model::KernelSeen {
        figure: 16,
        port: 5000,
    };
    let record = banned(bed.core.ban_detected(
        ip("198.51.100.7"),
        BanCause::StraySegments,
        seen,
        "kernel: 16 segments",
        NOW,
    ));
    assert_eq!(record.cause.as_str(), "stray-segments");
    assert_eq!(record.expires_at_ms, NOW + 60 * MIN);
    assert_eq!(
        model::KernelSeen::from_first_bytes(record.first_bytes.as_slice()),
        Some(seen)
    );
}

/// Sources of one IPv4 /24 timed out one after another.
fn ban_sources(bed: &mut Bed, sources: &[&str], at: u64) {
    for source in sources {
        banned(
            bed.core
                .ban(ip(source), BanCause::BadMagic, FirstBytes::default(), at),
        );
    }
}

#[test]
fn four_time_outs_in_one_24_widen_it_and_the_members_stay() {
    let mut bed = Bed::allowing(BanPolicy::default(), &["198.18.78.200/32"]);
    ban_sources(
        &mut bed,
        &["198.18.78.1", "198.18.78.2", "198.18.78.3"],
        NOW,
    );
    let wide: Cidr = "198.18.78.0/24".parse().unwrap();
    assert_eq!(bed.core.expiry(&wide), None, "three are not yet a pattern");
    ban_sources(&mut bed, &["198.18.78.4"], NOW + MIN);
    let record = bed.store.bans().get(&wide).unwrap().expect("widened");
    assert_eq!(record.cause.as_str(), "widened");
    assert_eq!(record.expires_at_ms, NOW + MIN + 60 * MIN);
    let from = model::WidenedFrom::from_first_bytes(&wide, record.first_bytes.as_slice()).unwrap();
    assert_eq!(from.count, 4);
    assert_eq!(from.members.len(), 4);
    assert!(from.members.contains(&"198.18.78.4/32".parse().unwrap()));
    // In the view and the kernel; the members stay too (no churn).
    assert!(bed.core.view().is_banned(ip("198.18.78.99"), NOW + MIN));
    assert!(bed.kernel.holds("198.18.78.0/24") && bed.kernel.holds("198.18.78.1/32"));
    assert_eq!(bed.core.len(), 5);
    // The allow-list still wins inside it.
    assert_eq!(
        bed.core.ban(
            ip("198.18.78.200"),
            BanCause::BadMagic,
            FirstBytes::default(),
            NOW + MIN
        ),
        BanOutcome::AllowListed
    );
    assert!(bed.allow.contains(ip("198.18.78.200")));
    let by_cause = bed
        .stats
        .metrics(bed.stats.snapshot(0, &bed.store), (0, 0))
        .bans_by_cause;
    assert!(by_cause.contains(&("widened", 1)), "{by_cause:?}");
}

#[test]
fn a_widened_prefix_escalates_as_any_other() {
    let mut bed = Bed::new(BanPolicy::default());
    let wide: Cidr = "198.18.78.0/24".parse().unwrap();
    ban_sources(
        &mut bed,
        &["198.18.78.1", "198.18.78.2", "198.18.78.3", "198.18.78.4"],
        NOW,
    );
    assert_eq!(bed.core.expiry(&wide), Some(NOW + 60 * MIN));
    let later = NOW + 61 * MIN;
    bed.core.release_expired(later);
    ban_sources(
        &mut bed,
        &["198.18.78.5", "198.18.78.6", "198.18.78.7", "198.18.78.8"],
        later,
    );
    let record = bed.store.bans().get(&wide).unwrap().unwrap();
    assert_eq!(record.repeat, 2);
    assert_eq!(record.expires_at_ms, later + 120 * MIN);
}

#[test]
fn admin_and_remote_time_outs_are_members_and_ipv6_widens_step_by_step() {
    let policy = BanPolicy {
        widen: crate::WidenPolicy {
            members: 3,
            ..Default::default()
        },
        ..BanPolicy::default()
    };
    let mut bed = Bed::new(policy);
    let remote = BanInfo {
        prefix: "2001:db8:77:1::/64".parse().unwrap(),
        cause: "port-scan".parse().unwrap(),
        first_bytes: FirstBytes::default(),
        banned_at_ms: NOW,
        expires_at_ms: NOW + 30 * MIN,
        repeat: 1,
        origin: model::Origin::new("node-b").unwrap(),
    };
    assert_eq!(bed.core.apply_remote(remote, NOW), RemoteOutcome::Applied);
    bed.core
        .admin_ban(
            admin("2001:db8:77:2::/64".parse().unwrap(), None, "by hand"),
            NOW,
        )
        .unwrap();
    banned(bed.core.ban(
        ip("2001:db8:77:3::9"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    let narrow: Cidr = "2001:db8:77::/56".parse().unwrap();
    let wide: Cidr = "2001:db8:77::/48".parse().unwrap();
    assert!(bed.core.expiry(&narrow).is_some(), "the /56");
    assert_eq!(
        bed.core.expiry(&wide),
        None,
        "the /56 is one member of the /48"
    );
    for source in ["2001:db8:77:100::1", "2001:db8:77:200::1"] {
        banned(
            bed.core
                .ban(ip(source), BanCause::BadMagic, FirstBytes::default(), NOW),
        );
    }
    let record = bed.store.bans().get(&wide).unwrap().expect("the /48");
    let from = model::WidenedFrom::from_first_bytes(&wide, record.first_bytes.as_slice()).unwrap();
    assert_eq!(
        from.members,
        [
            narrow,
            "2001:db8:77:100::/64".parse().unwrap(),
            "2001:db8:77:200::/64".parse().unwrap()
        ]
    );
    assert!(bed.kernel.holds("2001:db8:77::/48"));
}

#[test]
fn monitor_mode_reports_would_widen_and_enforces_nothing() {
    let policy = BanPolicy {
        monitor: true,
        ..BanPolicy::default()
    };
    let mut bed = Bed::new(policy);
    for source in ["198.18.78.1", "198.18.78.2", "198.18.78.3", "198.18.78.4"] {
        let outcome = bed
            .core
            .ban(ip(source), BanCause::BadMagic, FirstBytes::default(), NOW);
        assert!(matches!(outcome, BanOutcome::Monitored(_)), "{outcome:?}");
    }
    let wide: Cidr = "198.18.78.0/24".parse().unwrap();
    assert!(bed.core.is_empty() && bed.store.bans().get(&wide).unwrap().is_none());
    let report = bed.core.show(wide, NOW).unwrap();
    let would = report.monitored.expect("would widen");
    assert_eq!(would.cause.as_str(), "widened");
    let monitored = bed
        .stats
        .metrics(bed.stats.snapshot(0, &bed.store), (0, 0))
        .monitored_by_cause;
    assert!(monitored.contains(&("widened", 1)), "{monitored:?}");
}

//! What the table keeps in step: eviction at the bound, releases and the
//! lazy expiry heap, restore and the kernel replay, failures that must not
//! undo a time-out.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use model::Cidr;
use model::ban::{BanCause, FirstBytes};
use storage::Store;

use crate::BanError;
use crate::allow_list::AllowList;
use crate::ban_core::BanCore;
use crate::policy::BanPolicy;
use crate::stats::Stats;
use crate::testing::{Bed, FakeKernel, MIN, NOW, admin, banned, ip, restore};

#[test]
fn a_full_table_evicts_the_entry_closest_to_expiry() {
    let policy = BanPolicy {
        max_entries: 2,
        ..BanPolicy::default()
    };
    let mut bed = Bed::new(policy);
    let soon = Duration::from_secs(60);
    let later = Duration::from_secs(3600);
    for (source, duration) in [
        ("192.0.2.1", later),
        ("192.0.2.2", soon),
        ("192.0.2.3", later),
    ] {
        bed.core
            .admin_ban(admin(source.parse().unwrap(), Some(duration), "a"), NOW)
            .unwrap();
    }
    assert_eq!(bed.core.len(), 2);
    assert!(!bed.core.view().is_banned(ip("192.0.2.2"), NOW), "evicted");
    assert!(!bed.kernel.holds("192.0.2.2/32"));
    assert_eq!(
        bed.store.bans().get(&"192.0.2.2".parse().unwrap()).unwrap(),
        None
    );
    assert!(bed.core.view().is_banned(ip("192.0.2.3"), NOW));
    assert_eq!(bed.stats.bans_evicted.load(Ordering::Relaxed), 1);
}

#[test]
fn a_released_and_banned_again_prefix_expires_by_its_new_time_out() {
    let mut bed = Bed::new(BanPolicy::default());
    let prefix: Cidr = "192.0.2.9".parse().unwrap();
    let ban = |minutes: u64| admin(prefix, Some(Duration::from_secs(60 * minutes)), "a");
    bed.core.admin_ban(ban(10), NOW).unwrap();
    assert_eq!(bed.core.release(prefix).unwrap(), Some(prefix));
    bed.core.admin_ban(ban(30), NOW).unwrap();
    // The first ban's heap entry comes up at 10 minutes: stale, skipped.
    assert_eq!(bed.core.release_expired(NOW + 20 * MIN), 0);
    assert!(bed.core.view().is_banned(ip("192.0.2.9"), NOW + 20 * MIN));
    assert!(bed.kernel.holds("192.0.2.9/32"));
    assert_eq!(bed.core.release_expired(NOW + 30 * MIN), 1);
    assert!(!bed.kernel.holds("192.0.2.9/32"));
    // History was written when it ended: a new offence escalates.
    let again = banned(bed.core.ban(
        ip("192.0.2.9"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW + 31 * MIN,
    ));
    assert_eq!(again.repeat, 2);
}

#[test]
fn restore_reloads_live_bans_and_removes_stale_kernel_entries() {
    let mut first = Bed::new(BanPolicy::default());
    banned(first.core.ban(
        ip("192.0.2.7"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    first
        .core
        .admin_ban(
            admin(
                "198.51.100.0/24".parse().unwrap(),
                Some(Duration::from_secs(1)),
                "short",
            ),
            NOW,
        )
        .unwrap();
    first.core.flush().unwrap();
    let Bed {
        core, store, dir, ..
    } = first;
    drop((core, store));
    // Reopen the same database, with a kernel table that holds a ban the
    // database no longer has.
    let kernel = FakeKernel::default();
    kernel
        .entries
        .lock()
        .unwrap()
        .insert("203.0.113.1".parse().unwrap(), NOW + MIN);
    let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
    let stats = Arc::new(Stats::default());
    let allow = AllowList::new(vec!["10.0.0.0/8".parse().unwrap()], &[]);
    let (core, report) = restore(
        BanPolicy::default(),
        &allow,
        store,
        &stats,
        &kernel,
        NOW + 2_000,
    );
    assert_eq!(report.restored, 1);
    assert_eq!(report.discarded, 1, "the 1 s admin ban ran out while down");
    let replay = report.kernel.unwrap();
    assert_eq!(
        (replay.replayed, replay.removed_stale, replay.failed),
        (1, 1, 0)
    );
    assert!(kernel.holds("192.0.2.7/32"));
    assert!(!kernel.holds("203.0.113.1/32"));
    assert_eq!(*kernel.allowed.lock().unwrap(), allow.entries());
    assert!(core.view().is_banned(ip("192.0.2.7"), NOW + 2_000));
}

#[test]
fn restore_holds_a_smaller_bound_than_the_table_was_stored_with() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
    let mut wide = BanCore::offline(BanPolicy::default(), AllowList::default(), store.clone());
    for (i, minutes) in [30u64, 10, 20].iter().enumerate() {
        let prefix: Cidr = format!("192.0.2.{}", i + 1).parse().unwrap();
        wide.admin_ban(
            admin(prefix, Some(Duration::from_secs(60 * minutes)), "a"),
            NOW,
        )
        .unwrap();
    }
    let policy = BanPolicy {
        max_entries: 2,
        ..BanPolicy::default()
    };
    // A feed's entries beside them, in the view but outside the bound.
    let listed: Vec<Cidr> = (0..5)
        .map(|i| format!("198.18.{i}.0/24").parse().unwrap())
        .collect();
    store.feeds().put("drop", NOW, 3_600_000, &listed).unwrap();
    let kernel = FakeKernel::default();
    let stats = Arc::new(Stats::default());
    let (core, report) = restore(policy, &AllowList::default(), store, &stats, &kernel, NOW);
    assert_eq!((core.len(), report.restored), (2 + 5, 2));
    assert_eq!(report.feed_entries, 5);
    assert!(
        !core.view().is_banned(ip("192.0.2.2"), NOW),
        "the closest to expiry went"
    );
    // The evicted one is not replayed into the kernel, feed or no feed.
    assert!(!kernel.holds("192.0.2.2/32") && kernel.holds("192.0.2.1/32"));
    assert!(kernel.holds("198.18.4.0/24"));
}

#[test]
fn kernel_and_storage_failures_keep_the_ban_in_memory() {
    let kernel = FakeKernel {
        fail: true,
        ..FakeKernel::default()
    };
    let mut bed = Bed::with(BanPolicy::default(), AllowList::default(), kernel);
    // A history record that does not decode: the read fails (counted),
    // the ban is made without escalation.
    let prefix: Cidr = "192.0.2.7".parse().unwrap();
    bed.store
        .bans()
        .put_raw_history_for_test(&prefix, b"garbage");
    let record = banned(bed.core.ban(
        ip("192.0.2.7"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    assert_eq!(record.repeat, 1, "no escalation without a readable history");
    assert!(bed.core.view().is_banned(ip("192.0.2.7"), NOW));
    assert_eq!(bed.stats.kernel_errors.load(Ordering::Relaxed), 1);
    assert!(!bed.kernel.holds("192.0.2.7/32"));
    assert_eq!(bed.store.bans().get(&prefix).unwrap(), Some(record));
}

#[test]
fn an_undecodable_record_fails_the_list_but_can_still_be_released() {
    let mut bed = Bed::new(BanPolicy::default());
    let prefix: Cidr = "192.0.2.8".parse().unwrap();
    bed.store
        .bans()
        .put_raw_ban_for_test(&prefix, NOW + MIN, b"\xF1garbage");
    let error = bed.core.list(None, 10).unwrap_err();
    assert!(matches!(error, BanError::Storage(_)), "{error}");
    assert!(error.is_server_fault());
    assert_eq!(bed.core.release(prefix).unwrap(), Some(prefix));
    assert_eq!(bed.core.list(None, 10).unwrap(), (Vec::new(), None));
}

fn feed(name: &str, entries: &[&str]) -> crate::FeedList {
    let mut entries: Vec<Cidr> = entries.iter().map(|e| e.parse().unwrap()).collect();
    entries.sort_unstable();
    crate::FeedList {
        name: name.into(),
        entries,
        refresh: Duration::from_secs(3600),
        bad_lines: 0,
    }
}

#[test]
fn a_feed_refresh_is_a_difference_that_never_lets_a_kept_entry_out() {
    let mut bed = Bed::allowing(BanPolicy::default(), &["198.18.9.0/24"]);
    let applied = bed.core.apply_feed(
        feed(
            "drop",
            &[
                "198.18.0.0/24",
                "198.18.1.0/24",
                "2001:db8:1::/48",
                "198.18.9.0/25",
            ],
        ),
        NOW,
    );
    assert_eq!((applied.added, applied.allow_listed), (3, 1));
    let kept: Cidr = "198.18.0.0/24".parse().unwrap();
    let first_expiry = bed.core.expiry(&kept).unwrap();
    // One refresh plus a grace of one, plus at most a quarter of one.
    assert!(
        (NOW + 120 * MIN..NOW + 135 * MIN).contains(&first_expiry),
        "{first_expiry}"
    );
    assert!(bed.core.view().is_banned(ip("198.18.1.77"), NOW));
    assert!(bed.kernel.holds("198.18.1.0/24") && bed.kernel.holds("2001:db8:1::/48"));
    // Stored as the feed's one record, not as time-out records.
    let stored = bed.store.feeds().get("drop").unwrap().unwrap();
    assert_eq!(stored.entries.len(), 3);
    assert!(bed.store.bans().get(&kept).unwrap().is_none());
    let (listed, _) = bed
        .core
        .list_by_cause(&"feed:drop".parse().unwrap(), None, 10)
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|ban| ban.cause.as_str() == "feed:drop"));

    // Ten minutes later: one left, one new, one kept with its expiry moved.
    let later = NOW + 10 * MIN;
    let applied = bed.core.apply_feed(
        feed(
            "drop",
            &["198.18.0.0/24", "198.18.2.0/24", "2001:db8:1::/48"],
        ),
        later,
    );
    assert_eq!((applied.added, applied.kept, applied.released), (1, 2, 1));
    assert_eq!(bed.core.expiry(&kept), Some(first_expiry + 10 * MIN));
    assert!(!bed.core.view().is_banned(ip("198.18.1.77"), later));
    assert!(!bed.kernel.holds("198.18.1.0/24") && bed.kernel.holds("198.18.2.0/24"));
    assert!(bed.kernel.holds("198.18.0.0/24"));
    assert!(
        bed.store
            .bans()
            .get(&"198.18.1.0/24".parse().unwrap())
            .unwrap()
            .is_none()
    );
    // No escalation history for a feed's entry.
    assert!(
        bed.store
            .bans()
            .history(&"198.18.1.0/24".parse().unwrap())
            .unwrap()
            .is_none()
    );
    let stats = bed.stats.feeds();
    assert_eq!((stats[0].name.as_str(), stats[0].entries), ("drop", 3));
    // Listed entries are not shared, and do not count as time-outs made.
    assert_eq!(bed.stats.bans_total.load(Ordering::Relaxed), 0);
}

#[test]
fn feeds_and_attackers_each_keep_their_own_bound() {
    let policy = BanPolicy {
        max_entries: 2,
        ..BanPolicy::default()
    };
    let mut bed = Bed::new(policy);
    bed.core.apply_feed(
        feed("drop", &["198.18.0.0/24", "198.18.1.0/24", "198.18.2.0/24"]),
        NOW,
    );
    for source in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        banned(
            bed.core
                .ban(ip(source), BanCause::BadMagic, FirstBytes::default(), NOW),
        );
    }
    // The attackers' bound evicted an attacker, never a feed entry.
    assert_eq!(bed.core.len(), 5);
    assert_eq!(bed.stats.bans_evicted.load(Ordering::Relaxed), 1);
    for entry in ["198.18.0.0/24", "198.18.1.0/24", "198.18.2.0/24"] {
        assert!(
            bed.core.expiry(&entry.parse().unwrap()).is_some(),
            "{entry}"
        );
    }
}

#[test]
fn what_else_timed_out_is_left_to_it_and_an_admin_takes_an_entry_over() {
    let mut bed = Bed::new(BanPolicy::default());
    banned(bed.core.ban(
        ip("192.0.2.1"),
        BanCause::BadMagic,
        FirstBytes::default(),
        NOW,
    ));
    let applied = bed
        .core
        .apply_feed(feed("drop", &["192.0.2.1/32", "198.18.0.0/24"]), NOW);
    assert_eq!((applied.added, applied.held), (1, 1));
    assert_eq!(
        bed.store
            .bans()
            .get(&"192.0.2.1".parse().unwrap())
            .unwrap()
            .unwrap()
            .cause
            .as_str(),
        "bad-magic"
    );
    // An admin's time-out of a listed prefix replaces the feed's entry; a
    // refresh leaves it to the admin, and a list without it does not end it.
    bed.core
        .admin_ban(
            admin("198.18.0.0/24".parse().unwrap(), None, "by hand"),
            NOW,
        )
        .unwrap();
    let applied = bed
        .core
        .apply_feed(feed("drop", &["198.18.0.0/24"]), NOW + MIN);
    assert_eq!((applied.held, applied.kept), (1, 0));
    bed.core.apply_feed(feed("drop", &[]), NOW + 2 * MIN);
    let admin = bed
        .store
        .bans()
        .get(&"198.18.0.0/24".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(admin.cause.as_str(), "by hand");
}

#[test]
fn a_feed_that_stops_refreshing_ends_by_itself_and_a_restart_keeps_its_entries() {
    let mut bed = Bed::new(BanPolicy::default());
    bed.core
        .apply_feed(feed("drop", &["198.18.0.0/24", "198.18.1.0/24"]), NOW);
    bed.core.flush().unwrap();
    // A restart: the entries are the feed's again, so that a refresh keeps them.
    let stats = Arc::new(Stats::default());
    let (mut core, report) = restore(
        BanPolicy {
            max_entries: 1,
            ..BanPolicy::default()
        },
        &AllowList::default(),
        bed.store.clone(),
        &stats,
        &FakeKernel::default(),
        NOW + MIN,
    );
    assert_eq!((report.restored, report.feed_entries), (0, 2));
    assert_eq!(core.len(), 2, "the bound leaves feed entries out");
    let applied = core.apply_feed(feed("drop", &["198.18.0.0/24"]), NOW + 2 * MIN);
    assert_eq!((applied.kept, applied.released), (1, 1));
    // Not refreshed again: over after one refresh and a grace, spread.
    assert_eq!(core.release_expired(NOW + 2 * MIN + 119 * MIN), 0);
    assert_eq!(core.release_expired(NOW + 2 * MIN + 136 * MIN), 1);
    assert!(core.is_empty());
    assert!(
        bed.store
            .bans()
            .history(&"198.18.0.0/24".parse().unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn monitor_mode_applies_no_feed_and_an_import_refuses_what_the_allow_list_holds() {
    let mut bed = Bed::new(BanPolicy {
        monitor: true,
        ..BanPolicy::default()
    });
    assert_eq!(
        bed.core
            .apply_feed(feed("drop", &["198.18.0.0/24"]), NOW)
            .added,
        0
    );
    assert!(bed.core.is_empty());

    let mut bed = Bed::allowing(BanPolicy::default(), &["198.18.5.0/24"]);
    let prefixes: Vec<Cidr> = ["198.18.0.0/24", "198.18.5.7/32", "198.18.0.0/16"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let imported = bed
        .core
        .import(&prefixes, None, "list".parse().unwrap(), false, None, NOW);
    assert_eq!((imported.added, imported.refused), (1, 2));
    assert!(
        imported
            .first_refusal
            .unwrap()
            .starts_with("198.18.5.7/32: ")
    );
    assert_eq!(
        bed.store
            .bans()
            .get(&prefixes[0])
            .unwrap()
            .unwrap()
            .cause
            .as_str(),
        "list"
    );
}

#[test]
fn a_refresh_writes_kept_entries_only_when_their_margin_runs_out_and_they_end_on_time() {
    let mut bed = Bed::new(BanPolicy::default());
    let in_kernel = |bed: &Bed, prefix: &str| {
        bed.kernel.entries.lock().unwrap()[&prefix.parse::<Cidr>().unwrap()]
    };
    let listed = ["198.18.0.0/24", "198.18.1.0/24"];
    let applied = bed.core.apply_feed(feed("drop", &listed), NOW);
    assert_eq!(applied.written, 2);
    let written = in_kernel(&bed, "198.18.0.0/24");

    // One refresh later: only the new entry is written; the kept one keeps
    // its written expiry, which still outlasts its moved own one.
    let more = ["198.18.0.0/24", "198.18.1.0/24", "198.18.2.0/24"];
    let applied = bed.core.apply_feed(feed("drop", &more), NOW + 60 * MIN);
    assert_eq!((applied.kept, applied.added, applied.written), (2, 1, 1));
    assert_eq!(in_kernel(&bed, "198.18.0.0/24"), written);
    let kept: Cidr = "198.18.0.0/24".parse().unwrap();
    assert_eq!(bed.core.view().expiry(&kept), Some(written));
    let own = bed.core.expiry(&kept).unwrap();
    assert!(written > own, "written {written}, its own {own}");

    // Two refreshes after the full write: every entry written again.
    let applied = bed.core.apply_feed(feed("drop", &more), NOW + 120 * MIN);
    assert_eq!(applied.written, 3);
    assert!(in_kernel(&bed, "198.18.0.0/24") > written);

    // What left the list leaves the kernel at once, margin or not.
    bed.core
        .apply_feed(feed("drop", &["198.18.2.0/24"]), NOW + 130 * MIN);
    assert!(!bed.kernel.holds("198.18.0.0/24"));
    assert!(bed.kernel.holds("198.18.2.0/24"));

    // Not refreshed again: it ends at its own expiry, not its written one,
    // in the view and the kernel alike.
    let end = NOW + 130 * MIN + 136 * MIN;
    assert_eq!(bed.core.release_expired(end), 1);
    assert!(!bed.core.view().is_banned(ip("198.18.2.1"), end));
    assert!(!bed.kernel.holds("198.18.2.0/24"));
}

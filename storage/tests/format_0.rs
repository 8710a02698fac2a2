//! A database written by the first release (record format 0, the wire's
//! bincode) still loads: bans, their expiries for boot, and volumes. The
//! fixture under `tests/fixtures/db-format-0` was written by that release's
//! `Store`; it is opened from a copy, since sled rewrites files on open.

use std::path::Path;

use storage::{Store, StoreOptions};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_format_0_database_loads_and_lists() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db-format-0");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();

    let (bans, next) = store.bans().list(None, 100).unwrap();
    assert_eq!(next, None);
    let prefixes: Vec<String> = bans.iter().map(|b| b.prefix.to_string()).collect();
    assert_eq!(
        prefixes,
        [
            "192.0.2.7/32",
            "192.0.2.99/32",
            "198.51.100.0/24",
            "203.0.113.9/32",
            "2001:db8:1:2::/64"
        ]
    );
    let first = &bans[0];
    assert_eq!(first.cause.as_str(), "bad-magic");
    assert_eq!(first.first_bytes.as_slice(), b"GET / HTTP/1.1\r\n");
    assert_eq!(first.repeat, 3);
    assert_eq!(first.banned_at_ms, 1_764_000_000_000);
    assert_eq!(first.expires_at_ms, 4_102_444_800_000);
    assert_eq!(bans[2].cause.as_str(), "abuse report");

    // Boot: the expiry prefix of every format-0 value reads as before.
    let loaded = store.bans().load_live(1_800_000_000_000).unwrap();
    assert_eq!(loaded.live.len(), 4);
    assert_eq!(loaded.discarded, 1, "192.0.2.99 expired in 1970");
    let history = store.bans().history(&first.prefix).unwrap().unwrap();
    assert_eq!(history.repeat, 3);

    let volume = store
        .volumes()
        .get(&"A00001L9".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(volume.spec.location.as_str(), "Vault 3");
    assert_eq!(volume.updated_at_ms, 1_764_000_000_123);

    // A format-0 record rewritten is format 1, and reads back the same.
    let moved = store
        .volumes()
        .move_to(&"B00002L8".parse().unwrap(), "Vault 9".parse().unwrap(), 7)
        .unwrap()
        .unwrap();
    assert_eq!(
        store.volumes().get(&moved.spec.id).unwrap(),
        Some(moved.clone())
    );
    store.bans().put(first).unwrap();
    assert_eq!(
        store.bans().get(&first.prefix).unwrap().as_ref(),
        Some(first)
    );
}

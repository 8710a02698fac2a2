//! A database sled reports as damaged is named, with the next step, instead
//! of sled's bare "Read corrupted data at file offset …".
//!
//! (What this does not cover: damage inside sled's log file `db` is taken
//! by sled 0.34 for a torn write, and everything after it is dropped
//! without an error, so no open-time message can be given for that.)

use storage::{StorageError, Store, StoreOptions};

#[test]
fn a_damaged_database_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        store.flush().unwrap();
    }
    // sled checks its `conf` file's checksum when it opens the database.
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[8] ^= 0x5a;
    std::fs::write(&conf, &bytes).unwrap();
    let error = Store::open(dir.path(), &StoreOptions::default())
        .err()
        .expect("the damage is detected");
    assert!(matches!(error, StorageError::Damaged { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("is damaged") && text.contains("move it aside (mv "),
        "{text}"
    );
}

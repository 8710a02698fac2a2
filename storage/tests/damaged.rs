//! A database sled reports as damaged: refused in one line of ours, not
//! sled's bare "Read corrupted data at file offset …", when the options say
//! refuse; repaired, keeping the damaged file, by default. (Every damage
//! case, through a server's start: tests/damage.rs.)

use storage::{OnDamage, StorageError, Store, StoreOptions};

#[test]
fn a_damaged_database_is_refused_in_one_line_or_repaired() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        store.flush().unwrap();
    }
    // sled checks its `conf` file when it opens the database.
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[8] ^= 0x5a;
    std::fs::write(&conf, &bytes).unwrap();
    let refuse = StoreOptions {
        on_damage: OnDamage::Refuse,
        ..StoreOptions::default()
    };
    let error = Store::open(dir.path(), &refuse)
        .err()
        .expect("the damage is detected");
    assert!(matches!(error, StorageError::Damaged { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("is damaged") && text.contains("repairs it, keeping the damaged files"),
        "{text}"
    );
    assert!(
        !text.contains('\n') && !text.contains("backtrace"),
        "{text}"
    );
    assert_eq!(std::fs::read(&conf).unwrap(), bytes);

    // Repaired: the damaged conf is kept aside, a new one written.
    drop(Store::open(dir.path(), &StoreOptions::default()).unwrap());
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .expect("a damaged-* directory");
    assert_eq!(std::fs::read(aside.join("conf")).unwrap(), bytes);
    assert_ne!(std::fs::read(&conf).unwrap(), bytes);
}

//! A damaged database at start, every way it comes: the server repairs
//! what can be repaired, keeps every damaged file, says in one line what
//! it did and how many time-outs came back, and serves
//! (`storage.on_damage = "repair"`, the default); `"refuse"` keeps the
//! files as they are and says so in one line. Real sled databases on disk,
//! damaged as a disk, a crash or a person damages them.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Time-outs in the database every case starts from.
const TIME_OUTS: usize = 5000;

/// A stopped server's data directory holding [`TIME_OUTS`] live time-outs,
/// written and then opened once more, as a restart does: sled has written
/// its snapshot (`snap.*`) beside its log (`db`) and `conf`.
fn database_of_five_thousand(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let db = data.join("db");
    write_live_bans(&db, TIME_OUTS as u32);
    drop(storage::Store::open(&db, &storage::StoreOptions::default()).unwrap());
    assert!(snapshot(&db).is_some(), "no snapshot in {}", db.display());
    data
}

fn snapshot(db: &Path) -> Option<PathBuf> {
    std::fs::read_dir(db)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
}

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

fn truncate_to(path: &Path, fraction: f64) {
    let len = std::fs::metadata(path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len((len as f64 * fraction) as u64).unwrap();
}

/// Flips a byte every `every` bytes from `from` (a fraction of the file).
fn scribble(path: &Path, from: f64, every: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = (bytes.len() as f64 * from) as usize;
    for i in (start..bytes.len()).step_by(every) {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

fn zero(path: &Path, from: f64, len: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = (bytes.len() as f64 * from) as usize;
    let end = (start + len).min(bytes.len());
    bytes[start..end].fill(0);
    std::fs::write(path, bytes).unwrap();
}

/// How many of the time-outs a case brings back.
#[derive(Debug, Clone, Copy)]
enum Back {
    All,
    /// Some but not all: the log lost its tail or a stretch.
    Some,
    None,
}

/// One damage: its name, what it does to the database directory, whether
/// the server has something to repair (sled refuses it, or cannot read it
/// to the end), and how many time-outs come back.
struct Case {
    name: &'static str,
    damage: fn(&Path),
    repaired: bool,
    back: Back,
}

const CASES: [Case; 12] = [
    Case {
        name: "log truncated to half",
        damage: |db| truncate_to(&db.join("db"), 0.5),
        repaired: true,
        back: Back::Some,
    },
    Case {
        name: "log truncated to 1 %",
        damage: |db| truncate_to(&db.join("db"), 0.01),
        repaired: true,
        back: Back::Some,
    },
    Case {
        name: "log truncated to zero",
        damage: |db| truncate_to(&db.join("db"), 0.0),
        repaired: true,
        back: Back::None,
    },
    Case {
        name: "log scribbled",
        damage: |db| scribble(&db.join("db"), 0.0, 97),
        repaired: true,
        back: Back::None,
    },
    Case {
        name: "64 KiB of the log zeroed in its middle",
        damage: |db| zero(&db.join("db"), 0.6, 64 << 10),
        repaired: true,
        back: Back::Some,
    },
    Case {
        name: "first page of the log zeroed",
        damage: |db| zero(&db.join("db"), 0.0, 4096),
        repaired: true,
        back: Back::None,
    },
    Case {
        name: "log removed",
        damage: |db| std::fs::remove_file(db.join("db")).unwrap(),
        repaired: true,
        back: Back::None,
    },
    Case {
        name: "conf scribbled",
        damage: |db| scribble(&db.join("conf"), 0.0, 1),
        repaired: true,
        back: Back::All,
    },
    Case {
        // sled writes a new one: nothing to repair.
        name: "conf removed",
        damage: |db| std::fs::remove_file(db.join("conf")).unwrap(),
        repaired: false,
        back: Back::All,
    },
    Case {
        name: "snapshot truncated",
        damage: |db| truncate_to(&snapshot(db).unwrap(), 0.5),
        repaired: true,
        back: Back::All,
    },
    Case {
        name: "snapshot scribbled",
        damage: |db| scribble(&snapshot(db).unwrap(), 0.0, 13),
        repaired: true,
        back: Back::All,
    },
    Case {
        // sled rebuilds from its log: nothing to repair.
        name: "snapshot removed",
        damage: |db| std::fs::remove_file(snapshot(db).unwrap()).unwrap(),
        repaired: false,
        back: Back::All,
    },
];

/// sled's own words and a panic's: none may reach the operator.
fn assert_no_raw_text(case: &str, text: &str) {
    for raw in [
        "backtrace",
        "Corruption {",
        "Read corrupted",
        "panicked",
        "internal error",
        "sled::",
    ] {
        assert!(!text.contains(raw), "{case}: {raw:?} in\n{text}");
    }
}

/// Every damage case: the server starts and serves, the damaged files are
/// kept in `damaged-*/`, one line says what was done and how many
/// time-outs came back, and that many are in force.
#[test]
fn every_damaged_database_is_repaired_at_start_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let template = database_of_five_thousand(dir.path());
    for (i, case) in CASES.iter().enumerate() {
        let data = dir.path().join(format!("case-{i}"));
        copy_dir(&template, &data);
        let db = data.join("db");
        (case.damage)(&db);

        // The operator's log: sled's own lines at their default level.
        let server = ServerSpec::new(&data).env("RUST_LOG", "").start();
        let restored = server.stats().bans_active as usize;
        let (status, log) = server.stop_with_log();
        eprintln!(
            "{}: {restored} of {TIME_OUTS} time-outs came back",
            case.name
        );
        assert!(status.success(), "{}: {status:?}\n{log}", case.name);
        assert_no_raw_text(case.name, &log);
        match case.back {
            Back::All => assert_eq!(restored, TIME_OUTS, "{}\n{log}", case.name),
            // A salvage may find nothing readable (see below).
            Back::Some => assert!(
                restored < TIME_OUTS && (restored > 0 || log.contains("could not be opened again")),
                "{}: {restored}\n{log}",
                case.name
            ),
            Back::None => assert_eq!(restored, 0, "{}\n{log}", case.name),
        }
        let reopened = log
            .lines()
            .find(|line| line.contains("moved its snapshot and conf aside"));
        // sled panics now and then reading a damaged log, even when
        // opened again (repair.rs): then the readable records are salvaged.
        let salvaged = log
            .lines()
            .find(|line| line.contains("could not be opened again from its log"));
        let aside: Vec<PathBuf> = std::fs::read_dir(&db)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("damaged-")
            })
            .collect();
        if !case.repaired {
            assert!(
                reopened.is_none() && salvaged.is_none() && aside.is_empty(),
                "{}\n{log}",
                case.name
            );
            continue;
        }
        let line = match (reopened, salvaged) {
            (Some(line), None) => {
                assert!(
                    line.contains(&format!(
                        "opened it again from its log: {restored} time-outs came back"
                    )),
                    "{}: {line}",
                    case.name
                );
                line
            }
            (None, Some(line)) => {
                eprintln!("{}: salvaged, sled gave up reading its log", case.name);
                assert!(
                    line.contains(&format!("): {restored} time-outs, ")),
                    "{}: {line}",
                    case.name
                );
                line
            }
            _ => panic!("{}: not one repair line\n{log}", case.name),
        };
        // The damaged files are kept, never deleted: the snapshot and conf
        // moved, the log copied (there is room on this disk).
        assert_eq!(aside.len(), 1, "{}: {aside:?}", case.name);
        assert!(line.contains(&aside[0].display().to_string()), "{line}");
        let kept: Vec<String> = std::fs::read_dir(&aside[0])
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.iter().any(|name| name.starts_with("snap.")),
            "{}: {kept:?}",
            case.name
        );
        if case.name != "log removed" {
            assert!(
                kept.iter().any(|name| name == "db"),
                "{}: {kept:?}",
                case.name
            );
            assert!(
                line.contains("with a copy of its log") || salvaged.is_some(),
                "{line}"
            );
        }
        // Repaired for good: the next start has nothing to repair.
        let server = ServerSpec::new(&data).start();
        assert_eq!(
            server.stats().bans_active as usize,
            restored,
            "{}",
            case.name
        );
        let (status, log) = server.stop_with_log();
        assert!(
            status.success() && !log.contains("moved its snapshot"),
            "{log}"
        );
    }
}

/// `storage.on_damage = "refuse"`: no start, one line, the files as they
/// were; the offline commands leave them as they are too.
#[test]
fn refuse_keeps_a_damaged_database_as_it_is_and_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = database_of_five_thousand(dir.path());
    let db = data.join("db");
    let snap = snapshot(&db).unwrap();
    scribble(&snap, 0.0, 13);
    let scribbled = std::fs::read(&snap).unwrap();
    let config = dir.path().join("refuse.toml");
    std::fs::write(&config, "[storage]\non_damage = \"refuse\"\n").unwrap();

    let data_arg = data.display().to_string();
    let output = std::process::Command::new("timeout")
        .args([
            "30",
            BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_arg,
        ])
        .arg("--config")
        .arg(&config)
        .env("PENALTYBOX_METRICS__LISTEN", "")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|line| line.starts_with("penaltybox: error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&format!(
            "the database in {} is damaged (unreadable data)",
            db.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("storage.on_damage = \"repair\" (the default) repairs it"),
        "{line}"
    );
    assert_no_raw_text("refuse", &err);
    assert_eq!(std::fs::read(&snap).unwrap(), scribbled);
    assert!(!std::fs::read_dir(&db).unwrap().any(|entry| {
        entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("damaged-")
    }));

    // An offline command says the same and changes nothing either.
    let (code, _, err) = cli(&["bans", "list", "--data-dir", &data_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is damaged (unreadable data)") && err.lines().count() == 1,
        "{err}"
    );
    assert_no_raw_text("bans list", &err);
    assert_eq!(std::fs::read(&snap).unwrap(), scribbled);

    // `storage.on_damage` takes only its two values.
    std::fs::write(&config, "[storage]\non_damage = \"ignore\"\n").unwrap();
    let config_arg = config.display().to_string();
    let (code, _, err) = cli(&["config", "check", "--config", &config_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("storage.on_damage: \"ignore\" is neither \"repair\" nor \"refuse\""),
        "{err}"
    );
}

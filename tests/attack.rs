//! Holding under attack, end to end on loopback (and, for the IPv6 /64
//! case, addresses this test adds to `lo` and removes): idle connections
//! from many or rotating sources, one /64, replayed first messages, a peer
//! that never reads, and refusals that name their reason. Every load loop is
//! bounded in count and time, and each test checks that real clients are
//! served meanwhile (≥ 99 % of a ping loop).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use protocol::handshake::{Initiator, RESPONSE_LEN};
use protocol::{Request, Response};

const PINGS: usize = 100;

/// A fresh session from `source` and one ping: the path every new client
/// takes, so it needs a pending slot each time.
fn ping_ok(server: &Server, source: &str, nonce: u64) -> bool {
    let mut config = server.client_config();
    config.bind = Some(source.parse().unwrap());
    config.connect_deadline = Duration::from_secs(3);
    config.handshake_deadline = Duration::from_secs(3);
    config.request_deadline = Duration::from_secs(3);
    block_on(async {
        let mut client = protocol::Client::connect(&server.addr.to_string(), &config).await?;
        client.call(&Request::Ping { nonce }).await
    })
    .is_ok_and(|r| r == Response::Pong { nonce })
}

/// `PINGS` fresh-session pings from a few sources; how many succeeded.
fn ping_loop(server: &Server) -> usize {
    (0..PINGS)
        .filter(|i| ping_ok(server, &format!("127.0.30.{}", 1 + i % 50), *i as u64))
        .count()
}

fn assert_served(served: usize, server: &Server) {
    assert!(
        served * 100 >= PINGS * 99,
        "only {served} of {PINGS} pings served; stats {:?}\n{}",
        server.stats(),
        server.log_text()
    );
}

/// The `n`-th address of 127.1.0.0/16 (distinct sources).
fn source(n: usize) -> String {
    format!("127.1.{}.{}", n / 250, 1 + n % 250)
}

#[test]
fn idle_connections_from_many_sources_do_not_lock_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[limits]\nmax_pending_handshakes = 100\n");
    // Four times the pending table, each from its own source, sending nothing.
    let held: Vec<TcpStream> = (0..400)
        .filter_map(|n| try_connect_from(&source(n), server.addr).ok())
        .collect();
    assert!(held.len() >= 390, "only {} connections made", held.len());
    let served = ping_loop(&server);
    assert_served(served, &server);
    let stats = server.stats();
    // The table grew to twice its size (200); every idle connection past
    // that was evicted, and room was made for the clients.
    assert!(stats.pending_evicted >= 190, "{stats:?}");
    assert!(stats.sessions_active <= 201, "{stats:?}");
    assert!(
        server
            .wait_log("pending connections to make room", Duration::from_secs(3))
            .is_some_and(|l| l.contains("under load in the last second")),
        "{}",
        server.log_text()
    );
}

#[test]
fn fresh_sources_rotating_all_along_do_not_lock_clients_out() {
    let dir = tempfile::tempdir().unwrap();
    // The default pending table (1,024), as in the report this reproduces:
    // fresh sources rotating with about three times that many held open.
    let server = Server::start(&dir.path().join("data"));
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, addr) = (stop.clone(), server.addr);
        std::thread::spawn(move || {
            // Bounded: at most 10,000 connections or 30 s; keeps the newest
            // 3,000 open, so ~3× the pending table is always held; as fast
            // as this thread can connect.
            let started = Instant::now();
            let mut open = std::collections::VecDeque::new();
            let mut made = 0;
            while !stop.load(Ordering::Relaxed)
                && made < 10_000
                && started.elapsed() < Duration::from_secs(30)
            {
                if let Ok(stream) = try_connect_from(&source(made % 10_000), addr) {
                    open.push_back(stream);
                }
                made += 1;
                if open.len() > 3_000 {
                    open.pop_front();
                }
            }
            made
        })
    };
    // Let the attack build up before the clients come.
    assert!(eventually(Duration::from_secs(10), || server
        .try_stats()
        .is_some_and(|s| s.pending_evicted > 500)));
    let evicted_before = server.stats().pending_evicted;
    let served = ping_loop(&server);
    let evicted_during = server.stats().pending_evicted - evicted_before;
    stop.store(true, Ordering::Relaxed);
    let made = attacker.join().unwrap();
    assert_served(served, &server);
    eprintln!("rotating: {made} attacker connections, {evicted_during} evicted during the pings");
    // The attack went on during the pings: the table was full, and the
    // attacker's silent connections were evicted to make room. (Not a count
    // of the attacker's connections: how many one thread makes on two busy
    // cores varies two-fold from run to run; CI once saw 2,341 against a
    // bound of 2,500 that runs here clear at 2,600 to 5,000.)
    assert!(
        evicted_during > 0,
        "only {evicted_during} evictions during the pings ({made} attacker connections)"
    );
}

#[test]
fn many_addresses_of_one_ipv6_64_are_one_source() {
    if !is_root() {
        return skip_or_fail("adding IPv6 test addresses to lo needs root");
    }
    let mut addrs: Vec<String> = (1..=40).map(|i| format!("2001:db8:64::{i:x}")).collect();
    addrs.push("2001:db8:65::1".into());
    let _on_lo = LoAddresses::add(&addrs);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSpec::new(&dir.path().join("data"))
        .listen(&["127.0.0.1:0", "[::1]:0"])
        .config("[limits]\nmax_pending_per_source = 8\n")
        .start();
    // Two listeners on port 0 get a port each; the first is IPv4.
    let v6: SocketAddr = server.addrs[1];
    let held: Vec<TcpStream> = addrs[..40]
        .iter()
        .filter_map(|a| try_connect_from(a, v6).ok())
        .collect();
    assert_eq!(held.len(), 40);
    // Eight are pending; the other 32 were told "too many from your address".
    assert!(eventually(Duration::from_secs(5), || server
        .stats()
        .connections_over_limit
        >= 32));
    let mut config = server.client_config();
    config.bind = Some(addrs[39].parse().unwrap());
    let refused = match block_on(protocol::Client::connect(&v6.to_string(), &config)) {
        Ok(_) => panic!("a 41st connection from the /64 was admitted"),
        Err(error) => error,
    };
    assert!(
        refused.to_string().contains("too many connections"),
        "{refused}"
    );
    // Another /64, and IPv4, are served.
    config.bind = Some("2001:db8:65::1".parse().unwrap());
    let mut other = block_on(protocol::Client::connect(&v6.to_string(), &config)).unwrap();
    assert_eq!(
        block_on(other.call(&Request::Ping { nonce: 1 })).unwrap(),
        Response::Pong { nonce: 1 }
    );
    let served = ping_loop(&server);
    assert_served(served, &server);
}

#[test]
fn replayed_first_messages_never_become_sessions_and_time_the_replayer_out() {
    // (The one answered replay would become a handshake time-out at the
    // deadline: it never sends a frame.)
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[timeouts]\nhandshake = \"1s\"\n");
    // One genuine anonymous first message, captured, then replayed.
    let (_, first) = Initiator::start(&server.public_key, None).unwrap();
    let completed_before = server.stats().handshakes_completed;
    let replayer = "127.0.31.1";
    let mut answered = 0;
    let mut held = Vec::new();
    for _ in 0..200 {
        let Ok(mut stream) = try_connect_from(replayer, server.addr) else {
            continue;
        };
        use std::io::{Read, Write};
        let _ = stream.write_all(&first);
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut response = [0u8; RESPONSE_LEN];
        if stream.read_exact(&mut response).is_ok() {
            answered += 1;
        }
        held.push(stream);
    }
    // Only the first was answered (the server had never seen it); every
    // repetition was refused before any Diffie-Hellman, and none became a
    // session: the one completed since is the stats call's own.
    assert_eq!(answered, 1, "{answered} replays answered");
    let completed_after_replays = server.stats().handshakes_completed;
    assert_eq!(completed_after_replays, completed_before + 1);
    // The second one timed the replayer out as such.
    assert!(
        eventually(Duration::from_secs(5), || server
            .ban_of(&format!("{replayer}/32"))
            .is_some_and(|b| b.cause.as_str() == "replayed")),
        "{}",
        server.log_text()
    );
    drop(held);
    assert!(refused_at_accept(replayer, server.addr));
    let served = ping_loop(&server);
    assert_served(served, &server);
}

#[test]
fn a_peer_that_does_not_read_its_responses_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(
        dir.path(),
        "[timeouts]\nwrite = \"1s\"\n[service]\nrequests_per_second = 100000\nrequest_burst = 100000\n",
    );
    // Volumes enough that every list answer is tens of kilobytes.
    let mut admin = server
        .client_from("127.0.0.1", Some(&server.admin))
        .unwrap();
    // Locations that do not compress, so the answers stay large.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        (0..60)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .collect::<String>()
    };
    for i in 0..256 {
        let spec = protocol::message::VolumeSpec {
            id: format!("V{i:05}").parse().unwrap(),
            media_type: "LTO-9".parse().unwrap(),
            location: noise().parse().unwrap(),
            status: protocol::message::VolumeStatus::Active,
        };
        assert!(matches!(
            block_on(admin.call(&Request::PutVolume(spec))).unwrap(),
            Response::Volume(_)
        ));
    }
    drop(admin);
    // A session that sends list requests and never reads an answer.
    let (initiator, first) = Initiator::start(&server.public_key, Some(&server.admin)).unwrap();
    let mut stream = connect_from("127.0.32.1", server.addr);
    use std::io::{Read, Write};
    stream.write_all(&first).unwrap();
    let mut response = [0u8; RESPONSE_LEN];
    stream.read_exact(&mut response).unwrap();
    let (transport, _) = initiator.finish(&response).unwrap();
    stream.set_nonblocking(true).unwrap();
    // The silent peer runs on its own thread (and runtime), and keeps its
    // connection open, unread, until the server has dropped it (or 20 s).
    let done = Arc::new(AtomicBool::new(false));
    let peer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let stream = tokio::net::TcpStream::from_std(stream).unwrap();
                let mut connection = protocol::connection::Connection::new(stream, transport);
                let list = Request::ListVolumes {
                    after: None,
                    limit: 256,
                };
                // Bounded: 2,000 requests (≈ 40 MB of answers) or 10 s.
                let sending = async {
                    for _ in 0..2_000 {
                        if connection.send(&list).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), sending).await;
                let started = Instant::now();
                while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || server
            .stats()
            .sessions_not_reading
            >= 1),
        "{}",
        server.log_text()
    );
    done.store(true, Ordering::Relaxed);
    peer.join().unwrap();
    assert!(
        server
            .wait_log("not reading its responses", Duration::from_secs(1))
            .is_some()
    );
    assert_served(ping_loop(&server), &server);
}

/// `penaltybox client ping` from `source`: its exit code and stderr.
fn cli_ping(server: &Server, source: &str) -> (i32, String) {
    let key = server.data_dir.join("server.pub").display().to_string();
    let addr = server.addr.to_string();
    let (code, _, err) = cli(&[
        "client",
        "--server",
        &addr,
        "--server-key",
        &key,
        "--bind",
        source,
        "ping",
    ]);
    (code, err)
}

#[test]
fn refusals_over_a_limit_name_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[limits]\nmax_pending_per_source = 1\n");
    let _held = connect_from("127.0.11.1", server.addr);
    let (code, err) = cli_ping(&server, "127.0.11.1");
    assert_eq!(code, 1);
    assert!(
        err.contains("too many connections from this client's address"),
        "{err}"
    );
    assert!(!err.contains("timed out"), "{err}");
    assert!(server.stats().connections_over_limit >= 1);
    assert!(
        server
            .wait_log("over a per-source limit", Duration::from_secs(3))
            .is_some_and(|l| l.contains(
                "refused 0 connections at the connection limit and 1 over a per-source limit"
            )),
        "{}",
        server.log_text()
    );

    // The connection limit: "server busy".
    let dir = tempfile::tempdir().unwrap();
    let server = Server::with_config(dir.path(), "[limits]\nmax_connections = 3\n");
    let held: Vec<_> = (0..3)
        .map(|i| connect_from(&format!("127.0.33.{}", i + 1), server.addr))
        .collect();
    let (code, err) = cli_ping(&server, "127.0.33.9");
    assert_eq!(code, 1);
    assert!(err.contains("the server is busy"), "{err}");
    drop(held);
}

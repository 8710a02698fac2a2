//! The metrics listener (`[metrics] listen`, default 127.0.0.1:9464):
//! `/metrics` in the OpenMetrics text format (encoded by prometheus-client,
//! which Prometheus scrapes), `/healthz` (the process is up) and `/readyz`
//! (503 until the ban table is restored and the server listens, then 200).
//!
//! It runs on its own thread with a small blocking HTTP server, so a scrape
//! never touches the actors' runtime. Every value is read at scrape time
//! from the server's counters ([`actors::ServerHandle::metrics`]) and the
//! kernel tier's per-CPU counters, so metrics cost the hot path nothing
//! beyond the relaxed atomic adds it already makes. No label ever holds an
//! address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use actors::{HistogramSnapshot, MetricsSnapshot, ServerHandle};
use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// What the collector reads, once the server runs.
struct Source {
    server: ServerHandle,
    /// The kernel tier's pin directory, when it is configured.
    kernel: Option<PathBuf>,
    /// The fleet link's counters and its outbox, when the fleet is on.
    fleet: Option<(Arc<fleet::FleetStats>, storage::OutboxStore)>,
}

/// The running listener; the process ends it (the thread is not joined).
pub struct MetricsServer {
    source: Arc<OnceLock<Source>>,
    local_addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `listen` and starts answering: `/readyz` says 503 until
    /// [`MetricsServer::ready`].
    pub fn start(listen: SocketAddr) -> anyhow::Result<MetricsServer> {
        let http = tiny_http::Server::http(listen)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("metrics.listen: cannot listen on {listen}"))?;
        let local_addr = http
            .server_addr()
            .to_ip()
            .context("metrics.listen: not an IP address")?;
        let source = Arc::new(OnceLock::new());
        let mut registry = Registry::with_prefix("penaltybox");
        registry.register(
            "build",
            "The penaltybox version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ServerCollector {
            source: source.clone(),
        }));
        let serving = source.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&http, &registry, &serving))
            .context("metrics: cannot start its thread")?;
        Ok(MetricsServer { source, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The ban table is restored and the server listens: `/readyz` is 200
    /// and `/metrics` has the server's values from now on.
    pub fn ready(
        &self,
        server: ServerHandle,
        kernel: Option<PathBuf>,
        fleet: Option<(Arc<fleet::FleetStats>, storage::OutboxStore)>,
    ) {
        let _ = self.source.set(Source {
            server,
            kernel,
            fleet,
        });
    }
}

fn serve(http: &tiny_http::Server, registry: &Registry, source: &OnceLock<Source>) {
    for request in http.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, registry) {
                    Ok(()) => text(
                        200,
                        body,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    Err(_) => text(500, "cannot encode the metrics\n".into(), PLAIN),
                }
            }
            (tiny_http::Method::Get, "/healthz") => text(200, "ok\n".into(), PLAIN),
            (tiny_http::Method::Get, "/readyz") => match source.get() {
                Some(_) => text(200, "ready\n".into(), PLAIN),
                None => text(503, "restoring the ban table\n".into(), PLAIN),
            },
            (tiny_http::Method::Get, _) => text(
                404,
                "not found: /metrics, /healthz, /readyz\n".into(),
                PLAIN,
            ),
            _ => text(405, "only GET\n".into(), PLAIN),
        };
        // A scraper that went away is not our problem.
        let _ = request.respond(response);
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn text(
    status: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a valid header");
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
}

#[derive(Debug)]
struct ServerCollector {
    source: Arc<OnceLock<Source>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.get() else {
            return Ok(()); // not ready: build info only
        };
        let m = source.server.metrics();
        encode_server(&mut encoder, &m)?;
        encode_feeds(&mut encoder, &m)?;
        encode_fleet(&mut encoder, &m, source.fleet.as_ref())?;
        encode_kernel(&mut encoder, source.kernel.as_deref())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    metric.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    metric.encode_gauge(&value)
}

/// A counter family with one label.
fn counters_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, value) in values {
        let labels = [(label, *value_label)];
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    let mut metric =
        e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    // The snapshot is cumulative; the encoder wants per-bucket counts.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|(bound, cumulative)| {
            let own = cumulative - previous;
            previous = *cumulative;
            // prometheus-client writes f64::MAX as le="+Inf".
            let bound = if bound.is_infinite() {
                f64::MAX
            } else {
                *bound
            };
            (bound, own)
        })
        .collect();
    metric.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
}

fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn encode_server(e: &mut DescriptorEncoder, m: &MetricsSnapshot) -> std::fmt::Result {
    let s = &m.stats;
    for (name, help, value) in [
        (
            "connections_accepted",
            "Connections accepted",
            s.connections_accepted,
        ),
        (
            "connections_refused",
            "Connections closed at accept because their source is timed out",
            s.connections_refused,
        ),
        (
            "connections_over_limit",
            "Connections refused at accept by a connection or pending-handshake limit",
            s.connections_over_limit,
        ),
        (
            "pending_evicted",
            "Pending handshakes closed to make room for new connections",
            s.pending_evicted,
        ),
        (
            "handshakes_completed",
            "Handshakes completed",
            s.handshakes_completed,
        ),
        (
            "sessions_kicked",
            "Established sessions closed because their source was timed out",
            s.sessions_kicked,
        ),
        (
            "sessions_not_reading",
            "Sessions closed because the peer did not take its responses",
            s.sessions_not_reading,
        ),
        (
            "requests_rate_limited",
            "Requests refused by the per-session rate limit",
            s.requests_rate_limited,
        ),
    ] {
        counter(e, name, help, value)?;
    }
    gauge(
        e,
        "sessions_active",
        "Sessions open now",
        as_gauge(s.sessions_active),
    )?;
    encode_timeouts(e, m)?;
    for (name, help, value) in [
        (
            "storage_flushes",
            "Group-commit flushes of the database",
            s.storage_flushes,
        ),
        (
            "storage_errors",
            "Database writes or flushes that failed",
            s.storage_errors,
        ),
        (
            "kernel_errors",
            "Kernel-table updates that failed (the userspace time-out stands)",
            s.kernel_errors,
        ),
        (
            "kernel_detections_received",
            "Detections the kernel tier reported to the registry",
            s.kernel_detections,
        ),
    ] {
        counter(e, name, help, value)?;
    }
    gauge(
        e,
        "storage_unflushed_writes",
        "Writes a crash now would lose",
        as_gauge(s.storage_unflushed),
    )
}

/// The time-out table: made by cause, in force by family, evicted, and
/// the two latencies.
fn encode_timeouts(e: &mut DescriptorEncoder, m: &MetricsSnapshot) -> std::fmt::Result {
    counters_by(
        e,
        "timeouts",
        "Time-outs made, by cause (admin: an admin's time-out)",
        "cause",
        &m.bans_by_cause,
    )?;
    {
        let mut metric = e.encode_descriptor(
            "timeouts_active",
            "Time-outs in force now, by address family",
            None,
            MetricType::Gauge,
        )?;
        for (family, n) in [("ipv4", m.bans_active_ipv4), ("ipv6", m.bans_active_ipv6)] {
            metric
                .encode_family(&[("family", family)])?
                .encode_gauge(&as_gauge(n))?;
        }
    }
    counter(
        e,
        "timeouts_evicted",
        "Time-outs evicted before their expiry because the table was full",
        m.stats.bans_evicted,
    )?;
    histogram(
        e,
        "handshake_duration",
        "From accept to the first authenticated frame",
        &m.handshake_seconds,
    )?;
    histogram(
        e,
        "time_to_timeout",
        "From the offending input (or missed deadline, or kernel event) to the time-out in the table",
        &m.time_to_ban_seconds,
    )
}

/// Blocklist feeds, labelled by name (a handful: the operator's list).
fn encode_feeds(e: &mut DescriptorEncoder, m: &MetricsSnapshot) -> std::fmt::Result {
    if m.feeds.is_empty() {
        return Ok(());
    }
    let by_feed = |pick: fn(&protocol::message::FeedStat) -> u64| -> Vec<(&str, u64)> {
        m.feeds.iter().map(|f| (f.name.as_str(), pick(f))).collect()
    };
    {
        let mut metric = e.encode_descriptor(
            "feed_entries",
            "A blocklist feed's entries in force now",
            None,
            MetricType::Gauge,
        )?;
        for (feed, entries) in by_feed(|f| f.entries) {
            metric
                .encode_family(&[("feed", feed)])?
                .encode_gauge(&as_gauge(entries))?;
        }
    }
    {
        let mut metric = e.encode_descriptor(
            "feed_last_refresh_timestamp_seconds",
            "When a blocklist feed's list was last applied (Unix seconds; 0: not yet)",
            None,
            MetricType::Gauge,
        )?;
        for (feed, at) in by_feed(|f| f.last_refresh_ms / 1000) {
            metric
                .encode_family(&[("feed", feed)])?
                .encode_gauge(&as_gauge(at))?;
        }
    }
    counters_by(
        e,
        "feed_refresh_errors",
        "Refreshes of a blocklist feed that failed (its list before stayed in force)",
        "feed",
        &by_feed(|f| f.refresh_errors),
    )
}

fn encode_fleet(
    e: &mut DescriptorEncoder,
    m: &MetricsSnapshot,
    fleet: Option<&(Arc<fleet::FleetStats>, storage::OutboxStore)>,
) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    counters_by(
        e,
        "bans_monitored",
        "Monitor mode: time-outs that would have been made, by cause (none enforced)",
        "cause",
        &m.monitored_by_cause,
    )?;
    counter(
        e,
        "proxy_headers_rejected",
        "Connections from a trusted proxy dropped for a missing or malformed PROXY header",
        m.proxy_header_rejected,
    )?;
    let Some((stats, outbox)) = fleet else {
        return Ok(());
    };
    gauge(
        e,
        "fleet_connected",
        "1 while the NATS engine answers",
        i64::from(stats.connected.load(Relaxed)),
    )?;
    gauge(
        e,
        "fleet_caught_up",
        "1 once the bucket's live time-outs have all been merged in",
        i64::from(stats.caught_up.load(Relaxed)),
    )?;
    gauge(
        e,
        "fleet_outbox",
        "Changes made here waiting to be published",
        as_gauge(outbox.len() as u64),
    )?;
    counter(
        e,
        "fleet_published",
        "Changes published to the bucket and acknowledged",
        stats.published.load(Relaxed),
    )?;
    counter(
        e,
        "fleet_publish_failures",
        "Publish rounds that failed (retried with backoff)",
        stats.publish_failures.load(Relaxed),
    )?;
    counter(
        e,
        "fleet_outages",
        "Times the engine was lost",
        stats.outages.load(Relaxed),
    )?;
    counter(
        e,
        "fleet_received",
        "Other nodes' time-outs and releases handed to the ban core",
        stats.received.load(Relaxed),
    )?;
    counter(
        e,
        "fleet_skipped",
        "Bucket entries not ours to read (foreign keys, undecodable or newer records)",
        stats.skipped.load(Relaxed),
    )?;
    let rejected: Vec<(&str, u64)> = fleet::Rejection::ALL
        .iter()
        .map(|why| (why.label(), stats.rejected[why.index()].load(Relaxed)))
        .collect();
    counters_by(
        e,
        "fleet_rejected",
        "Bucket entries not applied: unsigned, unknown key, bad signature, origin mismatch (a trusted key signing for another node), stale (expired, or a replay of an older change)",
        "reason",
        &rejected,
    )?;
    counter(
        e,
        "fleet_applied",
        "Other nodes' time-outs applied here (not allow-listed, not already covered)",
        m.fleet_applied,
    )?;
    counter(
        e,
        "fleet_released",
        "Prefixes released here because an admin released them on another node",
        m.fleet_released,
    )
}

fn encode_kernel(e: &mut DescriptorEncoder, pin_dir: Option<&std::path::Path>) -> std::fmt::Result {
    // Absent without a kernel tier, as the fleet's are without a fleet: an
    // alert on `kernel_tier_up == 0` then pages only where one is meant to run.
    let Some(pin_dir) = pin_dir else {
        return Ok(());
    };
    let counters = xdp::counters(pin_dir).ok();
    gauge(
        e,
        "kernel_tier_up",
        "1 when the kernel tier's pinned maps answer, 0 when they do not",
        i64::from(counters.is_some()),
    )?;
    let Some(c) = counters else {
        return Ok(());
    };
    counters_by(
        e,
        "kernel_dropped_packets",
        "Packets the XDP program dropped for a time-out, by the entry that matched",
        "by",
        &[
            ("address", c.dropped_by_address),
            ("prefix", c.dropped_by_prefix),
            ("unparsed", c.dropped_unparsed),
        ],
    )?;
    let d = c.detectors;
    counter(
        e,
        "kernel_syns_seen",
        "Connection-opening SYNs the detectors saw",
        d.syns_seen,
    )?;
    counter(
        e,
        "kernel_syns_rate_limited",
        "SYNs dropped by the per-source SYN rate limit",
        d.syns_dropped,
    )?;
    counters_by(
        e,
        "kernel_detections",
        "Detections in the kernel, once per source and window",
        "detector",
        &[
            ("port-scan", d.scans),
            ("syn-flood", d.floods),
            ("bad-tcp-flags", d.malformed),
            ("stray-segments", d.stray_reports),
            ("unparsed-flood", d.unparsed_floods),
        ],
    )?;
    counter(
        e,
        "kernel_events_lost",
        "Detections lost to a full ring buffer (retried on the next probe)",
        d.events_lost,
    )?;
    counter(
        e,
        "kernel_probes_dropped",
        "Probes of an already reported source dropped before its time-out",
        d.probes_dropped,
    )?;
    counter(
        e,
        "kernel_unparsed_packets",
        "Packets whose TCP header the program could not find (a TCP fragment after the first, an IPv6 extension chain it cannot follow)",
        d.unparsed,
    )?;
    counter(
        e,
        "kernel_stray_segments",
        "Segments that belonged to no connection (the stack's own resets, counted by the egress program)",
        d.strays,
    )?;
    counter(
        e,
        "kernel_strays_dropped",
        "Segments of a source reported for strays dropped before its time-out",
        d.strays_dropped,
    )
}

//! The Prometheus rules (`contrib/prometheus/`) and the Grafana dashboard
//! (`contrib/grafana/penaltybox.json`) against the real thing: promtool
//! checks the rules and runs their unit tests (each alert fires, a
//! neighbouring case does not), then a real Prometheus (Debian's package,
//! on loopback, scraping every second) scrapes a real server while a
//! scripted attack runs, loads the rules, and answers every expression of
//! the rules and the dashboard; each panel the attack exercises returns
//! data.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(path)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Recording rules and alerts in contrib/prometheus/penaltybox.rules.yml.
const RULES: usize = 15;

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    if !have("promtool") {
        skip_or_fail("promtool is not installed (apt install prometheus)");
        return;
    }
    let rules = contrib("prometheus/penaltybox.rules.yml");
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}{output:?}");
    assert!(
        text.contains(&format!("SUCCESS: {RULES} rules found")),
        "{text}"
    );
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(contrib("prometheus/penaltybox.rules.test.yml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// Every `expr:` of the rules file, a folded (`>-`) one joined.
fn rule_expressions(text: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != ">-" {
            exprs.push(rest.to_owned());
            continue;
        }
        let mut folded = Vec::new();
        while let Some(next) = lines.peek() {
            if next.len() - next.trim_start().len() <= indent.len() {
                break;
            }
            folded.push(next.trim().to_owned());
            lines.next();
        }
        exprs.push(folded.join(" "));
    }
    exprs
}

/// Each panel's title and its expressions, `$instance` as "All".
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(contrib("grafana/penaltybox.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            exprs.push((panel["title"].as_str().unwrap().to_owned(), expr));
        }
    }
    exprs
}

/// A Prometheus of its own, stopped (by pid) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: penaltybox\n    static_configs: [{{targets: [\"{target}\"]}}]\n",
                contrib("prometheus/penaltybox.rules.yml").display()
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok()
                && http_get(addr, "/-/ready").starts_with("HTTP/1.0 200")
        });
        assert!(ready, "{}", prometheus.log());
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API: its JSON answer.
    fn query(&self, expr: &str) -> serde_json::Value {
        let answer = http_get(self.addr, &format!("/api/v1/query?query={}", encode(expr)));
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{expr}: {e}: {answer}"))
    }

    /// The values `expr` returns now (NaN ones left out).
    fn values(&self, expr: &str) -> Vec<f64> {
        let answer = self.query(expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|series| series["value"][1].as_str()?.parse().ok())
            .filter(|value: &f64| !value.is_nan())
            .collect()
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Panels the scripted attack below exercises: each must return data.
const EXERCISED: [&str; 6] = [
    "Time-outs by cause (per second)",
    "Time-outs in force",
    "Connections (per second)",
    "Sessions",
    "Handshake duration",
    "Time to time-out (first bad byte to refusal)",
];

#[test]
fn every_expression_runs_against_a_real_prometheus_scraping_a_server_under_attack() {
    if !have("prometheus") {
        skip_or_fail("prometheus is not installed (apt install prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let prometheus = Prometheus::start(server.metrics.expect("metrics on"));
    assert!(
        eventually(Duration::from_secs(20), || !prometheus
            .values("penaltybox_sessions_active")
            .is_empty()),
        "no scrape: {}",
        prometheus.log()
    );

    // The attack: 20 sources send HTTP, are timed out, and try again;
    // clients are served meanwhile (bounded: 20 sources, 3 rounds).
    let sources: Vec<String> = (1..=20).map(|i| format!("127.0.88.{i}")).collect();
    for round in 0..3 {
        for source in &sources {
            if round == 0 {
                send_raw(source, server.addr, b"GET / HTTP/1.1\r\n\r\n", SHORT);
            } else {
                assert!(refused_at_accept(source, server.addr), "{source}");
            }
        }
        assert!(server.served_from("127.0.0.1"));
    }
    assert_eq!(server.stats().bans_active, 20);

    // Rates need two scrapes after the attack; the rules an evaluation.
    let exercised = |prometheus: &Prometheus| {
        dashboard_expressions()
            .iter()
            .filter(|(title, _)| EXERCISED.contains(&title.as_str()))
            .all(|(_, expr)| !prometheus.values(expr).is_empty())
    };
    assert!(
        eventually(Duration::from_secs(30), || exercised(&prometheus)
            && !prometheus.values("penaltybox:timeouts:rate1m").is_empty()),
        "{}",
        prometheus.log()
    );
    let in_force = prometheus.values("sum(penaltybox_timeouts_active)");
    assert_eq!(in_force, vec![20.0]);
    let by_cause = prometheus.values("sum(penaltybox:timeouts:rate1m{cause=\"bad-magic\"})");
    assert!(by_cause.iter().all(|rate| *rate > 0.0), "{by_cause:?}");

    // Every expression parses and runs; every rule loaded healthy.
    let rules = std::fs::read_to_string(contrib("prometheus/penaltybox.rules.yml")).unwrap();
    let rule_exprs = rule_expressions(&rules);
    assert_eq!(rule_exprs.len(), RULES, "{rule_exprs:?}");
    let dashboard = dashboard_expressions();
    assert!(dashboard.len() >= 21, "{dashboard:?}");
    for expr in rule_exprs
        .iter()
        .chain(dashboard.iter().map(|(_, expr)| expr))
    {
        prometheus.values(expr);
    }
    let answer = http_get(prometheus.addr, "/api/v1/rules");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let loaded: serde_json::Value = serde_json::from_str(body).unwrap();
    let groups = loaded["data"]["groups"].as_array().unwrap();
    let all: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(all.len(), RULES);
    for rule in all {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // Under this attack no alert fires: the server is up, ready, and
    // within its limits (the storm needs a minute at one a second).
    let firing = prometheus.values("ALERTS{alertstate=\"firing\"}");
    assert!(firing.is_empty(), "{firing:?}");
    assert!(server.stop().success());
}

const SHORT: Duration = Duration::from_secs(2);

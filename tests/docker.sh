#!/usr/bin/env bash
# Proves the Dockerfile for real on a machine where no registry image can be
# pulled, without changing the Dockerfile (run by .ci/run, as root):
#
#  - Docker 26 (Debian 13's docker.io; Debian 12's 20.10 rejects --cap-add BPF)
#    from a private apt state; the CLI and buildx unpacked into the work dir;
#    dockerd started by hand with its own data root, no iptables, its own
#    bridge subnet;
#  - the base images made, not pulled: debootstrap bookworm (minbase) as
#    debian:bookworm-slim, with this host's CA certificates (TLS to the
#    registries is intercepted here), and a builder with Debian's rustc-web
#    and cargo-web tagged as the rust image the Dockerfile names;
#  - then the image is built and run: with --cap-add BPF --cap-add NET_ADMIN
#    and the host's bpffs, a client from the host is served, a garbage
#    sender is timed out (dropped by XDP); after `docker restart` the ban is
#    still in force and back in the kernel map; without the capabilities the
#    server still serves, userspace tier only;
#  - behind Docker's userland proxy every client is the bridge's gateway:
#    one garbage sender on the host times out another client on the host
#    (the README's "Behind Docker" case, shown as the behaviour to avoid);
#  - contrib/docker-compose.yml brought up with Debian 13's Compose plugin
#    (host network, XDP on a veth this test makes): healthy, serving, a
#    garbage source timed out and still after `down` and `up`, /metrics on
#    the host's loopback.
#
# Everything it made (containers, images, volumes, dockerd, bridge, mounts,
# pins) is removed on exit, also on failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
started=$(date +%s)
log() { printf '[docker.sh %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
  [ "${CI:-}" = true ] && { echo "tests/docker.sh: needs root, and CI=true: failing"; exit 1; }
  echo "tests/docker.sh: SKIPPED (not a pass): needs root"; exit 0
fi

work="$(mktemp -d /var/tmp/penaltybox-docker.XXXXXX)"
pin="/sys/fs/bpf/penaltybox-docker-$$"
subnet_gw=10.99.0.1
DK="$work/cli/usr/bin/docker"
export DOCKER_HOST="unix://$work/docker.sock" DOCKER_CONFIG="$work/config"

cleanup() {
  set +e
  if [ -S "$work/docker.sock" ]; then
    [ -f "$work/compose/admins/admins" ] && compose down -v >/dev/null 2>&1
    "$DK" rm -f pbx-caps pbx-nocaps pbx-gw >/dev/null 2>&1
    "$DK" volume rm -f pbx-data pbx-data2 pbx-data3 >/dev/null 2>&1
    "$DK" rmi -f penaltybox:test penaltybox:latest rust:1.95-slim-bookworm debian:bookworm-slim >/dev/null 2>&1
  fi
  if [ -f "$work/dockerd.pid" ]; then
    local pid
    pid="$(cat "$work/dockerd.pid")"
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 40); do [ -e "/proc/$pid" ] || break; sleep 0.5; done
  fi
  ip link del docker0 2>/dev/null
  ip link del pbxc0 2>/dev/null
  rm -rf "$pin" "$pin-compose"
  grep -o " $work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$work"
  log "cleaned up"
}
trap cleanup EXIT

mirror="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
[ -n "$mirror" ] || mirror="$(awk '/^deb / { print $2; exit }' /etc/apt/sources.list)"
log "Debian mirror: $mirror"

# --- Docker 26 from Debian 13, through a private apt state -------------------
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/config/cli-plugins"
echo "deb $mirror trixie main" > "$work/apt/sources.list"
apt_private=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache")
apt-get "${apt_private[@]}" update -q >/dev/null
(cd "$work/apt" && apt-get "${apt_private[@]}" download docker.io docker-cli docker-buildx docker-compose >/dev/null 2>&1)
if ! /usr/sbin/dockerd --version 2>/dev/null | grep ' 26\.' >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$work"/apt/docker.io_*.deb >/dev/null
fi
dpkg-deb -x "$work"/apt/docker-cli_*.deb "$work/cli"
dpkg-deb -x "$work"/apt/docker-buildx_*.deb "$work/buildx"
cp "$work/buildx/usr/libexec/docker/cli-plugins/docker-buildx" "$work/config/cli-plugins/"
dpkg-deb -x "$work"/apt/docker-compose_*.deb "$work/compose-pkg"
compose_bin="$work/compose-pkg/usr/libexec/docker/cli-plugins/docker-compose"
[ -x "$compose_bin" ] || fail "no Compose plugin in Debian 13's docker-compose package"
cp "$compose_bin" "$work/config/cli-plugins/docker-compose"
log "$("$DK" --version); $(/usr/sbin/dockerd --version)"

/usr/sbin/dockerd --data-root "$work/root" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  --host "$DOCKER_HOST" --iptables=false --ip6tables=false --bip "$subnet_gw/24" >"$work/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do "$DK" info >/dev/null 2>&1 && break; sleep 0.5; done
"$DK" info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; fail "dockerd did not start"; }
log "dockerd up"

# --- base images, made here ----------------------------------------------------
debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
cp /usr/local/share/ca-certificates/*.crt "$work/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$work/rootfs" update-ca-certificates >/dev/null 2>&1
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | "$DK" import - debian:bookworm-slim >/dev/null
mkdir -p "$work/builder"
cat > "$work/builder/Dockerfile" <<EOF
FROM debian:bookworm-slim
RUN echo "deb ${mirror}-security bookworm-security main" > /etc/apt/sources.list.d/security.list \\
 && apt-get update -q && apt-get install -y -q --no-install-recommends rustc-web cargo-web gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/*
EOF
"$DK" build -q --network host -t rust:1.95-slim-bookworm "$work/builder" >/dev/null
log "base images: debian:bookworm-slim (debootstrap), rust:1.95-slim-bookworm ($("$DK" run --rm rust:1.95-slim-bookworm rustc --version))"

# --- the image -------------------------------------------------------------------
"$DK" build --network host -t penaltybox:test "$root" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "docker build"; }
size=$("$DK" image inspect -f '{{.Size}}' penaltybox:test)
log "built penaltybox:test: $(( size / 1024 / 1024 )) MiB"

cd "$root"
cargo build -q -p penaltybox
pb="$root/target/debug/penaltybox"

wait_listening() { # container, how many "listening on" lines
  for _ in $(seq 1 60); do
    [ "$("$DK" logs "$1" 2>&1 | grep -c 'listening on')" -ge "$2" ] && return 0
    sleep 0.5
  done
  "$DK" logs "$1" 2>&1 | tail -20
  fail "$1 did not start"
}
ping_from() { # source ip server-ip key -> output of the client
  "$pb" client --server "$2:5000" --server-key "$3" --bind "$1" --timeout 2 ping 2>&1 || true
}

# --- with CAP_BPF + CAP_NET_ADMIN: both tiers ----------------------------------------
"$DK" run -d --name pbx-caps --cap-add BPF --cap-add NET_ADMIN -v /sys/fs/bpf:/sys/fs/bpf \
  -v pbx-data:/var/lib/penaltybox -e PENALTYBOX_KERNEL__XDP_IFACE=eth0 -e "PENALTYBOX_KERNEL__TABLE=$pin" \
  --health-interval 2s penaltybox:test >/dev/null
wait_listening pbx-caps 1
"$DK" logs pbx-caps 2>&1 | grep "kernel tier on" >/dev/null || { "$DK" logs pbx-caps; fail "kernel tier not on"; }
[ "$("$DK" exec pbx-caps id -u)" = 10001 ] || fail "the server does not run as the unprivileged user"
ip_caps=$("$DK" inspect -f '{{.NetworkSettings.IPAddress}}' pbx-caps)
key_caps=$("$DK" exec pbx-caps cat /var/lib/penaltybox/server.pub)
ping_from "$subnet_gw" "$ip_caps" "$key_caps" | grep "pong" >/dev/null || fail "a client from the host is not served"
log "served a client from the host ($ip_caps, user 10001, kernel tier on)"

ip addr add 10.99.0.201/24 dev docker0
"$pb" replay fixtures/http-get.pcap --server "$ip_caps:5000" --bind 10.99.0.201 >/dev/null
sleep 0.5
ping_from 10.99.0.201 "$ip_caps" "$key_caps" | grep "no answer within" >/dev/null || fail "the garbage sender's SYN was not dropped"
"$DK" exec pbx-caps penaltybox xdp status --pin-dir "$pin" | grep "10.99.0.201/32" >/dev/null || fail "ban not in the kernel map"
log "garbage sender 10.99.0.201 timed out, its SYNs dropped by XDP"

"$DK" restart pbx-caps >/dev/null
wait_listening pbx-caps 2
"$DK" logs pbx-caps 2>&1 | grep "bans restored" | tail -1 | grep "1 bans restored" >/dev/null || fail "the ban was not restored"
"$DK" exec pbx-caps penaltybox xdp status --pin-dir "$pin" | grep "10.99.0.201/32" >/dev/null || fail "ban not back in the kernel map"
ping_from 10.99.0.201 "$ip_caps" "$key_caps" | grep "no answer within" >/dev/null || fail "the ban is not in force after restart"
ping_from "$subnet_gw" "$ip_caps" "$key_caps" | grep "pong" >/dev/null || fail "not serving after restart"
for _ in $(seq 1 30); do [ "$("$DK" inspect -f '{{.State.Health.Status}}' pbx-caps)" = healthy ] && break; sleep 1; done
[ "$("$DK" inspect -f '{{.State.Health.Status}}' pbx-caps)" = healthy ] || fail "HEALTHCHECK not healthy"
log "after docker restart: ban restored from the volume and back in the kernel map; healthy"

# --- without the capabilities: userspace tier only -------------------------------------
"$DK" run -d --name pbx-nocaps -v pbx-data2:/var/lib/penaltybox -e PENALTYBOX_KERNEL__XDP_IFACE=eth0 penaltybox:test >/dev/null
wait_listening pbx-nocaps 1
warning=$("$DK" logs pbx-nocaps 2>&1 | grep "kernel tier off" || true)
[ "$(printf '%s' "$warning" | grep -c .)" = 1 ] || { "$DK" logs pbx-nocaps; fail "expected one 'kernel tier off' line"; }
log "no capabilities: $(printf '%s' "$warning" | sed 's/.*\] //')"
ip_nocaps=$("$DK" inspect -f '{{.NetworkSettings.IPAddress}}' pbx-nocaps)
key_nocaps=$("$DK" exec pbx-nocaps cat /var/lib/penaltybox/server.pub)
ping_from "$subnet_gw" "$ip_nocaps" "$key_nocaps" | grep "pong" >/dev/null || fail "not serving without capabilities"
ip addr add 10.99.0.202/24 dev docker0
"$pb" replay fixtures/http-get.pcap --server "$ip_nocaps:5000" --bind 10.99.0.202 >/dev/null
sleep 0.5
ping_from 10.99.0.202 "$ip_nocaps" "$key_nocaps" | grep "closed the connection during the handshake" >/dev/null \
  || fail "the userspace tier did not refuse the timed-out source"
log "no capabilities: still serving; the garbage sender is refused at accept"

# --- behind Docker's userland proxy: every client is the gateway ------------------------
# dockerd runs without iptables here, so -p is served by docker-proxy, which
# connects to the container from the bridge's gateway: as rootless Docker's
# port driver, or any port forwarder, does.
"$DK" run -d --name pbx-gw -p 127.0.0.1:15000:5000 -v pbx-data3:/var/lib/penaltybox penaltybox:test >/dev/null
wait_listening pbx-gw 1
key_gw=$("$DK" exec pbx-gw cat /var/lib/penaltybox/server.pub)
gw_ping() { # output captured first: a grep -q that quits early must not SIGPIPE the client
  local out; out=$("$pb" client --server 127.0.0.1:15000 --server-key "$key_gw" --bind 127.0.0.3 --timeout 2 ping 2>&1 || true)
  grep -q pong <<<"$out"
}
gw_ping || fail "a client on the host is not served through the userland proxy"
"$pb" replay fixtures/http-get.pcap --server 127.0.0.1:15000 --bind 127.0.0.1 >/dev/null
for _ in $(seq 1 20); do "$DK" logs pbx-gw 2>&1 | grep "timed out $subnet_gw/32" >/dev/null && break; sleep 0.25; done
"$DK" logs pbx-gw 2>&1 | grep "timed out $subnet_gw/32" >/dev/null || { "$DK" logs pbx-gw 2>&1 | tail; fail "the gateway was not timed out"; }
if gw_ping; then
  fail "the other client was served: expected it refused with the gateway"
fi
log "userland proxy: a garbage sender on 127.0.0.1 timed out the gateway $subnet_gw, and with it the client on 127.0.0.3 (the case to avoid)"

# --- contrib/docker-compose.yml, with Debian 13's Compose plugin --------------------------
compose() {
  PENALTYBOX_XDP_IFACE=pbxc0 PENALTYBOX_BPF_TABLE="$pin-compose" \
    "$DK" compose -f "$root/contrib/docker-compose.yml" --project-directory "$work/compose" -p pbxc "$@"
}
ip link add pbxc0 type veth peer name pbxc1
ip link set pbxc0 up && ip link set pbxc1 up
mkdir -p "$work/compose/admins"
"$pb" keygen --out "$work/compose/admin.key" >/dev/null
cp "$work/compose/admin.pub" "$work/compose/admins/admins"
chmod 644 "$work/compose/admins/admins"
"$DK" tag penaltybox:test penaltybox:latest
log "$("$DK" compose version)"
compose up -d --no-build >"$work/compose.log" 2>&1 || { cat "$work/compose.log"; fail "compose up"; }
cid=$(compose ps -q penaltybox)
wait_listening "$cid" 1
"$DK" logs "$cid" 2>&1 | grep "kernel tier on" >/dev/null || { "$DK" logs "$cid" 2>&1 | tail; fail "compose: kernel tier not on"; }
for _ in $(seq 1 90); do [ "$("$DK" inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ] && break; sleep 1; done
[ "$("$DK" inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ] || fail "compose: not healthy"
key_c=$("$DK" exec "$cid" cat /var/lib/penaltybox/server.pub)
ping_from 127.0.0.1 127.0.0.1 "$key_c" | grep pong >/dev/null || fail "compose: a client on the host is not served"
"$pb" replay fixtures/http-get.pcap --server 127.0.0.1:5000 --bind 127.0.0.3 >/dev/null
for _ in $(seq 1 20); do "$DK" logs "$cid" 2>&1 | grep "timed out 127.0.0.3/32" >/dev/null && break; sleep 0.25; done
ping_from 127.0.0.3 127.0.0.1 "$key_c" | grep "closed the connection during the handshake" >/dev/null \
  || fail "compose: the garbage source was not refused"
metrics() { python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode())'; }
metrics | grep '^penaltybox_timeouts_active{family="ipv4"} 1' >/dev/null || fail "compose: /metrics on the host's loopback"
log "compose: healthy, serving, 127.0.0.3 timed out, /metrics answers on 127.0.0.1:9464"
compose down >/dev/null 2>&1
compose up -d --no-build >/dev/null 2>&1 || fail "compose up again"
cid=$(compose ps -q penaltybox)
wait_listening "$cid" 1
"$DK" logs "$cid" 2>&1 | grep "bans restored" | tail -1 | grep "1 bans restored" >/dev/null || { "$DK" logs "$cid" 2>&1 | tail; fail "compose: the time-out did not survive down and up"; }
ping_from 127.0.0.3 127.0.0.1 "$key_c" | grep "closed the connection during the handshake" >/dev/null \
  || fail "compose: the time-out is not in force after down and up"
ping_from 127.0.0.1 127.0.0.1 "$key_c" | grep pong >/dev/null || fail "compose: not serving after down and up"
compose down -v >/dev/null 2>&1
log "compose: down and up kept the time-out (the volume); down -v removed it all"

log "docker test passed ($(( size / 1024 / 1024 )) MiB image)"

#!/usr/bin/env bash
# Builds the XDP program and writes the objects (committed; `--check`
# compares fresh builds with them instead):
#   ebpf-prog/penaltybox-xdp.bpf.o         what the server embeds
#   ebpf-prog/penaltybox-xdp-bench.bpf.o   the same plus `drop_all`, the
#                                          XDP bench's baseline only
# Needs the nightly toolchain with rust-src, and bpf-linker built against
# that nightly's LLVM (see ebpf-prog/README.md; .ci/ebpf-toolchain.sh does both).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/penaltybox-xdp.bpf.o"
cd "$here/program"
# Paths differ between checkouts; keep them out of the object so that the
# committed file can be compared byte for byte with a fresh build.
export RUSTFLAGS="--remap-path-prefix=$here=/penaltybox/ebpf-prog --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo --remap-path-prefix=$(rustc --print sysroot)=/rust"
export CARGO_TARGET_DIR="$here/program/target"
status=0
build() { # features, committed object
  cargo build --release --locked ${1:+--features "$1"}
  local built="$CARGO_TARGET_DIR/bpfel-unknown-none/release/penaltybox-xdp"
  if [ "$mode" = "--check" ]; then
    if ! cmp -s "$built" "$2"; then
      echo "ebpf-prog/$(basename "$2") is stale: run ebpf-prog/build.sh and commit the result" >&2
      status=1
    else
      echo "ebpf-prog/$(basename "$2") matches a fresh build"
    fi
  else
    cp "$built" "$2"
    echo "wrote $2 ($(stat -c %s "$2") bytes)"
  fi
}
mode="${1:-}"
build "" "$out"
build bench "$here/penaltybox-xdp-bench.bpf.o"
exit "$status"

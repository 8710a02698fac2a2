#!/usr/bin/env bash
# Builds the XDP program and writes the object the userspace embeds:
#   ebpf-prog/penaltybox-xdp.bpf.o   (committed; `--check` compares instead)
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
cargo build --release --locked
built="$CARGO_TARGET_DIR/bpfel-unknown-none/release/penaltybox-xdp"
if [ "${1:-}" = "--check" ]; then
  if ! cmp -s "$built" "$out"; then
    echo "ebpf-prog/penaltybox-xdp.bpf.o is stale: run ebpf-prog/build.sh and commit the result" >&2
    exit 1
  fi
  echo "ebpf-prog/penaltybox-xdp.bpf.o matches a fresh build"
else
  cp "$built" "$out"
  echo "wrote $out ($(stat -c %s "$out") bytes)"
fi

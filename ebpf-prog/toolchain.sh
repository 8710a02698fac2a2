#!/usr/bin/env bash
# Installs what building the XDP program needs, idempotently:
# - the pinned nightly (program/rust-toolchain.toml) with rust-src;
# - bpf-linker 0.13.0 linked against that nightly's own LLVM 22. A plain
#   `cargo install bpf-linker` finds Debian's LLVM 14 and fails; pointing
#   LLVM_PREFIX at a directory whose lib/ holds the nightly's libLLVM (as
#   libLLVM.so and under its own name) builds it in about 80 s.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
toolchain="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$here/program/rust-toolchain.toml")"
linker_version="0.13.0"

rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal --component rust-src
rustup component list --toolchain "$toolchain" --installed | grep -q '^rust-src' || rustup component add rust-src --toolchain "$toolchain"

if ! bpf-linker --version 2>/dev/null | grep -q "$linker_version"; then
  sysroot="$(rustc +"$toolchain" --print sysroot)"
  llvm_lib="$(cd "$sysroot/lib" && ls libLLVM.so.*-rust-*-nightly | head -n 1)"
  # bpf-linker keeps this directory as its RUNPATH: it must outlive the build.
  prefix="${CARGO_HOME:-$HOME/.cargo}/bpf-linker-llvm"
  mkdir -p "$prefix/lib"
  ln -sfn "$sysroot/lib/$llvm_lib" "$prefix/lib/libLLVM.so"
  ln -sfn "$sysroot/lib/$llvm_lib" "$prefix/lib/$llvm_lib"
  LLVM_PREFIX="$prefix" LLVM_SYS_221_PREFIX="$prefix" \
    cargo +"$toolchain" install "bpf-linker@$linker_version" --locked --no-default-features --features llvm-22
fi

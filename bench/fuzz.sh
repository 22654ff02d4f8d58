#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of what a client controls on the proxy's hot path:
# request-target canonicalisation with route pricing (`fuzz/fuzz_targets/target.rs`: never panics, canonical output
# is a fixed point, the price of the canonical path is the price of the path nginx serves) and credential parsing
# (`fuzz/fuzz_targets/credential.rs`). Not part of ./scripts/test; results go in the README.
# usage: bash bench/fuzz.sh [seconds per target=300] [jobs=1]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
jobs=${2:-1}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo fuzz passes unstable flags (sanitizer coverage); this machine has one stable toolchain.
export RUSTC_BOOTSTRAP=1
for target in target credential; do
  corpus="target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "== $target: ${secs}s"
  cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$secs" -max_len=512 -jobs="$jobs" -workers="$jobs" -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+.*DONE|stat::|==|SUMMARY|.*panicked|Done)' || true
  echo "   corpus: $(ls "$corpus" | wc -l) inputs; crashes: $(ls "fuzz/artifacts/$target" 2>/dev/null | wc -l)"
done

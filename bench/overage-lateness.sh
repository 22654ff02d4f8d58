#!/usr/bin/env bash
# How late the last overage of a billing period reaches Stripe's meter after the period ends (issue 22), measured on
# the Stripe emulator: two proxies, one control plane with the production coalescing interval (5 minutes), load
# running across each renewal; the closing period's remainder is reported when Stripe drafts the renewal invoice
# (`invoice.created`). Prints one line per renewal and min/median/max. A debug build unless CARGO_PROFILE=release.
#
# usage: bash bench/overage-lateness.sh [renewals=10]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/services.sh
source scripts/lib/services.sh
ensure_build_tools
ensure_python
ensure_postgres
ensure_redis
ensure_stripe_venv
profile=${CARGO_PROFILE:-dev}
cargo build --workspace --bins --locked --profile "$profile" -j2
TOLLGATE_BENCH_RENEWALS=${1:-10} cargo nextest run --cargo-profile "$profile" -p tollgate-e2e --test e2e \
  --run-ignored only --no-capture ledger::bench_lateness_of_a_periods_last_overage 2>&1 |
  grep -E '^(renewal|lateness)'

#!/usr/bin/env bash
# Instructions per metered request with usage billing on (issue 22): ../shared/perf/instr.sh, with its tollgate.sh
# changed so that the measured org is a paying subscriber of a plan that bills overage of api_call up to a ceiling
# (so the proxy computes the bound on every request, and write-back observes overage). Everything else — the anchors,
# the load, the counting — is instr.sh's own.
#   usage: TOLLGATE_ROOT=<checkout with target/release/tollgate-{proxy,control-plane}> bash bench/instr-overage.sh [secs]
set -euo pipefail
perf=${TOLLGATE_PERF:-$(cd "$(dirname "$0")/../.." && pwd)/shared/perf}
[ -f "$perf/instr.sh" ] || { echo "no instr.sh in $perf (set TOLLGATE_PERF)"; exit 1; }
dir=$(mktemp -d /tmp/tg-instr-overage-XXXX)
trap 'rm -rf "$dir"' EXIT
cp "$perf/instr.sh" "$perf/nginx-upstream.conf" "$dir/"
ln -s "$perf/pingora-anchor" "$dir/pingora-anchor"
python3 - "$perf/tollgate.sh" "$dir/tollgate.sh" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()
plan = 'included = { api_call = 1000000000000, tokens = 50000000 }\n'
assert plan in s
s = s.replace(plan, plan + '[plans.pro.overage.api_call]\nprice = "api_call_overage"\nceiling = 2000000000000\n')
create = 'echo "$key" > "${KEYFILE:?}"\n'
assert create in s
subscribe = '''psql -h 127.0.0.1 -U postgres -d "$db" -qAtc "
  UPDATE orgs SET stripe_customer_id = 'cus_perf' WHERE clerk_org_id = '$org';
  INSERT INTO subscriptions (org_id, stripe_customer_id, stripe_subscription_id, status, plan_code, stripe_price_id,
                             current_period_start, current_period_end, billing_cycle_anchor)
  SELECT id, 'cus_perf', 'sub_perf', 'active', 'pro', 'price_perf', now() - interval '1 day',
         now() + interval '29 days', now() - interval '1 day' FROM orgs WHERE clerk_org_id = '$org';" >/dev/null \\
  || { echo "subscribing the org failed"; exit 1; }
'''
s = s.replace(create, subscribe + create)
open(dst, 'w').write(s)
PY
bash "$dir/instr.sh" "${1:-10}"

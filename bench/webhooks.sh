#!/usr/bin/env bash
# Billing under load: how fast the control plane takes signed Stripe events in, how fast its workers apply them with
# the Stripe emulator answering, whether a flood of intake slows the metering endpoints, and what a Stigg outage
# costs (sign-ups and quota/check with a Stigg that accepts connections and never answers, then the outbox's drain).
#
#   bash bench/webhooks.sh [seconds=8] [connections=32] [orgs=20] [steady events/s=500]
#
# Prints a table and appends it to bench/results.md. Numbers are measured here, never asserted in tests.
# TOLLGATE_SKIP_BUILD=1 uses the release binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

seconds=${1:-8} connections=${2:-32} orgs=${3:-20} steady=${4:-500}
ensure_build_tools; ensure_postgres; ensure_redis; ensure_python; ensure_stripe_venv
command -v wrk >/dev/null || apt_install wrk
target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${TOLLGATE_SKIP_BUILD:-}" ]; then
  log "building release binaries"
  cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p tollgate-control-plane -p tollgate-e2e \
    --bin tollgate-control-plane --bin webhook-load
fi
bin="$target_dir/release"

db="tg_bench_hooks_$$" cp_port=$(free_port) stripe_port=$(free_port) stigg_port=$(free_port)
admin="tgop_bench_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
secret="whsec_bench_secret" stripe_key="sk_test_bench" work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres >/dev/null

# A stand-in Stigg: answers every operation with data, or (after POST /_down) accepts and never answers.
cat >"$work/stigg.py" <<'PY'
import http.server, json, sys, threading, time
down = threading.Event()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); self.rfile.read(n)
        if self.path in ("/_down", "/_up"):
            (down.set if self.path == "/_down" else down.clear)()
            body = b"{}"
        elif down.is_set():
            time.sleep(3600); return
        else:
            body = json.dumps({"data": {"ok": True}}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H); s.daemon_threads = True; s.serve_forever()
PY
python3 "$work/stigg.py" "$stigg_port" &
pids+=($!)
wait_port "$stigg_port" "the stand-in Stigg"
stigg_mode() { curl -sf -X POST "http://127.0.0.1:$stigg_port/_$1" >/dev/null; }

"$target_dir/py/bin/python" tests/stripe/run.py --port "$stripe_port" --log-level warning >/dev/null 2>"$work/stripe.log" &
pids+=($!)
wait_port "$stripe_port" "the Stripe emulator"
stripe="http://127.0.0.1:$stripe_port"
sapi() { curl -sf -H "Authorization: Bearer $stripe_key" "$stripe$1" "${@:2}"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
for plan in plan_starter_m:900 plan_growth_m:4900 plan_pro_m:19900; do
  product=$(sapi /v1/products -d "name=${plan%%:*}" | json '["id"]')
  sapi /v1/prices -d currency=usd -d "unit_amount=${plan##*:}" -d "recurring[interval]=month" \
    -d "product=$product" -d "lookup_key=${plan%%:*}" >/dev/null
done

env -i PATH="$PATH" HOME="$HOME" \
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:6379" \
  TOLLGATE_REDIS_NAMESPACE="bh$$" TOLLGATE_PLANS="config/plans.toml" TOLLGATE_ADMIN_TOKEN="$admin" \
  CLERK_JWKS_URL="http://127.0.0.1:9/jwks.json" TOLLGATE_CP_LISTEN="127.0.0.1:$cp_port" \
  STRIPE_SECRET_KEY="$stripe_key" STRIPE_API_BASE="$stripe" STRIPE_WEBHOOK_SECRET="$secret" \
  TOLLGATE_BILLING_RETURN_URL="https://app.tollgate.test/billing" TOLLGATE_DATABASE_MAX_CONNECTIONS=32 \
  STIGG_API_KEY="stigg_bench" STIGG_API_URL="http://127.0.0.1:$stigg_port/graphql" TOLLGATE_STIGG_RETRY_MAX_MS=2000 \
  TOLLGATE_LOG_FORMAT=json RUST_LOG=warn "$bin/tollgate-control-plane" >"$work/cp.log" 2>&1 &
pids+=($!)
cp_pid=$!
wait_port "$cp_port" "the control plane"
cp="http://127.0.0.1:$cp_port"
api() { curl -sf -H "Authorization: Bearer $admin" -H 'content-type: application/json' "$cp$1" -d "$2"; }

subs=()
sign_up() { # org number; appends the subscription to subs
  api /api/orgs.create "{\"orgId\":\"org_bench$1\",\"name\":\"Bench $1\",\"ownerUserId\":\"user_bench$1\"}" >/dev/null
  api /api/stripe/customer.ensure "{\"orgId\":\"org_bench$1\",\"email\":\"b$1@bench.test\"}" >/dev/null
  subs+=("$(api /api/stripe/subscription.create "{\"orgId\":\"org_bench$1\",\"priceLookup\":\"plan_starter_m\"}" | json '["subscriptionId"]')")
}
now() { date +%s.%N; }
log "signing up $orgs orgs (customer and trial each) with Stigg up"
start=$(now)
for i in $(seq "$orgs"); do sign_up "$i"; done
signup_up_ms=$(python3 -c "import time; print(f'{(time.time() - $start) * 1000 / $orgs:.1f}')")
key=$(api /api/keys.create '{"orgId":"org_bench1","name":"bench"}' | json '["key"]')
subs_csv=$(IFS=,; echo "${subs[*]}")

cat >"$work/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"metric":"api_call"}'
LUA
check() {
  wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/check.lua" -H "X-Api-Key: $key" \
    "$cp/api/quota/check" >"$work/wrk.txt"
  python3 - "$work/wrk.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
def ms(p):
    m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", t)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
print(f"{float(rps):.0f} {ms(50):.2f} {ms(99):.2f}")
PY
}
queue() { psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM stripe_events WHERE status IN ('pending','failed')" "$db"; }
outbox() { psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM stigg_outbox WHERE status IN ('pending','failed')" "$db"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$cp_pid/stat"; }

log "quota/check alone (${seconds}s, $connections connections)"
read -r base_rps base_p50 base_p99 < <(check)

load() { # [--rate N]: signed events for $seconds s on $connections connections; prints the JSON summary
  "$bin/webhook-load" --url "$cp/api/webhooks/stripe.receive" --secret "$secret" --subscriptions "$subs_csv" \
    --seconds "$seconds" --concurrency "$connections" --prefix "b$$$1" "${@:2}"
}
log "intake flood alone (${seconds}s, $connections connections; the workers apply what arrives meanwhile)"
intake=$(load a)
log "quota/check beside intake at a steady $steady events/s"
load s --rate "$steady" >"$work/steady.json" &
load_pid=$!
read -r steady_rps steady_p50 steady_p99 < <(check)
wait "$load_pid"
steady_intake=$(cat "$work/steady.json")
log "quota/check beside an intake flood"
load f >"$work/load.json" &
load_pid=$!
read -r flood_rps flood_p50 flood_p99 < <(check)
wait "$load_pid"
flood_intake=$(cat "$work/load.json")
backlog=$(queue)
log "draining the backlog ($backlog events) with the emulator answering"
start=$(date +%s.%N) ticks0=$(cpu_ticks)
while [ "$(queue)" -gt 0 ]; do sleep 0.2; done
drain_s=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
ticks1=$(cpu_ticks)
applied=$(psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM stripe_events WHERE status = 'applied' AND event_id LIKE 'evt_bench_b$$%'" "$db")
failed=$(psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM stripe_events WHERE attempts > 1" "$db")

while [ "$(outbox)" -gt 0 ]; do sleep 0.2; done
log "Stigg down (accepting, never answering): $orgs more sign-ups, then quota/check"
stigg_mode down
start=$(now)
for i in $(seq $((orgs + 1)) $((orgs * 2))); do sign_up "$i"; done
signup_down_ms=$(python3 -c "import time; print(f'{(time.time() - $start) * 1000 / $orgs:.1f}')")
read -r down_rps down_p50 down_p99 < <(check)
waiting=$(outbox)
log "Stigg back: draining $waiting operations"
stigg_mode up
start=$(now)
while [ "$(outbox)" -gt 0 ]; do sleep 0.1; done
outbox_drain_s=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")

report=$(python3 - "$intake" "$steady_intake" "$flood_intake" "$steady_rps" "$steady_p50" "$steady_p99" "$backlog" "$applied" "$failed" "$drain_s" "$base_rps" "$base_p50" "$base_p99" \
  "$flood_rps" "$flood_p50" "$flood_p99" "$ticks0" "$ticks1" "$seconds" "$connections" "$orgs" \
  "$signup_up_ms" "$signup_down_ms" "$down_rps" "$down_p50" "$down_p99" "$waiting" "$outbox_drain_s" <<'PY'
import json, sys, os
(intake, sintake, fintake, srps, sp50, sp99, backlog, applied, failed, drain, brps, bp50, bp99, frps, fp50, fp99, t0, t1, secs, conns, orgs,
 su_up, su_down, drps, dp50, dp99, waiting, odrain) = sys.argv[1:]
i, si, fi = (json.loads(x) for x in (intake, sintake, fintake))
hz = os.sysconf("SC_CLK_TCK")
cpu_ms = (int(t1) - int(t0)) * 1000 / hz
print(f"""### webhooks ({secs} s, {conns} connections, {orgs} orgs)

| measure | value |
|---|---|
| intake flood | {i['per_second']:.0f} events/s, p50 {i['p50_ms']} ms, p99 {i['p99_ms']} ms, {i['errors']} errors of {i['sent']} |
| worker drain (4 tasks, the emulator answering) | a backlog of {int(backlog)} applied in {drain} s = {int(backlog)/max(float(drain), 0.01):.0f} events/s ({int(applied)} applied in all, {int(failed)} retried); control plane CPU {cpu_ms/max(int(backlog),1):.2f} ms per event while draining |
| quota/check alone | {brps} req/s, p50 {bp50} ms, p99 {bp99} ms |
| quota/check beside intake at a steady {si['per_second']:.0f} events/s (intake p99 {si['p99_ms']} ms) | {srps} req/s, p50 {sp50} ms, p99 {sp99} ms |
| quota/check beside an intake flood ({fi['per_second']:.0f} events/s, p99 {fi['p99_ms']} ms) | {frps} req/s, p50 {fp50} ms, p99 {fp99} ms |
| sign-up (org, customer, trial) with Stigg up / down | {su_up} ms / {su_down} ms per org |
| quota/check with Stigg down, its outbox retrying | {drps} req/s, p50 {dp50} ms, p99 {dp99} ms |
| outbox drain when Stigg returns | {waiting} operations in {odrain} s (retries wait at most 2 s here) |
""")
PY
)
echo "$report"
{ echo; echo "$(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || true)"; echo "$report"; } >>bench/results.md

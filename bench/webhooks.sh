#!/usr/bin/env bash
# Billing under load: how fast the control plane takes signed Stripe events in, how fast its workers apply them with
# the Stripe emulator answering, whether a flood of intake slows the metering endpoints, and what a Stigg outage
# costs (sign-ups and quota/check with a Stigg that accepts connections and never answers, then the outbox's drain).
#
#   bash bench/webhooks.sh [seconds=8] [connections=32] [orgs=20] [steady events/s=500]
#
# Prints a table and appends it to bench/results.md. Numbers are measured here, never asserted in tests.
# TOLLGATE_SKIP_BUILD=1 uses the release binaries already built; TOLLGATE_STRIPE_WORKERS sets the worker tasks
# (default 4). DRAIN_EVENTS and DRAIN_DISTINCT size the two
# backlogs; WEBHOOK_LOAD_NICE=19 runs the webhook load generator at that nice level, to tell its own CPU use on a
# shared box from the control plane's.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

seconds=${1:-8} connections=${2:-32} orgs=${3:-20} steady=${4:-500}
rounds=${ROUNDS:-3} drain_events=${DRAIN_EVENTS:-20000} drain_distinct=${DRAIN_DISTINCT:-2000}
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
stripe_pid=$!
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
  TOLLGATE_BILLING_RETURN_URL="https://app.tollgate.test/billing" TOLLGATE_DATABASE_MAX_CONNECTIONS=32 TOLLGATE_STRIPE_WORKERS="${TOLLGATE_STRIPE_WORKERS:-4}" \
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
cpu_ticks() { awk '{print $14 + $15}' "/proc/${1:-$cp_pid}/stat"; }

load() { # [--rate N]: signed events for $seconds s on $connections connections; prints the JSON summary
  ${WEBHOOK_LOAD_NICE:+nice -n "$WEBHOOK_LOAD_NICE"} "$bin/webhook-load" --url "$cp/api/webhooks/stripe.receive" --secret "$secret" --subscriptions "$subs_csv" \
    --seconds "$seconds" --concurrency "$connections" --prefix "b$$$1" "${@:2}"
}
log "intake flood alone (${seconds}s, $connections connections; the workers apply what arrives meanwhile)"
intake=$(load a)
# check beside LOAD-ARGS...: quota/check while the webhook load runs (none: alone); appends "rps p50 p99" to
# $work/<name>.txt and the load's summary to $work/<name>.json.
beside() {
  local name=$1 c0 e0 t0; shift
  c0=$(cpu_ticks) e0=$(cpu_ticks "$stripe_pid") t0=$(now)
  if [ $# -gt 0 ]; then
    load "$name$round" "$@" >>"$work/$name.json" &
    local load_pid=$!
    check >>"$work/$name.txt"
    wait "$load_pid"
  else
    check >>"$work/$name.txt"
  fi
  # CPU of the control plane and of the emulator over the round, in % of one core
  python3 -c "import os, time; d = (time.time() - $t0) * os.sysconf('SC_CLK_TCK') / 100
print(f'{($(cpu_ticks) - $c0) / d:.0f} {($(cpu_ticks "$stripe_pid") - $e0) / d:.0f}')" >>"$work/$name.cpu"
}
for round in $(seq "$rounds"); do
  log "round $round of $rounds: quota/check alone, beside intake at a steady $steady events/s, beside an intake flood"
  beside alone
  beside steady --rate "$steady"
  beside flood --rate 0
done
# median NAME: "rps p50 p99 (p99 min–max)" over the rounds
median() {
  python3 - "$work/$1.txt" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
p99 = [r[2] for r in rows]
print(f"{med[0]:.0f} {med[1]:.2f} {med[2]:.2f} {min(p99):.2f}–{max(p99):.2f}")
PY
}
# cpu NAME: median "control-plane% emulator%" over the rounds
cpu() { python3 -c "import statistics, sys; rows = [l.split() for l in open('$work/$1.cpu') if l.strip()]; print('/'.join(str(statistics.median(int(r[i]) for r in rows)) for i in (0, 1)))"; }
cpu_alone=$(cpu alone) cpu_steady=$(cpu steady) cpu_flood=$(cpu flood)
read -r base_rps base_p50 base_p99 base_range < <(median alone)
read -r steady_rps steady_p50 steady_p99 steady_range < <(median steady)
read -r flood_rps flood_p50 flood_p99 flood_range < <(median flood)
steady_intake=$(tail -1 "$work/steady.json")
flood_intake=$(tail -1 "$work/flood.json")
live_backlog=$(queue)
live_applied=$(psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM stripe_events WHERE status = 'applied' AND event_id LIKE 'evt_bench_b$$%'" "$db")
failed=$(psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM stripe_events WHERE attempts > 1" "$db")
while [ "$(queue)" -gt 0 ]; do sleep 0.2; done

reads() { curl -sf "$cp/metrics" | awk '/^tollgate_cp_stripe_requests_total\{operation="subscriptions.retrieve"/ {n += $2} END {print n + 0}'; }
# drain NAME COUNT SUBSCRIPTION-SQL: a backlog as an outage leaves it (COUNT events stored in one transaction, the
# n-th about SUBSCRIPTION-SQL), then the time until the workers have processed all of it. Prints
# "seconds stripe-reads cpu-ms-per-event".
drain() {
  local r0 t0 start
  r0=$(reads) t0=$(cpu_ticks) start=$(now)
  psql -q -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 "$db" -c "
    INSERT INTO stripe_events (event_id, event_type, payload, stripe_created, object_type, object_id)
    SELECT 'evt_drain_$1_' || n, 'customer.subscription.updated',
           jsonb_build_object('id', 'evt_drain_$1_' || n, 'object', 'event'), now(), 'subscription', $3
      FROM generate_series(1, $2) AS n, LATERAL (SELECT ('{$subs_csv}'::text[])) AS s(subs)"
  while [ "$(queue)" -gt 0 ]; do sleep 0.05; done
  python3 -c "import os, time; print(f'{time.time() - $start:.2f}', $(reads) - $r0, f'{($(cpu_ticks) - $t0) * 1000 / os.sysconf(\"SC_CLK_TCK\") / $2:.3f}')"
}
log "a backlog of $drain_events updates over the $orgs subscriptions (as an outage leaves it), drained"
read -r drain_s drain_reads drain_cpu < <(drain same "$drain_events" "subs[1 + n % array_length(subs, 1)]")
log "a backlog of $drain_distinct events about $drain_distinct subscriptions Stripe no longer has (one read each)"
read -r distinct_s distinct_reads distinct_cpu < <(drain distinct "$drain_distinct" "'sub_gone_' || n")

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

report=$(python3 - "$intake" "$steady_intake" "$flood_intake" "$steady_rps" "$steady_p50" "$steady_p99" "$live_backlog" "$live_applied" "$failed" "$drain_s" "$drain_events" "$drain_reads" "$drain_cpu" "$drain_distinct" "$distinct_s" "$distinct_reads" "$distinct_cpu" "$base_rps" "$base_p50" "$base_p99" \
  "$flood_rps" "$flood_p50" "$flood_p99" "$base_range|$cpu_alone" "$steady_range|$flood_range|$rounds|$cpu_steady|$cpu_flood" "$seconds" "$connections" "$orgs" \
  "$signup_up_ms" "$signup_down_ms" "$down_rps" "$down_p50" "$down_p99" "$waiting" "$outbox_drain_s" <<'PY'
import json, sys, os
(intake, sintake, fintake, srps, sp50, sp99, backlog, applied, failed, drain, dn, dreads, dcpu, xn, xs, xreads, xcpu, brps, bp50, bp99, frps, fp50, fp99, t0, t1, secs, conns, orgs,
 su_up, su_down, drps, dp50, dp99, waiting, odrain) = sys.argv[1:]
i, si, fi = (json.loads(x) for x in (intake, sintake, fintake))
srange, frange, rounds, csteady, cflood = t1.split("|")
workers = os.environ.get("TOLLGATE_STRIPE_WORKERS", "4")
t0, calone = t0.split("|")
print(f"""### webhooks ({secs} s, {conns} connections, {orgs} orgs)

| measure | value |
|---|---|
| intake flood | {i['per_second']:.0f} events/s, p50 {i['p50_ms']} ms, p99 {i['p99_ms']} ms, {i['errors']} errors of {i['sent']} |
| workers during the intake rounds ({workers} tasks, the emulator answering) | {int(applied)} of the rounds' events applied as they arrived, {int(backlog)} waiting when the last round ended, {int(failed)} retried |
| worker drain: {int(dn)} waiting updates of the {orgs} subscriptions | {drain} s = {int(dn)/max(float(drain), 0.01):,.0f} events/s, {dreads} Stripe reads (a read settles the waiting events about its object); {dcpu} ms control-plane CPU per event |
| worker drain: {int(xn)} events about {int(xn)} distinct (deleted) subscriptions | {xs} s = {int(xn)/max(float(xs), 0.01):,.0f} events/s, {xreads} Stripe reads (one per event: the emulator's pace); {xcpu} ms control-plane CPU per event |
| quota/check alone (median of {rounds} interleaved rounds) | {brps} req/s, p50 {bp50} ms, p99 {bp99} ms (rounds {t0}); CPU control plane/emulator {calone} % of a core |
| quota/check beside intake at a steady {si['per_second']:.0f} events/s (intake p99 {si['p99_ms']} ms, load generator CPU {si.get('cpu_ms', 0) / 10 / si['seconds']:.0f} %, last round) | {srps} req/s, p50 {sp50} ms, p99 {sp99} ms (rounds {srange}); CPU {csteady} % |
| quota/check beside an intake flood ({fi['per_second']:.0f} events/s, p99 {fi['p99_ms']} ms, load generator CPU {fi.get('cpu_ms', 0) / 10 / fi['seconds']:.0f} %, last round) | {frps} req/s, p50 {fp50} ms, p99 {fp99} ms (rounds {frange}); CPU {cflood} % |
| sign-up (org, customer, trial) with Stigg up / down | {su_up} ms / {su_down} ms per org |
| quota/check with Stigg down, its outbox retrying | {drps} req/s, p50 {dp50} ms, p99 {dp99} ms |
| outbox drain when Stigg returns | {waiting} operations in {odrain} s (retries wait at most 2 s here) |
""")
PY
)
echo "$report"
{ echo; echo "$(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || true)"; echo "$report"; } >>bench/results.md

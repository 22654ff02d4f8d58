#!/usr/bin/env bash
# The control plane's metering endpoints under load: quota/check and entitlements.read with an org API key,
# usage/record with a distinct request_id per call, each with wrk at 32 connections, and quota/check from one
# client (its p50 is the latency a caller sees).
#
#   bash bench/metering.sh [seconds=8] [connections=32]
#
# Prints a table and appends it to bench/results.md. Numbers are measured here, never asserted in tests.
# TOLLGATE_SKIP_BUILD=1 uses the release binary already built; CARGO_PROFILE=perf builds the quicker perf profile;
# TOLLGATE_CP_WRAP prefixes the control plane (e.g. "valgrind --tool=callgrind" to profile it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

seconds=${1:-8} connections=${2:-32}
profile=${CARGO_PROFILE:-release}
ensure_build_tools; ensure_postgres; ensure_redis
command -v wrk >/dev/null || apt_install wrk
target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${TOLLGATE_SKIP_BUILD:-}" ]; then
  log "building the control plane ($profile)"
  cargo build --profile "$profile" --locked -j "${CARGO_BUILD_JOBS:-2}" --bin tollgate-control-plane
fi
bin="$target_dir/$profile/tollgate-control-plane"

db="tg_bench_metering_$$" cp_port=$(free_port) work=$(mktemp -d)
admin="tgop_bench_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres >/dev/null
cat >"$work/plans.toml" <<'TOML'
trial_days = 14
unsubscribed = "pro"
[plans.trial]
included = { api_call = 1000 }
[plans.pro]
price = "plan_pro_m"
included = { api_call = 1000000000000 }
TOML

env -i PATH="$PATH" HOME="$HOME" \
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:6379" \
  TOLLGATE_REDIS_NAMESPACE="bm$$" TOLLGATE_PLANS="$work/plans.toml" TOLLGATE_ADMIN_TOKEN="$admin" \
  CLERK_JWKS_URL="http://127.0.0.1:9/jwks.json" TOLLGATE_CP_LISTEN="127.0.0.1:$cp_port" \
  TOLLGATE_DATABASE_MAX_CONNECTIONS="${TOLLGATE_DATABASE_MAX_CONNECTIONS:-16}" \
  TOLLGATE_LOG_FORMAT=json RUST_LOG=warn ${TOLLGATE_CP_WRAP:-} "$bin" >"$work/cp.log" 2>&1 &
pids+=($!)
cp_pid=$!
wait_port "$cp_port" "the control plane"
cp="http://127.0.0.1:$cp_port"
api() { curl -sf -H "Authorization: Bearer $admin" -H 'content-type: application/json' "$cp$1" -d "$2"; }
api /api/orgs.create '{"orgId":"org_bench","name":"Bench","ownerUserId":"user_bench"}' >/dev/null
key=$(api /api/keys.create '{"orgId":"org_bench","name":"bench"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

cat >"$work/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"metric":"api_call"}'
LUA
cat >"$work/record.lua" <<'LUA'
local n = 0
local thread_id = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  local body = string.format(
    '{"metric":"api_call","value":1,"occurredAt":"%s","request_id":"bench-%s-%d"}',
    os.date("!%Y-%m-%dT%H:%M:%SZ"), thread_id, n)
  -- Headers passed to wrk.format replace wrk.headers (and with them the -H key): set them there instead.
  wrk.headers["Content-Type"] = "application/json"
  return wrk.format("POST", nil, nil, body)
end
LUA

# run NAME CONNECTIONS PATH [SCRIPT]: "req/s p50 p99 cpu_us_per_request" of the control plane
run() {
  local conns=$1 path=$2 script=${3:-}
  local t0 t1
  t0=$(awk '{print $14 + $15}' "/proc/$cp_pid/stat")
  wrk -t1 -c"$conns" -d"${seconds}s" --latency ${script:+-s "$script"} -H "X-Api-Key: $key" "$cp$path" >"$work/wrk.txt"
  t1=$(awk '{print $14 + $15}' "/proc/$cp_pid/stat")
  python3 - "$work/wrk.txt" "$t0" "$t1" <<'PY'
import os, re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
reqs = int(re.search(r"(\d+) requests in", t).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
def ms(p):
    m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", t)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
cpu_us = (int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / os.sysconf("SC_CLK_TCK") / max(reqs, 1)
print(f"{rps:.0f} {ms(50):.2f} {ms(99):.2f} {cpu_us:.0f} {bad.group(1) if bad else 0}")
PY
}

# One call of each kind first: numbers of refusals would mean nothing.
probe() {
  local out code
  out=$(curl -s -w '\n%{http_code}' -H "X-Api-Key: $key" -H 'content-type: application/json' "$cp$1" ${2:+-d "$2"})
  code=${out##*$'\n'}
  [ "${code:0:1}" = 2 ] || { echo "$1 answered $code: ${out%$'\n'*}" >&2; exit 1; }
}
probe /api/quota/check '{"metric":"api_call"}'
probe /api/me/entitlements.read
probe /api/usage/record "{\"metric\":\"api_call\",\"value\":1,\"occurredAt\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"request_id\":\"probe-$$\"}"

log "warming up"
run 4 /api/quota/check "$work/check.lua" >/dev/null
log "quota/check (${seconds}s, $connections connections)"
read -r check_rps check_p50 check_p99 check_cpu check_bad < <(run "$connections" /api/quota/check "$work/check.lua")
log "entitlements.read"
read -r ent_rps ent_p50 ent_p99 ent_cpu ent_bad < <(run "$connections" /api/me/entitlements.read)
log "usage/record (distinct request ids)"
read -r rec_rps rec_p50 rec_p99 rec_cpu rec_bad < <(run "$connections" /api/usage/record "$work/record.lua")
log "quota/check from one client"
read -r one_rps one_p50 one_p99 one_cpu one_bad < <(run 1 /api/quota/check "$work/check.lua")
recorded=$(psql -h 127.0.0.1 -U postgres -tAc "SELECT count(*) FROM usage_events" "$db")

report=$(cat <<MD
### metering endpoints ($seconds s, $connections connections, $profile build)

| endpoint | req/s | p50 ms | p99 ms | CPU µs/request | non-2xx |
|---|---|---|---|---|---|
| \`POST /api/quota/check\` | $check_rps | $check_p50 | $check_p99 | $check_cpu | $check_bad |
| \`GET /api/me/entitlements.read\` | $ent_rps | $ent_p50 | $ent_p99 | $ent_cpu | $ent_bad |
| \`POST /api/usage/record\` (distinct ids; $recorded stored) | $rec_rps | $rec_p50 | $rec_p99 | $rec_cpu | $rec_bad |
| \`POST /api/quota/check\`, one client | $one_rps | $one_p50 | $one_p99 | $one_cpu | $one_bad |
MD
)
echo "$report"
{ echo; echo "$(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD 2>/dev/null || true)"; echo "$report"; } >>bench/results.md

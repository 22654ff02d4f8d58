#!/usr/bin/env bash
# Load benchmark of tollgate-proxy with wrk, all in one go: interleaved rounds of
#   direct           the upstream (nginx, a fixed ~100-byte 200) on /v1/x, no proxy
#   proxy-unmetered  tollgate-proxy on /free/x, a route that is not metered
#   proxy-metered    tollgate-proxy on /v1/x, every request checked and consumed in Redis (cost 1)
# Prints req/s, p50/p99, CPU µs per request of the proxy and of Redis, the metered/unmetered ratios, and appends the
# table to bench/results.md. Goal on the 2-core dev machine: metered keeps ≥ 90 % of the unmetered throughput and adds
# ≤ 0.3 ms at p99. Numbers are measured and reported here, never asserted in tests.
#
# usage: bash bench/proxy-load.sh [rounds=3] [seconds=8] [connections=32]
# environment:
#   TOLLGATE_SKIP_BUILD=1    do not run `cargo build --release` (use the binaries already built)
#   TOLLGATE_BIN_DIR=<dir>   where tollgate-control-plane and tollgate-proxy are (default <checkout>/target/release,
#                            or $CARGO_TARGET_DIR/release)
#   TOLLGATE_PROXY_THREADS   passed through to the proxy when set
# Everything it needs is started here and stopped on exit: PostgreSQL (shared, started or installed when missing) with a
# fresh database dropped on exit, a private redis-server on a free port, an nginx upstream, the control plane and the
# proxy. wrk and nginx are installed with apt when missing.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
rounds=${1:-3} secs=${2:-8} conns=${3:-32}
for v in "$rounds" "$secs" "$conns"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "proxy-load.sh: arguments must be positive integers, got '$v'" >&2; usage >&2; exit 2; }
done

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/services.sh
source "$(dirname "$0")/../scripts/lib/services.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

die() { log "$*"; exit 1; }

# --- tools and shared services -------------------------------------------------------------------------------------
command -v wrk >/dev/null || apt_install wrk
nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || [ ! -x /usr/sbin/nginx ] || nginx_bin=/usr/sbin/nginx   # not on a non-root user's PATH
if [ -z "$nginx_bin" ]; then apt_install nginx; nginx_bin=$(command -v nginx || echo /usr/sbin/nginx); fi
command -v curl >/dev/null || apt_install curl
command -v pgrep >/dev/null || apt_install procps
ensure_postgres
ensure_redis   # also installs redis-server; the bench itself uses a private instance, never 6379

if [ "${TOLLGATE_SKIP_BUILD:-}" != 1 ]; then
  ensure_build_tools
  log "building release binaries (TOLLGATE_SKIP_BUILD=1 skips this)"
  (cd "$root" && cargo build --release --locked -j2 --bin tollgate-control-plane --bin tollgate-proxy)
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
bin=${TOLLGATE_BIN_DIR:-$target_dir/release}
for b in tollgate-control-plane tollgate-proxy; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: build it (cargo build --release) or set TOLLGATE_BIN_DIR"
done

# --- everything started below is stopped on exit -------------------------------------------------------------------
dir=$(mktemp -d /tmp/tg-bench-XXXX)
db="tg_bench_$(date +%s)_$$"
db_made=
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  # newest first: proxy, control plane, nginx, Redis
  [ ${#pids[@]} = 0 ] || stop_pids "${pids[@]}"
  wait 2>/dev/null
  if [ -n "$db_made" ]; then
    psql -h 127.0.0.1 -U postgres -qAtc "drop database if exists $db with (force)" >/dev/null 2>&1 ||
      log "could not drop database $db"
  fi
  if [ "$rc" = 0 ]; then rm -rf "$dir"; else log "logs kept in $dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- upstream: nginx, a fixed 200 (the same config as shared/perf) -------------------------------------------------
UP=$(free_port)
sed -e "s|@DIR@|$dir|g; s|@UPSTREAM@|$UP|g" "$here/nginx-upstream.conf" >"$dir/nginx-upstream.conf"
"$nginx_bin" -e "$dir/upstream.err" -p "$dir" -c "$dir/nginx-upstream.conf" >"$dir/nginx.log" 2>&1 &
nginx_pid=$!; pids+=("$nginx_pid")

# --- a private Redis, so other users of 6379 do not disturb the numbers --------------------------------------------
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$dir/redis.log" 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
wait_port "$UP" "the nginx upstream" || { cat "$dir/nginx.log" "$dir/upstream.err" >&2 2>/dev/null; exit 1; }
wait_port "$RP" "the private Redis" || { cat "$dir/redis.log" >&2; exit 1; }

# --- a fresh database, plans and routes as in shared/perf/tollgate.sh ----------------------------------------------
psql -h 127.0.0.1 -U postgres -qAtc "create database $db" >/dev/null
db_made=1
# `pro` is the plan of an org without a subscription, so org_bench meters without Stripe; its quota never runs out
cat >"$dir/plans.toml" <<TOML
trial_days = 14
unsubscribed = "pro"
[plans.trial]
included = { api_call = 1000 }
[plans.starter]
price = "plan_starter_m"
included = { api_call = 100000 }
[plans.growth]
price = "plan_growth_m"
included = { api_call = 1000000 }
[plans.pro]
price = "plan_pro_m"
included = { api_call = 1000000000000, tokens = 50000000 }
TOML
cat >"$dir/routes.toml" <<TOML
default = { metric = "api_call", cost = 1 }
[[routes]]
prefix = "/free"
metered = false
TOML

CP=$(free_port) PP=$(free_port) MP=$(free_port)
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" REDIS_URL="redis://127.0.0.1:$RP" \
  TOLLGATE_PLANS="$dir/plans.toml" TOLLGATE_ROUTES="$dir/routes.toml" TOLLGATE_ADMIN_TOKEN="tgop_bench_$$"
export_unreached

# --- control plane (migrates the database), org and API key --------------------------------------------------------
TOLLGATE_CP_LISTEN="127.0.0.1:$CP" "$bin/tollgate-control-plane" >"$dir/control-plane.log" 2>&1 &
cp_pid=$!; pids+=("$cp_pid")
wait_http "http://127.0.0.1:$CP/healthz" "$cp_pid" "the control plane" "$dir/control-plane.log"
auth=(-H "Authorization: Bearer $TOLLGATE_ADMIN_TOKEN" -H "Content-Type: application/json")
curl -sSf "${auth[@]}" -d '{"orgId":"org_bench","name":"bench","ownerUserId":"user_bench"}' \
  "http://127.0.0.1:$CP/api/orgs.create" >/dev/null || { tail -n 20 "$dir/control-plane.log" >&2; die "orgs.create failed"; }
key=$(curl -sSf "${auth[@]}" -d '{"orgId":"org_bench","name":"bench"}' "http://127.0.0.1:$CP/api/keys.create" |
  python3 -c 'import json,sys;print(json.load(sys.stdin)["key"])') ||
  { tail -n 20 "$dir/control-plane.log" >&2; die "keys.create failed"; }

# --- the proxy -------------------------------------------------------------------------------------------------------
TOLLGATE_PROXY_LISTEN="127.0.0.1:$PP" TOLLGATE_UPSTREAM="http://127.0.0.1:$UP" TOLLGATE_METRICS_LISTEN="127.0.0.1:$MP" \
  "$bin/tollgate-proxy" >"$dir/proxy.log" 2>&1 &
proxy_pid=$!; pids+=("$proxy_pid")
wait_http "http://127.0.0.1:$MP/healthz" "$proxy_pid" "the proxy" "$dir/proxy.log"
wait_port "$PP" "the proxy" || { tail -n 20 "$dir/proxy.log" >&2; exit 1; }

names=(direct proxy-unmetered proxy-metered)
declare -A url cpu_of
url[direct]="http://127.0.0.1:$UP/v1/x" cpu_of[direct]=$nginx_pid
url[proxy-unmetered]="http://127.0.0.1:$PP/free/x" cpu_of[proxy-unmetered]=$proxy_pid
url[proxy-metered]="http://127.0.0.1:$PP/v1/x" cpu_of[proxy-metered]=$proxy_pid

# one request each first: a target that does not answer 200 would only produce meaningless numbers
metered_sent=0
for name in "${names[@]}"; do
  code=$(curl -s -o "$dir/check.body" -D "$dir/check.head" -w '%{http_code}' -H "X-Api-Key: $key" "${url[$name]}") ||
    code=000
  if [ "$code" != 200 ]; then
    log "$name: ${url[$name]} answered $code, not 200"; cat "$dir/check.body" >&2 2>/dev/null || true; echo >&2
    tail -n 20 "$dir/proxy.log" >&2; exit 1
  fi
  if [ "$name" = proxy-metered ]; then
    metered_sent=1
    rl=$(grep -i '^ratelimit-' "$dir/check.head" | tr -d '\r' | paste -sd ' ' || true)
    log "metered route answers 200; ${rl:-no RateLimit-* headers}"
  fi
done

# CPU ticks (user + system) of a process and all its descendants (nginx's worker), from /proc/<pid>/stat
proc_tree() { local c; echo "$1"; for c in $(pgrep -P "$1" || true); do proc_tree "$c"; done; }
ticks() {
  local p t s=0
  for p in $(proc_tree "$1"); do
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
    s=$((s + ${t:-0}))
  done
  echo "$s"
}
# parse_wrk < wrk output: "req/s p50 p99 non-2xx requests socket-errors" (latencies as wrk prints them: 238.00us, 1.31ms)
parse_wrk() {
  awk '/Requests\/sec/ {rps = $2} $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2} /Non-2xx/ {bad = $NF}
       / requests in / {reqs = $1} /Socket errors/ {gsub(",", ""); err = $4 + $6 + $8 + $10}
       END {if (rps == "" || p50 == "" || p99 == "" || reqs == "") exit 1
            print rps, p50, p99, bad + 0, reqs, err + 0}'
}

log "warm-up: 1 s of wrk on each target"
for name in "${names[@]}"; do
  out=$(wrk -t1 -c"$conns" -d1s -H "X-Api-Key: $key" "${url[$name]}") || die "wrk failed against $name (warm-up)"
  if [ "$name" = proxy-metered ]; then metered_sent=$((metered_sent + $(awk '/ requests in / {print $1}' <<<"$out"))); fi
done

log "$rounds interleaved rounds × ${secs}s, wrk -t1 -c$conns; proxy threads: ${TOLLGATE_PROXY_THREADS:-default}"
: >"$dir/raw"
for r in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    a0=$(ticks "${cpu_of[$name]}") r0=$(ticks "$redis_pid")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -H "X-Api-Key: $key" "${url[$name]}") || die "wrk failed against $name"
    a1=$(ticks "${cpu_of[$name]}") r1=$(ticks "$redis_pid")
    printf '%s\n' "$out" >"$dir/wrk.$name.$r.txt"
    alive "${cpu_of[$name]}" || { tail -n 20 "$dir/proxy.log" >&2; die "$name: the process under test exited"; }
    parsed=$(parse_wrk <<<"$out") || { printf '%s\n' "$out" >&2; die "cannot parse the wrk output above"; }
    read -r rps p50 p99 bad reqs errs <<<"$parsed"
    [ "$reqs" -gt 0 ] || die "$name: wrk completed no request"
    if [ "$name" = proxy-metered ]; then metered_sent=$((metered_sent + reqs)); fi
    echo "$name $r $rps $p50 $p99 $bad $reqs $((a1 - a0)) $((r1 - r0)) $errs" >>"$dir/raw"
    printf '  round %s/%s  %-16s %10s req/s  p50 %-9s p99 %-9s non-2xx %s\n' "$r" "$rounds" "$name" "$rps" "$p50" "$p99" "$bad"
  done
done

# --- summary ---------------------------------------------------------------------------------------------------------
python3 - "$dir/raw" "$(getconf CLK_TCK)" "$rounds" "$secs" "$conns" "${TOLLGATE_PROXY_THREADS:-default}" \
  >"$dir/summary.md" <<'PY'
import os, statistics, sys
raw, hz, rounds, secs, conns, threads = sys.argv[1], float(sys.argv[2]), *sys.argv[3:]

def ms(v):
    for suf, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(suf):
            return float(v[: -len(suf)]) * k
    return float(v)

rows = {}
for line in open(raw):
    name, rnd, rps, p50, p99, bad, reqs, pt, rt, errs = line.split()
    reqs = int(reqs)
    rows.setdefault(name, []).append(dict(
        rps=float(rps), p50=ms(p50), p99=ms(p99), bad=int(bad), errs=int(errs),
        cpu=int(pt) / hz * 1e6 / reqs, rcpu=int(rt) / hz * 1e6 / reqs))
med = lambda v, k: statistics.median(x[k] for x in v)
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"wrk -t1 -c{conns}, {rounds} interleaved rounds × {secs} s; {os.cpu_count()} cores ({model}); "
      f"proxy threads: {threads}\n")
print("| target | req/s median | min–max | p50 ms | p99 ms | CPU µs/req proxy | CPU µs/req Redis | non-2xx |")
print("|---|---|---|---|---|---|---|---|")
for name, v in rows.items():
    lo, hi = min(x["rps"] for x in v), max(x["rps"] for x in v)
    print(f"| {name} | {med(v, 'rps'):,.0f} | {lo:,.0f}–{hi:,.0f} | {med(v, 'p50'):.3f} | {med(v, 'p99'):.3f} | "
          f"{med(v, 'cpu'):.1f} | {med(v, 'rcpu'):.1f} | {sum(x['bad'] for x in v)} |")
m, u = rows["proxy-metered"], rows["proxy-unmetered"]
print(f"\nmetered / unmetered throughput: {med(m, 'rps') / med(u, 'rps'):.2f} (goal ≥ 0.90)")
print(f"metered − unmetered p99: {med(m, 'p99') - med(u, 'p99'):+.3f} ms (goal ≤ 0.300)")
print("per round: throughput ratio " + " ".join(f"{a['rps'] / b['rps']:.2f}" for a, b in zip(m, u)) +
      "; p99 difference ms " + " ".join(f"{a['p99'] - b['p99']:+.3f}" for a, b in zip(m, u)))
errs = sum(x["errs"] for v in rows.values() for x in v)
print("\nCPU µs/req: CPU time per request served of the process under test (for direct, the nginx upstream's own; "
      "for the proxy rows, tollgate-proxy's) and of the private Redis." +
      (f" wrk reported {errs} socket errors." if errs else ""))
PY
echo
cat "$dir/summary.md"

rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$root" status --porcelain --untracked-files=no -- . ':(exclude)bench/results.md' 2>/dev/null)" ]; then
  rev="$rev (with uncommitted changes)"
fi
results="$here/results.md"
if [ ! -f "$results" ]; then
  printf '%s\n\n%s\n' "# tollgate-proxy load results" \
    "Appended by each run of \`bash bench/proxy-load.sh\` (see bench/README.md); newest last." >"$results"
fi
{ printf '\n## %s — %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$rev"; cat "$dir/summary.md"; } >>"$results"
log "appended to ${results#"$root"/}"

# --- were the metered requests metered? The proxy's own counters say so (GET /api/me/entitlements.read is not needed
# and not called: the bench depends on nothing but the proxy's metrics listener and the private Redis) -------------
metrics=$(curl -sf "http://127.0.0.1:$MP/metrics" || true)
decisions=$(grep '^tollgate_proxy_quota_decisions_total' <<<"$metrics" || true)
echo
if [ -n "$decisions" ]; then
  echo "tollgate_proxy_quota_decisions_total on the proxy's /metrics:"
  awk '{print "  " $0}' <<<"$decisions"
  echo "  (sum $(awk '{s += $NF} END {printf "%.0f", s}' <<<"$decisions"); metered requests completed by curl and wrk:" \
    "$metered_sent, plus those still in flight when each wrk run ended)"
else
  log "no tollgate_proxy_quota_decisions_total line on http://127.0.0.1:$MP/metrics: nothing shows the metered requests were metered"
fi
echo "private Redis: $(redis-cli -p "$RP" dbsize 2>/dev/null || echo '?') keys"
keys=$(redis-cli -p "$RP" --scan 2>/dev/null | head -n 5 || true)
for k in $keys; do
  if [ "$(redis-cli -p "$RP" type "$k" || true)" = string ]; then echo "  $k = $(redis-cli -p "$RP" get "$k" || true)"; else echo "  $k"; fi
done
if [ -s "$dir/proxy.log" ]; then
  echo "proxy log (RUST_LOG=warn): $(wc -l <"$dir/proxy.log") lines; last ones:"
  tail -n 5 "$dir/proxy.log" | sed 's/^/  /'
fi

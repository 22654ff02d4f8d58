#!/usr/bin/env bash
# The scale benchmark (issue 21): 100,000 orgs with subscriptions over all plans and 1,000,000 API keys seeded in
# bulk, two proxies and a control plane, wrk traffic with keys spread Zipf-like over 10,000 active orgs (2 % of
# requests with keys not yet cached). For 1,000, 10,000 and 100,000 cached orgs it reports each proxy's RSS,
# PostgreSQL statements per second from the proxies idle and under load, p50/p99 of a warm and of a cold request,
# how long a plan change takes to show at both proxies (100 changes) and how long a revocation takes to show.
# Numbers are measured and reported, never asserted in tests.
#
# usage: bash bench/scale.sh
# environment:
#   TOLLGATE_SCALE_AFTER=<dir>    tollgate-proxy of this checkout (default target/release; built when missing)
#   TOLLGATE_SCALE_BEFORE=<dir>   also run a tollgate-proxy from before issue 21 (polling every org each second),
#                                 e.g. built at 7694643; the two designs run one after the other on the same data
#   TOLLGATE_SCALE_CP=<dir>       tollgate-control-plane (default: target/release, else target/debug)
#   SCALE_ORGS, SCALE_KEYS_PER_ORG, SCALE_LEVELS   100000, 10, 1000,10000,100000
#   SCALE_IDLE, SCALE_LOAD, SCALE_CONNS             seconds idle (10) and under load (20), wrk connections (16)
#   SCALE_CHANGES                                   plan changes per level (100)
# Everything is started here and stopped on exit: a private PostgreSQL 15 cluster (pg_createcluster, with
# pg_stat_statements, dropped on exit), a private redis-server, an nginx upstream, the control plane, the proxies.
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/services.sh
source "$root/scripts/lib/services.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"
die() { log "$*"; exit 1; }

command -v wrk >/dev/null || apt_install wrk
nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || [ ! -x /usr/sbin/nginx ] || nginx_bin=/usr/sbin/nginx
if [ -z "$nginx_bin" ]; then apt_install nginx; nginx_bin=$(command -v nginx || echo /usr/sbin/nginx); fi
command -v curl >/dev/null || apt_install curl
ensure_postgres   # the PostgreSQL packages (pg_createcluster); the benchmark runs its own cluster
ensure_redis
ensure_python

target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
after=${TOLLGATE_SCALE_AFTER:-$target_dir/release}
if [ ! -x "$after/tollgate-proxy" ]; then
  ensure_build_tools
  log "building the release proxy"
  (cd "$root" && cargo build --release --locked -j2 --bin tollgate-proxy)
fi
cpdir=${TOLLGATE_SCALE_CP:-}
if [ -z "$cpdir" ]; then
  if [ -x "$target_dir/release/tollgate-control-plane" ]; then cpdir=$target_dir/release; else cpdir=$target_dir/debug; fi
fi
if [ ! -x "$cpdir/tollgate-control-plane" ]; then
  (cd "$root" && cargo build --locked -j2 --bin tollgate-control-plane)
fi
before=${TOLLGATE_SCALE_BEFORE:-}
[ -z "$before" ] || [ -x "$before/tollgate-proxy" ] || die "$before/tollgate-proxy is missing"

orgs=${SCALE_ORGS:-100000} kpo=${SCALE_KEYS_PER_ORG:-10} levels=${SCALE_LEVELS:-1000,10000,100000}

venv=$target_dir/bench-py
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
  log "creating the benchmark's virtualenv in $venv (psycopg)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'psycopg[binary]==3.2.13'
fi

dir=$(mktemp -d /tmp/tg-scale-XXXX)
cluster="tgscale$$"
cluster_made=
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ ${#pids[@]} = 0 ] || stop_pids "${pids[@]}"
  wait 2>/dev/null
  if [ -n "$cluster_made" ]; then as_root pg_dropcluster --stop 15 "$cluster" >/dev/null 2>&1 || log "could not drop cluster $cluster"; fi
  if [ "$rc" = 0 ]; then rm -rf "$dir"; else log "logs kept in $dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- a private PostgreSQL cluster with pg_stat_statements, so statements can be counted per role ------------------
PG=$(free_port)
log "PostgreSQL cluster $cluster on port $PG"
as_root pg_createcluster -p "$PG" -o shared_preload_libraries=pg_stat_statements -o max_connections=200 \
  -o shared_buffers=512MB -o synchronous_commit=off -o pg_stat_statements.track=top 15 "$cluster" -- \
  --auth=trust >"$dir/pg_createcluster.log" 2>&1 || { cat "$dir/pg_createcluster.log" >&2; die "pg_createcluster failed"; }
cluster_made=1
as_root pg_ctlcluster 15 "$cluster" start
wait_port "$PG" "the benchmark's PostgreSQL"
psql -h 127.0.0.1 -p "$PG" -U postgres -qAt >/dev/null <<SQL
CREATE DATABASE tollgate;
CREATE ROLE tg_proxy LOGIN SUPERUSER;
SQL
psql -h 127.0.0.1 -p "$PG" -U postgres -d tollgate -qAtc "CREATE EXTENSION pg_stat_statements" >/dev/null
dsn="postgres://postgres@127.0.0.1:$PG/tollgate"

UP=$(free_port)
sed -e "s|@DIR@|$dir|g; s|@UPSTREAM@|$UP|g" "$here/nginx-upstream.conf" >"$dir/nginx-upstream.conf"
"$nginx_bin" -e "$dir/upstream.err" -p "$dir" -c "$dir/nginx-upstream.conf" >"$dir/nginx.log" 2>&1 &
pids+=("$!")
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$dir/redis.log" 2>&1 &
pids+=("$!")
wait_port "$UP" "the nginx upstream"
wait_port "$RP" "the private Redis"

# Plans whose quotas never run out, each with its own size so a proxy's RateLimit-Limit names the plan in force.
cat >"$dir/plans.toml" <<TOML
trial_days = 14
unsubscribed = "trial"
[plans.trial]
included = { api_call = 900000000000 }
[plans.starter]
price = "price_starter"
included = { api_call = 1000000000000 }
[plans.growth]
price = "price_growth"
included = { api_call = 2000000000000 }
[plans.pro]
price = "price_pro"
included = { api_call = 3000000000000 }
TOML
cat >"$dir/routes.toml" <<TOML
default = { metric = "api_call", cost = 1 }
TOML
token="tgop_scale_$$"
export REDIS_URL="redis://127.0.0.1:$RP" TOLLGATE_PLANS="$dir/plans.toml" TOLLGATE_ROUTES="$dir/routes.toml" \
  TOLLGATE_ADMIN_TOKEN="$token"
export_unreached

CP=$(free_port)
DATABASE_URL=$dsn TOLLGATE_CP_LISTEN="127.0.0.1:$CP" "$cpdir/tollgate-control-plane" >"$dir/control-plane.log" 2>&1 &
cp_pid=$!; pids+=("$cp_pid")
wait_http "http://127.0.0.1:$CP/healthz" "$cp_pid" "the control plane" "$dir/control-plane.log"

log "seeding $orgs orgs with subscriptions and $((orgs * kpo)) keys"
t0=$(date +%s)
psql -h 127.0.0.1 -p "$PG" -U postgres -d tollgate -q -v orgs="$orgs" -v keys="$kpo" -f "$here/scale/seed.sql"
log "seeded in $(($(date +%s) - t0)) s"

out=$dir/results.jsonl
run_design() { # name index bindir
  local name=$1 index=$2 bin=$3 p1 p2 m1 m2 a b
  redis-cli -p "$RP" flushall >/dev/null
  psql -h 127.0.0.1 -p "$PG" -U postgres -d tollgate -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
  p1=$(free_port) p2=$(free_port) m1=$(free_port) m2=$(free_port)
  DATABASE_URL="postgres://tg_proxy@127.0.0.1:$PG/tollgate" TOLLGATE_PROXY_THREADS=1 \
    TOLLGATE_PROXY_LISTEN="127.0.0.1:$p1" TOLLGATE_METRICS_LISTEN="127.0.0.1:$m1" TOLLGATE_UPSTREAM="http://127.0.0.1:$UP" \
    "$bin/tollgate-proxy" >"$dir/proxy-$name-a.log" 2>&1 &
  a=$!; pids+=("$a")
  DATABASE_URL="postgres://tg_proxy@127.0.0.1:$PG/tollgate" TOLLGATE_PROXY_THREADS=1 \
    TOLLGATE_PROXY_LISTEN="127.0.0.1:$p2" TOLLGATE_METRICS_LISTEN="127.0.0.1:$m2" TOLLGATE_UPSTREAM="http://127.0.0.1:$UP" \
    "$bin/tollgate-proxy" >"$dir/proxy-$name-b.log" 2>&1 &
  b=$!; pids+=("$b")
  wait_http "http://127.0.0.1:$m1/healthz" "$a" "proxy $name a" "$dir/proxy-$name-a.log"
  wait_http "http://127.0.0.1:$m2/healthz" "$b" "proxy $name b" "$dir/proxy-$name-b.log"
  wait_port "$p1" "proxy $name a"; wait_port "$p2" "proxy $name b"
  log "design '$name': proxies $a and $b ($bin)"
  "$venv/bin/python" "$here/scale/driver.py" measure --design "$name" --design-index "$index" \
    --proxies "127.0.0.1:$p1,127.0.0.1:$p2" --pids "$a,$b" --dsn "$dsn" --cp-url "http://127.0.0.1:$CP" \
    --token "$token" --levels "$levels" --idle "${SCALE_IDLE:-10}" --load "${SCALE_LOAD:-20}" \
    --conns "${SCALE_CONNS:-16}" --changes "${SCALE_CHANGES:-100}" --out "$out"
  curl -s "http://127.0.0.1:$m1/metrics" >"$dir/metrics-$name-a.txt" || true
  stop_pids "$a" "$b"
}

i=0
if [ -n "$before" ]; then run_design before 0 "$before"; i=1; fi
run_design after "$i" "$after"

{
  echo
  echo "## $(date -u +%Y-%m-%d) scale, $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' (uncommitted changes)')"
  echo
  "$venv/bin/python" "$here/scale/driver.py" report --out "$out"
} | tee -a "$here/results.md"
cp "$out" "$here/scale/last-run.jsonl"
cp "$out.statements" "$here/scale/last-run.statements"
log "the proxies' statements by calls, per design and level: bench/scale/last-run.statements"

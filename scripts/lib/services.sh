# shellcheck shell=bash
# Shared by scripts/test and scripts/stack: make sure PostgreSQL and Redis answer on loopback, installing them with
# apt when missing, and that the build tools Pingora needs are present.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* with apt"
  if [ -z "${TOLLGATE_APT_UPDATED:-}" ]; then as_root apt-get update -qq; TOLLGATE_APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A free loopback port (the kernel's pick; free when printed).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 100); do port_open "$port" && return 0; sleep 0.1; done
  log "$what did not come up on 127.0.0.1:$port"; return 1
}

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
  local installed_now=
  if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; installed_now=1; fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$installed_now" ]; then
    # A fresh cluster asks for passwords on TCP; the tests and the demo connect as postgres on loopback only.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 0.2; done
  log "PostgreSQL did not become ready"; return 1
}

ensure_redis() {
  if port_open 6379; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379 Redis
}

# nginx, the real upstream of the request-target tests (tests/support/nginx.rs starts its own on a free port).
# apt's package starts a system nginx on port 80 where an init system runs; the tests never use that one.
ensure_nginx() {
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
}

ensure_build_tools() {
  command -v cmake >/dev/null || apt_install cmake
  command -v cc >/dev/null || apt_install build-essential
  command -v pkg-config >/dev/null || apt_install pkg-config
}

# A Python 3 that can make virtual environments (schemathesis and the Stripe emulator run in venvs under target/).
ensure_python() {
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
}

# Node.js (20 or later) and npm: the TypeScript client and the widgets build and test with them.
ensure_node() {
  if ! command -v node >/dev/null || ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)'; then
    apt_install nodejs
  fi
  command -v npm >/dev/null || apt_install npm
}

# The npm packages of clients/typescript, installed from its package-lock.json (again when the lock changes).
ensure_node_deps() {
  ensure_node
  local dir
  for dir in clients/typescript clients/widgets; do
    if [ ! -d "$dir/node_modules" ] || ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"; then
      log "npm ci in $dir"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
      cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
    fi
  done
}

# Debian's Chromium, the browser of the widgets' tests (driven by playwright-core).
ensure_chromium() {
  [ -x /usr/bin/chromium ] || apt_install chromium
}

# The Stripe emulator's virtualenv (target/py: localstripe and our extension's pins), rebuilt when
# tests/stripe/requirements.txt changes. The end-to-end tests start the emulator from it.
ensure_stripe_venv() {
  local venv="${CARGO_TARGET_DIR:-target}/py"
  if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/stripe/requirements.txt "$venv/requirements.txt"; then
    log "creating the Stripe emulator's virtualenv in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/stripe/requirements.txt
    cp tests/stripe/requirements.txt "$venv/requirements.txt"
  fi
}

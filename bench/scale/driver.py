#!/usr/bin/env python3
"""The scale benchmark's measurements (bench/scale.sh starts everything and calls this).

`measure` runs one design (one pair of proxies already started) through the levels of cached orgs and appends one
JSON line per level to the results file; `report` prints the results as markdown. See bench/README.md, "Scale".
"""

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
# Quotas of the benchmark's plans (bench/scale.sh writes them): a proxy's RateLimit-Limit names the plan in force.
LIMITS = {"starter": 1_000_000_000_000, "growth": 2_000_000_000_000}
PAD = "x" * 33


def key(org, j):
    return f"tg_s{org:07d}k{j}{PAD}"


def log(msg):
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Proxy:
    def __init__(self, addr, pid):
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        self.pid = int(pid)

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def get(conn, k):
    """One request with key k on a kept-alive connection: (status, RateLimit-Limit or None, seconds)."""
    t = time.perf_counter()
    conn.request("GET", "/v1/x", headers={"X-Api-Key": k})
    r = conn.getresponse()
    r.read()
    return r.status, r.getheader("RateLimit-Limit"), time.perf_counter() - t


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def queries(db):
    """Statements the proxies ran (role tg_proxy), and the rows they returned, so far."""
    row = db.execute(
        "SELECT coalesce(sum(s.calls), 0), coalesce(sum(s.rows), 0) FROM pg_stat_statements s "
        "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = 'tg_proxy'"
    ).fetchone()
    return int(row[0]), int(row[1])


def wrk(proxy, script, seconds, args, conns=16):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", os.path.join(HERE, script),
           f"http://{proxy.host}:{proxy.port}", "--"] + [str(a) for a in args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def parse_wrk(out):
    res = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            res["p50"] = wrk_ms(parts[1])
        elif parts[:1] == ["99%"]:
            res["p99"] = wrk_ms(parts[1])
        elif "Non-2xx" in line:
            res["non2xx"] = int(parts[-1])
        elif line.startswith("warmed"):
            res["warmed"] = int(parts[1])
        elif line.startswith("sent cold"):
            res["cold"], res["warm"] = int(parts[2]), int(parts[4])
    return res


def warm(proxies, first, last, j, refused_ok=0):
    """Every proxy answers one request with key j of each org in [first, last] (cold look-ups, two wrk at once)."""
    todo = {i: first for i in range(len(proxies))}
    while todo:
        running = {}
        for i, start in todo.items():
            secs = max(3, min(60, (last - start + 1) // 1500 + 2))
            running[i] = wrk(proxies[i], "warm.lua", secs, [start, last, j])
        nxt = {}
        for i, p in running.items():
            out = p.communicate()[0]
            res = parse_wrk(out)
            if "warmed" not in res:
                raise RuntimeError(f"warm: wrk said {out}")
            if res.get("non2xx", 0) > refused_ok:
                raise RuntimeError(f"warm: {res['non2xx']} answers were not 2xx: {out}")
            if todo[i] + res["warmed"] <= last:
                nxt[i] = todo[i] + res["warmed"]
        todo = nxt


def probe(proxies, stop, active, orgs, cold_j, warm_ms, cold_ms):
    """While the load runs: a warm request (key 0 of an active org) and a cold one (key cold_j, never sent before)
    to each proxy in turn, each timed alone on a kept-alive connection."""
    conns = [p.conn() for p in proxies]
    n = 0
    rnd = random.Random(7)
    while not stop.is_set() and n < orgs:
        n += 1
        for c in conns:
            s, _, t = get(c, key(rnd.randint(1, active), 0))
            if s == 200:
                warm_ms.append(t * 1e3)
            s, _, t = get(c, key(n, cold_j))
            if s == 200:
                cold_ms.append(t * 1e3)
        time.sleep(0.01)


def poll_until(proxy, k, done, deadline):
    """Seconds until proxy's answer for key k satisfies done(status, limit), from the call; None past deadline."""
    c = proxy.conn()
    try:
        while time.perf_counter() < deadline:
            s, limit, _ = get(c, k)
            if done(s, limit):
                return time.perf_counter()
            time.sleep(0.001)
        return None
    finally:
        c.close()


def plan_changes(db, proxies, active, count):
    """count plan changes (starter <-> growth) of active orgs that both proxies have cached, one at a time, written
    straight to `subscriptions` as the webhook worker or an operator would. A thread per proxy polls with the org's
    key from before the change; each change is timed from just before its COMMIT until the proxy's RateLimit-Limit
    shows the new plan's quota, at every proxy."""
    candidates = [n for n in range(1, active + 1) if n % 10 != 0 and n % 3 in (1, 2)]
    chosen = random.Random(count * active).sample(candidates, count)
    times, timeouts = [], 0
    for n in chosen:
        org = f"org_s{n}"
        (plan,) = db.execute(
            "SELECT s.plan_code FROM subscriptions s JOIN orgs o ON o.id = s.org_id WHERE o.clerk_org_id = %s",
            (org,)).fetchone()
        new = "growth" if plan == "starter" else "starter"
        want = str(LIMITS[new])
        seen = []
        start = threading.Barrier(len(proxies) + 1)
        deadline = time.perf_counter() + 30

        def run(p):
            c = p.conn()
            try:
                s, limit, _ = get(c, key(n, 0))
                if s != 200 or limit != str(LIMITS[plan]):
                    raise RuntimeError(f"org {n} at proxy {p.port} shows {s} {limit} before the change to {new}")
                start.wait()
                while time.perf_counter() < deadline:
                    s, limit, _ = get(c, key(n, 0))
                    if s == 200 and limit == want:
                        seen.append(time.perf_counter())
                        return
                    time.sleep(0.001)
                seen.append(None)
            finally:
                c.close()

        threads = [threading.Thread(target=run, args=(p,)) for p in proxies]
        for t in threads:
            t.start()
        start.wait()
        with db.transaction():
            db.execute(
                "UPDATE subscriptions s SET plan_code = %s, stripe_price_id = %s, stripe_updated_at = now() "
                "FROM orgs o WHERE o.id = s.org_id AND o.clerk_org_id = %s", (new, "price_" + new, org))
            t0 = time.perf_counter()
        for t in threads:
            t.join()
        for t in seen:
            if t is None:
                timeouts += 1
            else:
                times.append((t - t0) * 1e3)
    return times, timeouts


def top_statements(db, out):
    """The proxies' statements by calls since the design started (for the log: what the counts are made of)."""
    rows = db.execute(
        "SELECT s.calls, s.rows, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements s "
        "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = 'tg_proxy' ORDER BY s.calls DESC LIMIT 12").fetchall()
    with open(out, "a") as f:
        for calls, nrows, q in rows:
            f.write(f"{calls:>10} {nrows:>12}  {q}\n")


def revocations(db, proxies, cp_url, token, orgs):
    """Each key (key 1 of the given orgs) is cached at every proxy, revoked through POST /api/keys.revoke, and timed
    from the call until every proxy answers 401 for it."""
    host, port = cp_url.split("//", 1)[1].rsplit(":", 1)
    times, timeouts = [], 0
    for n in orgs:
        k = key(n, 1)
        for p in proxies:
            c = p.conn()
            s, _, _ = get(c, k)
            c.close()
            if s != 200:
                raise RuntimeError(f"revocation: key 1 of org {n} answered {s} before it was revoked")
        (key_id,) = db.execute("SELECT id FROM api_keys WHERE key_hash = sha256(convert_to(%s, 'UTF8'))",
                               (k,)).fetchone()
        cp = http.client.HTTPConnection(host, int(port), timeout=10)
        t0 = time.perf_counter()
        cp.request("POST", "/api/keys.revoke", body=json.dumps({"keyId": str(key_id)}),
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = cp.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"keys.revoke answered {r.status}: {body!r}")
        res = []
        ths = [threading.Thread(target=lambda p=p: res.append(
            poll_until(p, k, lambda s, _l: s == 401, t0 + 30))) for p in proxies]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        for t in res:
            if t is None:
                timeouts += 1
            else:
                times.append((t - t0) * 1e3)
    return times, timeouts


def measure(a):
    proxies = [Proxy(addr, pid) for addr, pid in zip(a.proxies.split(","), a.pids.split(","))]
    db = psycopg.connect(a.dsn, autocommit=True)
    levels = [int(x) for x in a.levels.split(",")]
    # keys no proxy has seen, per level: wrk's cold requests and the probe's cold requests use their own keys
    cold_wrk = {0: "2,3", 1: "5", 2: "7,8"}
    cold_probe = {0: 4, 1: 6, 2: 9}
    for p in proxies:
        c = p.conn()
        s, _, _ = get(c, key(1, 0))
        if s != 200:
            raise RuntimeError(f"proxy {p.port} answered {s} for a seeded key")
    rss_start = [p.rss_bytes() for p in proxies]
    cached = 0
    for li, n in enumerate(levels):
        log(f"{a.design}: warming {n} orgs at each proxy")
        warm(proxies, cached + 1, n, 0)
        cached = n
        active = min(n, 10_000)
        time.sleep(3)

        log(f"{a.design}: idle for {a.idle}s")
        q0, c0, t0 = queries(db), [p.cpu_seconds() for p in proxies], time.perf_counter()
        time.sleep(a.idle)
        q1, c1, t1 = queries(db), [p.cpu_seconds() for p in proxies], time.perf_counter()
        idle = {"qps": (q1[0] - q0[0]) / (t1 - t0), "rows_ps": (q1[1] - q0[1]) / (t1 - t0),
                "cpu": [(b - x) / (t1 - t0) for x, b in zip(c0, c1)]}

        log(f"{a.design}: load for {a.load}s")
        stop = threading.Event()
        warm_ms, cold_ms = [], []
        pr = threading.Thread(target=probe, args=(proxies, stop, active, n, cold_probe[li], warm_ms, cold_ms))
        q0, t0 = queries(db), time.perf_counter()
        runs = [wrk(p, "traffic.lua", a.load, [active, n, cold_wrk[li], 0.02, 11 + i], conns=a.conns)
                for i, p in enumerate(proxies)]
        pr.start()
        outs = [parse_wrk(r.communicate()[0]) for r in runs]
        q1, t1 = queries(db), time.perf_counter()
        stop.set()
        pr.join()
        load = {"qps": (q1[0] - q0[0]) / (t1 - t0), "rows_ps": (q1[1] - q0[1]) / (t1 - t0),
                "rps": sum(o.get("rps", 0) for o in outs),
                "p50": statistics.median([o["p50"] for o in outs]), "p99": max(o["p99"] for o in outs),
                "non2xx": sum(o.get("non2xx", 0) for o in outs), "cold_sent": sum(o.get("cold", 0) for o in outs),
                "warm_p50": pct(warm_ms, 50), "warm_p99": pct(warm_ms, 99), "warm_n": len(warm_ms),
                "cold_p50": pct(cold_ms, 50), "cold_p99": pct(cold_ms, 99), "cold_n": len(cold_ms)}
        rss = [p.rss_bytes() for p in proxies]

        log(f"{a.design}: {a.changes} plan changes")
        plan, plan_to = plan_changes(db, proxies, active, a.changes)
        log(f"{a.design}: {a.revocations} revocations")
        first = a.design_index * 500 + li * a.revocations + 1
        rev, rev_to = revocations(db, proxies, a.cp_url, a.token, range(first, first + a.revocations))
        row = {"design": a.design, "orgs": n, "keys_cached": n, "rss": rss, "rss_start": rss_start, "idle": idle,
               "load": load, "plan_p50": pct(plan, 50), "plan_p99": pct(plan, 99), "plan_max": max(plan or [0]),
               "plan_n": len(plan), "plan_timeouts": plan_to, "revoke_p50": pct(rev, 50),
               "revoke_max": max(rev or [0]), "revoke_n": len(rev), "revoke_timeouts": rev_to}
        if li == len(levels) - 1:
            log(f"{a.design}: a second key of each of the {n} orgs, for the bytes per cached key")
            warm(proxies, 1, n, 1, refused_ok=(a.design_index + 1) * len(levels) * a.revocations)
            row["rss_second_key"] = [p.rss_bytes() for p in proxies]
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(a.out + ".statements", "a") as f:
            f.write(f"{a.design} after {n} orgs: calls, rows, statement\n")
        top_statements(db, a.out + ".statements")
        log(f"{a.design} @ {n}: " + json.dumps(row))


def report(a):
    rows = [json.loads(line) for line in open(a.out) if line.strip()]
    mib = lambda b: f"{b / 2**20:.0f}"
    ms = lambda v: "–" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")
    print("| cached orgs (and keys) | design | proxy RSS MiB (each) | idle: proxy queries/s (rows/s) | idle proxy CPU "
          "(% of a core, each) | load: req/s | load: proxy queries/s (rows/s) | warm p50/p99 ms | cold p50/p99 ms "
          "| plan change shown at both proxies p50/p99/max ms (n) | revocation shown p50/max ms (n) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["orgs"], r["design"] != "before")):
        l, i = r["load"], r["idle"]
        print(f"| {r['orgs']:,} | {r['design']} | {' / '.join(mib(b) for b in r['rss'])} "
              f"| {i['qps']:.1f} ({i['rows_ps']:,.0f}) | {' / '.join(f'{c * 100:.1f}' for c in i['cpu'])} "
              f"| {l['rps']:,.0f} | {l['qps']:.0f} ({l['rows_ps']:,.0f}) "
              f"| {ms(l['warm_p50'])} / {ms(l['warm_p99'])} | {ms(l['cold_p50'])} / {ms(l['cold_p99'])} "
              f"| {ms(r['plan_p50'])} / {ms(r['plan_p99'])} / {ms(r['plan_max'])} ({r['plan_n']}"
              f"{', %d timed out' % r['plan_timeouts'] if r['plan_timeouts'] else ''}) "
              f"| {ms(r['revoke_p50'])} / {ms(r['revoke_max'])} ({r['revoke_n']}"
              f"{', %d timed out' % r['revoke_timeouts'] if r['revoke_timeouts'] else ''}) |")
    print()
    for r in rows:
        if "rss_second_key" in r:
            n = r["orgs"]
            per_key = [(b - a) / n for a, b in zip(r["rss"], r["rss_second_key"])]
            per_org = [(a - s) / n - k for a, s, k in zip(r["rss"], r["rss_start"], per_key)]
            print(f"* {r['design']}: RSS per cached org ≈ {' / '.join(f'{x:,.0f}' for x in per_org)} B, per cached "
                  f"key ≈ {' / '.join(f'{x:,.0f}' for x in per_key)} B (each proxy; from start to {n:,} orgs with one "
                  f"key each, then a second key of each org).")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--design", required=True)
    m.add_argument("--design-index", type=int, required=True)
    m.add_argument("--proxies", required=True, help="host:port,host:port")
    m.add_argument("--pids", required=True)
    m.add_argument("--dsn", required=True)
    m.add_argument("--cp-url", required=True)
    m.add_argument("--token", required=True)
    m.add_argument("--levels", default="1000,10000,100000")
    m.add_argument("--idle", type=int, default=10)
    m.add_argument("--load", type=int, default=20)
    m.add_argument("--conns", type=int, default=16)
    m.add_argument("--changes", type=int, default=100)
    m.add_argument("--revocations", type=int, default=10)
    m.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    a = ap.parse_args()
    (measure if a.cmd == "measure" else report)(a)


if __name__ == "__main__":
    main()

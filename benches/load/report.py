#!/usr/bin/env python3
"""Turns the load harness's raw runs into tables of medians with ratios, and a JSON file.

Usage: report.py RAW.tsv OUT.json --meta META.tsv [--conns N ...]   (called by benches/load/run.sh)
RAW.tsv lines: keys, case, config, round, cpu ticks of the gate during the run, CLK_TCK, RSS kB,
tool (wrk or loadgen), the tool's output file; the cluster case adds redis-server's cpu ticks
during the run and the scripts (EVAL/EVALSHA calls) Redis ran during it; the fwdauth case's
nginx-authreq adds keygate's own cpu ticks (the gate's are nginx's and keygate's together).
META.tsv lines (one per table size): keys, keygate start s (or -), constant rate (or -), how the
rate was chosen (or -), the cases run at that size. With run.sh's LOGS=both a table size has two
META lines, one per variant: the logs variant's cases are named CASE+logs (every gate writing its
access log to a file) and get tables of their own.
Exits non-zero if any request failed (non-2xx answers or socket errors). Stdlib only.
"""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

CONFIGS = ["direct", "nginx", "haproxy", "keygate"]
GATES = ["nginx", "haproxy", "keygate"]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
CASE_TITLES = {
    "keepalive": "HTTP/1.1 keep-alive",
    "close": "HTTP/1.1, new connection per request",
    "h2c": "h2c (HTTP/2, prior knowledge), saturation",
    "post": "HTTP/1.1 keep-alive, 1 MB POST body",
    "rate": "HTTP/1.1 keep-alive at a constant rate",
    "cluster": "HTTP/1.1 keep-alive, keygate's rate limits shared through Redis ([cluster])",
    "fwdauth": "HTTP/1.1 keep-alive, forward-auth: keygate's [verify] listener behind nginx auth_request",
}
# The cluster case: keygate alone, then with [cluster] in each mode, against one redis-server.
CLUSTER_CONFIGS = ["local", "strict", "local-sync"]
CLUSTER_FIELDS = ["rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_100k", "rss_mb",
                  "redis_cpu_s_per_100k", "redis_scripts_per_req"]
# The fwdauth case: nginx-authreq is nginx auth_request -> keygate's [verify] listener -> upstream
# (its CPU and RSS are nginx's and keygate's together); verify is wrk straight at the listener.
FWD_CONFIGS = ["direct", "nginx", "nginx-authreq", "keygate", "verify"]
FWD_RATIOS = [("nginx-authreq", "nginx"), ("nginx-authreq", "keygate"), ("verify", "keygate")]
# The logs variant's suffix, and what its tables' titles add.
LOGS_SUFFIX = "+logs"
LOGS_TITLE = ", every gate writing its access log to a file"
# Below this share of the target rate a constant-rate run did not really run at that rate.
RATE_SHORTFALL = 0.95


def dur_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path: str) -> dict:
    text = open(path, encoding="utf-8", errors="replace").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    lat = {}
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M):
        lat[pct] = dur_ms(val)
    exact = re.search(r"KG_PCT p50=(\d+) p99=(\d+) p999=(\d+)", text)
    if exact:  # the Lua done() hook: microseconds, more digits than wrk's table, and p99.9
        lat["50"], lat["99"], lat["99.9"] = (int(x) / 1000 for x in exact.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    socket = sum(int(x) for x in sock.groups()) if sock else 0
    return {
        "rps": rps,
        "requests": total,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "p999_ms": lat.get("99.9"),
        "non_2xx": non2xx,
        "socket_errors": socket,
        "errors": non2xx + socket,
    }


def parse_loadgen(path: str) -> dict:
    d = json.load(open(path, encoding="utf-8"))
    lat = d["latency_ms"]
    return {
        "rps": d["rps"],
        "requests": d["requests"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "p999_ms": lat["p999"],
        "max_ms": lat["max"],
        "non_2xx": d["non_2xx"],
        "socket_errors": d["socket_errors"],
        "errors": d["non_2xx"] + d["socket_errors"],
        "target_rps": d["target_rps"],
        "achieved_ratio": d["achieved_ratio"],
        "unsent": d["unsent"],
    }


def base_case(case: str) -> str:
    """keepalive+logs -> keepalive."""
    return case[: -len(LOGS_SUFFIX)] if case.endswith(LOGS_SUFFIX) else case


def title_of(case: str) -> str:
    base = base_case(case)
    return CASE_TITLES.get(base, base) + (LOGS_TITLE if case != base else "")


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:,.{nd}f}"


FIELDS = ["rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_100k", "rss_mb"]


def cluster_table(rs, keys, a, title):
    """keygate local vs strict vs local-sync: medians, ratios to local, p99 added over local."""
    medians = {}
    for c in CLUSTER_CONFIGS:
        mine = [r for r in rs if r["config"] == c]
        m = {f: med([r.get(f) for r in mine]) for f in CLUSTER_FIELDS}
        for f in ["errors", "non_2xx", "socket_errors", "requests", "redis_scripts"]:
            m[f] = sum(r.get(f) or 0 for r in mine)
        m["runs"] = len(mine)
        medians[c] = m

    def ratio(c, f):
        x, y = medians[c][f], medians["local"][f]
        return x / y if x is not None and y not in (None, 0) else None

    ratios = {f"{c}/local": {f: ratio(c, f) for f in CLUSTER_FIELDS[:6]} for c in CLUSTER_CONFIGS[1:]}
    # p99 added over local: per round, config minus local (adjacent runs), then the median.
    added = {}
    for c in CLUSTER_CONFIGS:
        diffs = []
        for r in rs:
            if r["config"] != c:
                continue
            base = [x for x in rs if x["config"] == "local" and x["round"] == r["round"]]
            if base and r["p99_ms"] is not None and base[0]["p99_ms"] is not None:
                diffs.append(r["p99_ms"] - base[0]["p99_ms"])
        added[c] = med(diffs)

    print()
    print(
        f"{title}: {keys} keys, each rate_limit = \"{a.cluster_rate}\", "
        f"wrk -t{a.threads} -c{a.conns} -d{a.duration}, {a.lua_keys} distinct keys in the load, "
        f"medians of {a.rounds} interleaved round(s)"
    )
    hdr = (
        f"{'config':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'p99 +ms':>9}"
        f"{'kg CPU s/100k':>15}{'Redis CPU s/100k':>18}{'Redis calls/req':>17}{'errors':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for c in CLUSTER_CONFIGS:
        m = medians[c]
        print(
            f"{c:<18}{fmt(m['rps'], 0):>10}{fmt(m['p50_ms'], 3):>9}{fmt(m['p99_ms'], 3):>9}"
            f"{fmt(m['p999_ms'], 3):>10}{fmt(added.get(c), 3):>9}"
            f"{fmt(m['cpu_s_per_100k'], 3):>15}{fmt(m['redis_cpu_s_per_100k'], 3):>18}"
            f"{fmt(m['redis_scripts_per_req'], 4):>17}{m['errors']:>8}"
        )
    for name, rr in ratios.items():
        print(
            f"{name:<18}{fmt(rr['rps']):>10}{fmt(rr['p50_ms']):>9}{fmt(rr['p99_ms']):>9}"
            f"{fmt(rr['p999_ms']):>10}{'':>9}{fmt(rr['cpu_s_per_100k']):>15}"
        )
    print(
        "(p99 +ms: p99 added over local, the median over rounds of config p99 - local p99; "
        "kg CPU: keygate's utime+stime;\n Redis CPU: redis-server's; Redis calls/req: EVAL/EVALSHA "
        "calls Redis ran per request, one round trip each; local has no [cluster])"
    )
    return {
        "title": title,
        "rate_limit": a.cluster_rate,
        "medians": medians,
        "ratios": ratios,
        "p99_added_over_local_ms": added,
    }


def fwdauth_table(rs, keys, a, title):
    """direct, nginx's map gate, nginx auth_request -> keygate, keygate, keygate's verify listener."""
    medians = {}
    for c in FWD_CONFIGS:
        mine = [r for r in rs if r["config"] == c]
        m = {f: med([r[f] for r in mine]) for f in FIELDS}
        m["keygate_cpu_s_per_100k"] = med([r.get("keygate_cpu_s_per_100k") for r in mine])
        for f in ["errors", "non_2xx", "socket_errors", "requests"]:
            m[f] = sum(r[f] for r in mine)
        m["runs"] = len(mine)
        medians[c] = m

    def ratio(x, y, f):
        a_, b_ = medians[x][f], medians[y][f]
        return a_ / b_ if a_ is not None and b_ not in (None, 0) else None

    ratios = {f"{x}/{y}": {f: ratio(x, y, f) for f in FIELDS} for x, y in FWD_RATIOS}
    print()
    print(
        f"{title}: {keys} keys, wrk -t{a.threads} -c{a.conns} -d{a.duration}, "
        f"{a.lua_keys} distinct keys in the load, medians of {a.rounds} interleaved round(s)"
    )
    hdr = (
        f"{'config':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'CPU s/100k':>12}{'of it kg':>10}{'RSS MB':>9}{'errors':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for c in FWD_CONFIGS:
        m = medians[c]
        print(
            f"{c:<24}{fmt(m['rps'], 0):>10}{fmt(m['p50_ms'], 3):>9}{fmt(m['p99_ms'], 3):>9}"
            f"{fmt(m['p999_ms'], 3):>10}{fmt(m['cpu_s_per_100k'], 3):>12}"
            f"{fmt(m['keygate_cpu_s_per_100k'], 3):>10}{fmt(m['rss_mb'], 1):>9}{m['errors']:>8}"
        )
    for name, rr in ratios.items():
        print(
            f"{name:<24}{fmt(rr['rps']):>10}{fmt(rr['p50_ms']):>9}{fmt(rr['p99_ms']):>9}"
            f"{fmt(rr['p999_ms']):>10}{fmt(rr['cpu_s_per_100k']):>12}{'':>10}{fmt(rr['rss_mb']):>9}"
        )
    print(
        "(nginx: nginx's own map gate; nginx-authreq: nginx auth_request -> keygate [verify] -> "
        "upstream, CPU and RSS of nginx and keygate together, 'of it kg' keygate's share;\n verify: wrk "
        "straight at keygate's [verify] listener, the decision alone; keygate: the proxy mode)"
    )
    return {"title": title, "medians": medians, "ratios": ratios}


def case_table(case, rs, keys, a, rate, basis):
    """Medians, ratios and (rate) p99 added over direct for one case at one table size; prints it."""
    title = title_of(case)
    case = base_case(case)
    if case == "cluster":
        return cluster_table(rs, keys, a, title)
    if case == "fwdauth":
        return fwdauth_table(rs, keys, a, title)
    medians = {}
    for c in CONFIGS:
        mine = [r for r in rs if r["config"] == c]
        m = {f: med([r[f] for r in mine]) for f in FIELDS}
        m["errors"] = sum(r["errors"] for r in mine)
        m["non_2xx"] = sum(r["non_2xx"] for r in mine)
        m["socket_errors"] = sum(r["socket_errors"] for r in mine)
        m["requests"] = sum(r["requests"] for r in mine)
        m["runs"] = len(mine)
        if case == "rate":
            m["achieved_ratio"] = med([r.get("achieved_ratio") for r in mine])
            m["unsent"] = sum(r.get("unsent") or 0 for r in mine)
        medians[c] = m

    def ratio(b, f):
        x, y = medians["keygate"][f], medians[b][f]
        return x / y if x is not None and y not in (None, 0) else None

    ratios = {f"keygate/{b}": {f: ratio(b, f) for f in FIELDS} for b in ["direct", "nginx", "haproxy"]}

    # p99 added over direct: per round, gate minus direct (adjacent runs), then the median.
    added = {}
    for c in GATES:
        diffs = []
        for r in rs:
            if r["config"] != c:
                continue
            d = [x for x in rs if x["config"] == "direct" and x["round"] == r["round"]]
            if d and r["p99_ms"] is not None and d[0]["p99_ms"] is not None:
                diffs.append(r["p99_ms"] - d[0]["p99_ms"])
        added[c] = med(diffs)

    if case in ("keepalive", "close", "post"):
        load = f"wrk -t{a.threads} -c{a.conns} -d{a.duration}"
    elif case == "h2c":
        load = f"loadgen h2c {a.h2_conns} connections x {a.h2_streams} streams, -d{a.duration}"
    else:
        load = f"loadgen {rate:,.0f} req/s ({basis}) over {a.conns} connections, -d{a.duration}"
    print()
    print(
        f"{title}: {keys} keys, {load}, "
        f"{a.lua_keys} distinct keys in the load, medians of {a.rounds} interleaved round(s)"
    )
    extra = case == "rate"
    hdr = (
        f"{'config':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        + (f"{'p99 +ms':>9}" if extra else "")
        + f"{'CPU s/100k':>12}{'RSS MB':>9}{'errors':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for c in CONFIGS:
        m = medians[c]
        print(
            f"{c:<16}{fmt(m['rps'], 0):>10}{fmt(m['p50_ms'], 3):>9}{fmt(m['p99_ms'], 3):>9}"
            f"{fmt(m['p999_ms'], 3):>10}"
            + (f"{fmt(added.get(c), 3):>9}" if extra else "")
            + f"{fmt(m['cpu_s_per_100k'], 3):>12}{fmt(m['rss_mb'], 1):>9}{m['errors']:>8}"
        )
    for name, rr in ratios.items():
        print(
            f"{name:<16}{fmt(rr['rps']):>10}{fmt(rr['p50_ms']):>9}{fmt(rr['p99_ms']):>9}"
            f"{fmt(rr['p999_ms']):>10}"
            + (f"{'':>9}" if extra else "")
            + f"{fmt(rr['cpu_s_per_100k']):>12}{fmt(rr['rss_mb']):>9}{'':>8}"
        )
    if extra:
        print("(p99 +ms: p99 added over direct, the median over rounds of gate p99 - direct p99)")
        for c in CONFIGS:
            ach = medians[c].get("achieved_ratio")
            if ach is not None and ach < RATE_SHORTFALL:
                print(
                    f"warning: {c} reached only {ach:.0%} of the target rate "
                    f"({medians[c]['unsent']} requests never sent): its latencies are at overload"
                )
    out = {"title": title, "medians": medians, "ratios": ratios}
    if extra:
        out["target_rps"] = rate
        out["rate_basis"] = basis
        out["p99_added_over_direct_ms"] = added
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--meta", required=True)
    for k in ["conns", "threads", "rounds", "lua-keys", "h2-conns", "h2-streams", "wall-s"]:
        p.add_argument(f"--{k}", type=int)
    p.add_argument("--duration")
    p.add_argument("--cluster-rate")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()

    runs = []
    for line in open(a.raw, encoding="utf-8"):
        fields = line.rstrip("\n").split("\t")
        keys, case, c, r, ticks, tck, rss, tool, path = fields[:9]
        w = parse_wrk(path) if tool == "wrk" else parse_loadgen(path)
        if len(fields) == 11:  # the cluster case: redis-server's cpu ticks and scripts run
            redis_s, scripts = int(fields[9]) / int(tck), int(fields[10])
            w.update(
                redis_cpu_s=redis_s,
                redis_cpu_s_per_100k=redis_s / max(w["requests"], 1) * 1e5,
                redis_scripts=scripts,
                redis_scripts_per_req=scripts / max(w["requests"], 1),
            )
        if len(fields) == 10:  # fwdauth's nginx-authreq: keygate's share of the gate's CPU
            kg_s = int(fields[9]) / int(tck)
            w.update(keygate_cpu_s=kg_s, keygate_cpu_s_per_100k=kg_s / max(w["requests"], 1) * 1e5)
        cpu_s = int(ticks) / int(tck)
        w.update(
            keys=int(keys),
            case=case,
            config=c,
            round=int(r),
            tool=tool,
            cpu_s=None if c == "direct" else cpu_s,
            cpu_s_per_100k=None if c == "direct" else cpu_s / max(w["requests"], 1) * 1e5,
            rss_mb=None if c == "direct" else int(rss) / 1024,
        )
        runs.append(w)

    metas = []
    for line in open(a.meta, encoding="utf-8"):
        keys, start_s, rate, basis, cases = line.rstrip("\n").split("\t")
        metas.append(
            {
                "keys": int(keys),
                "keygate_start_s": None if start_s == "-" else float(start_s),
                "rate": None if rate == "-" else float(rate),
                "basis": None if basis == "-" else basis,
                "cases": cases.split(),
            }
        )

    tables = {}
    failed = 0
    empty = []
    for meta in metas:
        n = meta["keys"]
        # A second variant at the same size adds its cases to the size's table.
        cases = tables[str(n)]["cases"] if str(n) in tables else {}
        for case in meta["cases"]:
            rs = [r for r in runs if r["keys"] == n and r["case"] == case]
            cases[case] = case_table(case, rs, n, a, meta["rate"], meta["basis"])
            for c, m in cases[case]["medians"].items():
                failed += m["errors"]
                if m["requests"] == 0:
                    empty.append(f"{case}/{c} at {n} keys")
        if str(n) in tables:
            t = tables[str(n)]
            for k, v in [("keygate_start_s", meta["keygate_start_s"]), ("rate_target_rps", meta["rate"]),
                         ("rate_basis", meta["basis"])]:
                if t[k] is None:
                    t[k] = v
            continue
        tables[str(n)] = {
            "keys": n,
            "keygate_start_s": meta["keygate_start_s"],
            "rate_target_rps": meta["rate"],
            "rate_basis": meta["basis"],
            "cases": cases,
        }
    print()
    print("(direct has no gate process, so no CPU or RSS; CPU is the gate's processes' utime+stime;")
    print(" RSS is summed over the gate's processes, so nginx's master and workers count shared pages twice)")
    for t in tables.values():
        if t["keygate_start_s"] is not None:
            print(f"keygate start with {t['keys']} keys (launch to first answer): {t['keygate_start_s']:.2f} s")

    # Cost against the table size: throughput at each larger table / at the first one.
    scaling = {}
    sizes = list(tables.values())
    if len(sizes) > 1:
        base = sizes[0]["keys"]
        for t in sizes[1:]:
            n = t["keys"]
            per_case = {}
            for case in t["cases"]:
                if base_case(case) in ("rate", "cluster", "fwdauth") or case not in tables[str(base)]["cases"]:
                    continue  # a constant rate is the same at every size; see its latencies
                big = tables[str(n)]["cases"][case]["medians"]
                small = tables[str(base)]["cases"][case]["medians"]
                per_case[case] = {
                    c: (big[c]["rps"] / small[c]["rps"] if big[c]["rps"] and small[c]["rps"] else None)
                    for c in CONFIGS
                }
            scaling[f"{n}/{base}"] = per_case
            print()
            print(f"Table size: req/s at {n} keys / req/s at {base} keys (medians; 1.00 = flat)")
            hdr = f"{'case':<16}" + "".join(f"{c:>10}" for c in CONFIGS)
            print(hdr)
            print("-" * len(hdr))
            for case, row in per_case.items():
                print(f"{case:<16}" + "".join(f"{fmt(row[c]):>10}" for c in CONFIGS))
            if not per_case:
                print("(no case ran at both sizes)")

    result = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "smoke": a.smoke,
        "wall_s": a.wall_s,
        "settings": {
            "keys": [t["keys"] for t in tables.values()],
            "rounds": a.rounds,
            "duration": a.duration,
            "lua_keys": a.lua_keys,
            "wrk": {"threads": a.threads, "connections": a.conns},
            "h2c": {"connections": a.h2_conns, "streams": a.h2_streams, "threads": a.threads},
            "rate": {"connections": a.conns, "threads": a.threads},
            "cluster": {"connections": a.conns, "threads": a.threads, "rate_limit": a.cluster_rate},
            "fwdauth": {"connections": a.conns, "threads": a.threads},
        },
        "tables": tables,
        "scaling": scaling,
        "runs": runs,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"JSON: {a.out}")
    if a.wall_s is not None:
        print(f"wall time so far: {a.wall_s} s")
    rc = 0
    if failed:
        print(f"FAIL: {failed} requests failed (non-2xx or socket errors)", file=sys.stderr)
        rc = 1
    if empty:
        print(f"FAIL: no request completed in {', '.join(empty)}", file=sys.stderr)
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())

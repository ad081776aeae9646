#!/usr/bin/env python3
"""Turns the load harness's raw runs into a table of medians with ratios, and a JSON file.

Usage: report.py RAW.tsv OUT.json [--keys N ...]   (called by benches/load/run.sh)
RAW.tsv lines: case, config, round, cpu ticks of the gate during the run, CLK_TCK, RSS kB, wrk output.
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
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


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
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(x) for x in sock.groups()) if sock else 0
    )
    return {"rps": rps, "requests": total, "p50_ms": lat["50"], "p99_ms": lat["99"], "p999_ms": lat.get("99.9"), "errors": errors}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


CASE_TITLES = {"keepalive": "HTTP/1.1 keep-alive", "close": "HTTP/1.1, new connection per request",
               "post": "HTTP/1.1 keep-alive, 1 MB POST body"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("out")
    for k in ["keys", "conns", "threads", "rounds", "lua-keys"]:
        p.add_argument(f"--{k}", type=int)
    p.add_argument("--duration")
    p.add_argument("--cases", default="keepalive")
    p.add_argument("--keygate-start-s", type=float)
    a = p.parse_args()

    runs = []
    for line in open(a.raw, encoding="utf-8"):
        case, c, r, ticks, tck, rss, path = line.rstrip("\n").split("\t")
        w = parse_wrk(path)
        cpu_s = int(ticks) / int(tck)
        w.update(
            case=case,
            config=c,
            round=int(r),
            cpu_s=None if c == "direct" else cpu_s,
            cpu_s_per_100k=None if c == "direct" else cpu_s / max(w["requests"], 1) * 1e5,
            rss_mb=None if c == "direct" else int(rss) / 1024,
        )
        runs.append(w)

    fields = ["rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_100k", "rss_mb"]

    def fmt(x, nd=2):
        return "-" if x is None else f"{x:,.{nd}f}"

    cases = {}
    failed = 0
    for case in a.cases.split():
        medians = {}
        for c in CONFIGS:
            rs = [r for r in runs if r["config"] == c and r["case"] == case]
            medians[c] = {f: med([r[f] for r in rs]) for f in fields}
            medians[c]["errors"] = sum(r["errors"] for r in rs)
            medians[c]["runs"] = len(rs)
            failed += medians[c]["errors"]

        def ratio(b_, f):
            x, y = medians["keygate"][f], medians[b_][f]
            return x / y if x is not None and y not in (None, 0) else None

        ratios = {f"keygate/{b}": {f: ratio(b, f) for f in fields} for b in ["direct", "nginx", "haproxy"]}
        cases[case] = {"medians": medians, "ratios": ratios}

        print()
        print(
            f"{CASE_TITLES.get(case, case)}: {a.keys} keys, wrk -t{a.threads} -c{a.conns} -d{a.duration}, "
            f"{a.lua_keys} distinct keys in the load, medians of {a.rounds} interleaved round(s)"
        )
        hdr = (
            f"{'config':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
            f"{'CPU s/100k':>12}{'RSS MB':>9}{'errors':>8}"
        )
        print(hdr)
        print("-" * len(hdr))
        for c in CONFIGS:
            m = medians[c]
            print(
                f"{c:<16}{fmt(m['rps'], 0):>10}{fmt(m['p50_ms'], 3):>9}{fmt(m['p99_ms'], 3):>9}"
                f"{fmt(m['p999_ms'], 3):>10}{fmt(m['cpu_s_per_100k'], 3):>12}{fmt(m['rss_mb'], 1):>9}{m['errors']:>8}"
            )
        for name, rr in ratios.items():
            print(
                f"{name:<16}{fmt(rr['rps']):>10}{fmt(rr['p50_ms']):>9}{fmt(rr['p99_ms']):>9}"
                f"{fmt(rr['p999_ms']):>10}{fmt(rr['cpu_s_per_100k']):>12}{fmt(rr['rss_mb']):>9}{'':>8}"
            )
    print("(direct has no gate process, so no CPU or RSS; CPU is the gate's processes' utime+stime;")
    print(" RSS is summed over the gate's processes, so nginx's master and workers count shared pages twice)")
    if a.keygate_start_s is not None:
        print(f"keygate start with {a.keys} keys (launch to first answer): {a.keygate_start_s:.2f} s")

    result = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "keys": a.keys,
        "lua_keys": a.lua_keys,
        "wrk": {"threads": a.threads, "connections": a.conns, "duration": a.duration},
        "rounds": a.rounds,
        "keygate_start_s": a.keygate_start_s,
        "cases": cases,
        "runs": runs,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"JSON: {a.out}")
    if failed:
        print(f"FAIL: {failed} requests failed (non-2xx or socket errors)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

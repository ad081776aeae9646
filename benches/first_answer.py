#!/usr/bin/env python3
"""Starts `keygate run` on a config and times launch -> first HTTP answer on its proxy port.

Usage: first_answer.py [--timeout S] KEYGATE_BIN CONFIG

Copies CONFIG with `listen` set to a free port of 127.0.0.1, starts KEYGATE_BIN run on it, and
from just before the exec tries that port every 5 ms (at most --timeout seconds) with
`GET /` and an unknown `X-API-Key`, until a status line comes back. Then it reads VmRSS and VmHWM
from /proc/PID/status, stops keygate (SIGTERM, then SIGKILL after 10 s) and prints one line:
"seconds resident_MB peak_MB". Exit status 1 when no answer came. Stdlib only; used by
benches/config_load.sh (SERVE=1).
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_line(port: int) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                b"GET / HTTP/1.1\r\nHost: api.example.com\r\nX-API-Key: kg_unknown\r\n"
                b"Connection: close\r\n\r\n"
            )
            data = s.recv(64)
            return data.split(b"\r\n", 1)[0] if data.startswith(b"HTTP/") else None
    except OSError:
        return None


def proc_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("bin")
    p.add_argument("config")
    a = p.parse_args()
    port = free_port()
    with open(a.config, encoding="utf-8") as f:
        text = f.read()
    text, n = re.subn(r"(?m)^listen = .*$", f'listen = "127.0.0.1:{port}"', text, count=1)
    if n != 1:
        print("first_answer: the config has no `listen = ` line", file=sys.stderr)
        return 1
    fd, cfg = tempfile.mkstemp(suffix=".toml", dir=os.path.dirname(os.path.abspath(a.config)))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    del text
    proc = None
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [a.bin, "run", "--config", cfg],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = t0 + a.timeout
        while True:
            line = status_line(port)
            if line is not None:
                took = time.monotonic() - t0
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                print("first_answer: keygate exited or timed out before answering", file=sys.stderr)
                return 1
            time.sleep(0.005)
        rss, hwm = proc_mb(proc.pid, "VmRSS"), proc_mb(proc.pid, "VmHWM")
        print(f"{took:.3f} {rss:.1f} {hwm:.1f}")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.unlink(cfg)


if __name__ == "__main__":
    sys.exit(main())

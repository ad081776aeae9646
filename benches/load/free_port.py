#!/usr/bin/env python3
"""Prints a free TCP port on 127.0.0.1 for a gate of the load benches to listen on.

Below the kernel's ephemeral range, not from it: a port the kernel hands out for bind(0) is one
it also hands out as the local port of outgoing connections (wrk's, the gates' to the upstream),
so between this script closing it and a gate binding it, a connection could take it and the
gate would exit with "Address already in use" (seen once in CI). USED (a file, one port per
line) keeps two calls of one run from picking the same port.

    python3 free_port.py USED
"""
import random
import socket
import sys

used_file = sys.argv[1]
try:
    with open(used_file) as f:
        used = {int(line) for line in f if line.strip()}
except FileNotFoundError:
    used = set()
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
except OSError:
    low, high = 32768, 60999
ranges = [(10000, low)] if low > 12000 else [(high + 1, 65535)]
for _ in range(500):
    start, end = random.choice(ranges)
    port = random.randrange(start, end)
    if port in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    with open(used_file, "a") as f:
        f.write(f"{port}\n")
    print(port)
    sys.exit(0)
sys.exit("no free port found below the ephemeral range")

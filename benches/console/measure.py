#!/usr/bin/env python3
"""Times the key console's first screen and a search by prefix in headless Chromium (WebDriver),
5 rounds each, against a running keygate's admin listener.

Usage: benches/console/measure.py http://127.0.0.1:9901 kg_AbCd [admin secret]

The first screen: from the click on Sign in to 50 key rows on the page (sign-in, session,
targets, consumers for the filter, the first page of keys). The search: from typing the prefix
to the one matching row, including the page's own 250 ms pause after typing.
Needs Debian's chromium and chromium-driver. Stdlib only. See docs/performance.md.
"""
import json, socket, subprocess, sys, tempfile, time, urllib.request, statistics
ADMIN, PREFIX = sys.argv[1], sys.argv[2]
SECRET = sys.argv[3] if len(sys.argv) > 3 else "kg_demo_admin_do_not_use_in_production"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
drv = subprocess.Popen(["/usr/bin/chromedriver", f"--port={PORT}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
PROFILE = tempfile.mkdtemp(prefix="keygate-console-bench-")
def call(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}" + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["value"]
caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--user-data-dir=" + PROFILE]}}}}
sid = call("POST", "/session", caps)["sessionId"]
S = f"/session/{sid}"
def js(script, *args): return call("POST", S + "/execute/sync", {"script": script, "args": list(args)})
def wait(cond, limit=10):
    t = time.time()
    while time.time() - t < limit:
        if js("return " + cond): return time.time() - t
        time.sleep(0.005)
    raise SystemExit("timeout: " + cond)
firsts, searches = [], []
try:
    for round in range(5):
        call("POST", S + "/url", {"url": ADMIN + "/"})
        wait("!!document.querySelector('#admin-key') && document.querySelector('#admin-key').offsetParent !== null")
        js("document.querySelector('#admin-key').value = arguments[0]", SECRET)
        t0 = time.time()
        js("document.querySelector('#sign-in-button').click()")
        wait("document.querySelectorAll('#keys-table tbody tr[data-key-id]').length >= 50")
        firsts.append(time.time() - t0)
        js("const s=document.querySelector('#keys-search'); s.value=arguments[0]; s.dispatchEvent(new Event('input',{bubbles:true}))", PREFIX)
        t1 = time.time()
        # The page waits 250 ms after typing before it asks: that wait is the page's, not the server's.
        wait("document.querySelectorAll('#keys-table tbody tr[data-key-id]').length === 1")
        searches.append(time.time() - t1)
        js("document.querySelector('#sign-out').click()")
        wait("document.querySelector('#admin-key') && document.querySelector('#admin-key').offsetParent !== null")
    print("first screen after Sign in (s):", ["%.3f" % x for x in firsts], "median %.3f" % statistics.median(firsts))
    print("prefix search incl. 250 ms debounce (s):", ["%.3f" % x for x in searches], "median %.3f" % statistics.median(searches))
finally:
    call("DELETE", S)
    drv.kill()

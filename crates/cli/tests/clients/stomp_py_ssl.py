#!/usr/bin/env python3
"""stomp+ssl check with stomp.py's plain Connection over TLS.

Usage: python3 stomp_py_ssl.py https://127.0.0.1:HTTP_PORT 127.0.0.1:TCP_PORT CA_FILE
Prints `ok - <check>` per check; exits 0 when all pass, 1 on the first failure.
"""
import json
import os
import queue
import ssl
import sys
import threading
import urllib.request

current = "startup"


def fail(reason):
    print(f"not ok - {current}: {reason}", flush=True)
    os._exit(1)


timer = threading.Timer(30.0, lambda: fail("global timeout 30 s"))
timer.daemon = True
timer.start()

try:
    import stomp
except ImportError as e:
    fail(f"cannot import stomp.py ({e}); run install.sh")

if len(sys.argv) != 4:
    fail("usage: stomp_py_ssl.py https://HOST:PORT HOST:PORT CA_FILE")
base, tcp, ca = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
host, port = tcp.rsplit(":", 1)
port = int(port)


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        self.errors = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self.errors.put(frame)


def ok(name, note=""):
    print(f"ok - {name}" + (f" ({note})" if note else ""), flush=True)


current = "connect over tls"
conn = stomp.Connection([(host, port)], heartbeats=(0, 0))
conn.set_ssl(for_hosts=[(host, port)], ca_certs=ca)
listener = Listener()
conn.set_listener("l", listener)
try:
    conn.connect(wait=True, headers={"host": "localhost"})
except Exception as e:  # noqa: BLE001
    fail(f"{type(e).__name__}: {e}")
ok(current, f"tls to {tcp}")

current = "subscribe with receipt"
conn.subscribe("/topic/ssl", id="1", ack="auto", headers={"receipt": "sub-1"})
try:
    rid = listener.receipts.get(timeout=5)
except queue.Empty:
    fail("no RECEIPT")
if rid != "sub-1":
    fail(f"RECEIPT for {rid}")
ok(current)

current = "https publish reaches subscriber"
ctx = ssl.create_default_context(cafile=ca)
body = json.dumps({"destination": "/topic/ssl", "body": "over tls"}).encode()
req = urllib.request.Request(
    f"{base}/v1/publish", data=body, headers={"content-type": "application/json"}
)
with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
    if r.status != 202:
        fail(f"status {r.status}")
try:
    m = listener.messages.get(timeout=5)
except queue.Empty:
    fail("no MESSAGE")
if m.body != "over tls":
    fail(f"body {m.body!r}")
ok(current)

current = "disconnect"
conn.disconnect()
ok(current)

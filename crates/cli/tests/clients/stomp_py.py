#!/usr/bin/env python3
"""Interop check with stomp.py's WSConnection.

Usage: python3 stomp_py.py http://127.0.0.1:PORT
Prints `ok - <check>` per check; exits 0 when all pass, 1 on the first failure.
"""
import json
import logging
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

TOTAL_TIMEOUT_S = 30.0
WAIT_S = 5.0
QUIET_S = 0.5
HEARTBEAT_MS = 1000

current = "startup"
if os.environ.get("STOMP_DEBUG"):
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)


def fail(reason):
    print(f"not ok - {current}: {reason}", flush=True)
    os._exit(1)


timer = threading.Timer(TOTAL_TIMEOUT_S, lambda: fail(f"global timeout {TOTAL_TIMEOUT_S:.0f} s"))
timer.daemon = True
timer.start()

try:
    import stomp
except ImportError as e:
    fail(f"cannot import stomp.py ({e}); run install.sh")


def check(name, fn):
    global current
    current = name
    try:
        note = fn()
    except Exception as e:  # noqa: BLE001
        if isinstance(e, AssertionError):
            fail(str(e))
        fail(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    print(f"ok - {name}" + (f" ({note})" if note else ""), flush=True)


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.connected_frame = None
        self.disconnected = threading.Event()
        self.receipts = {}
        self.inboxes = {}
        self.heartbeats = 0

    def inbox(self, sub_id):
        with self.lock:
            return self.inboxes.setdefault(sub_id, queue.Queue())

    def expect_receipt(self, rid):
        ev = threading.Event()
        with self.lock:
            self.receipts[rid] = ev
        return ev

    def on_connected(self, frame):
        self.connected_frame = frame
        self.connected.set()

    def on_message(self, frame):
        sub = frame.headers.get("subscription")
        with self.lock:
            known = sub in self.inboxes
        if not known:
            fail(f"MESSAGE for unknown subscription {sub!r}")
        self.inbox(sub).put(frame)

    def on_receipt(self, frame):
        rid = frame.headers.get("receipt-id")
        with self.lock:
            ev = self.receipts.pop(rid, None)
        if ev is None:
            fail(f"unexpected RECEIPT {rid!r}")
        ev.set()

    def on_error(self, frame):
        fail(f"ERROR frame: {frame.headers.get('message', '')} {frame.body}")

    def on_heartbeat(self):
        with self.lock:
            self.heartbeats += 1

    def on_heartbeat_timeout(self):
        fail("heart-beat timeout: no data from server in time")

    def on_disconnected(self):
        self.disconnected.set()


def wait(ev, what, timeout=WAIT_S):
    if not ev.wait(timeout):
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def next_message(inbox, timeout=WAIT_S):
    try:
        return inbox.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for a MESSAGE") from None


def expect_none(inbox, quiet=QUIET_S):
    time.sleep(quiet)
    if not inbox.empty():
        raise AssertionError(f"unexpected MESSAGE: {inbox.get().body!r}")


def http_publish(base, destination, body, headers=None):
    payload = {"destination": destination, "body": body}
    if headers:
        payload["headers"] = headers
    req = urllib.request.Request(
        f"{base}/v1/publish",
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as res:
            status, text = res.status, res.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    assert status == 202, f"POST /v1/publish: status {status}: {text}"
    try:
        rid = json.loads(text).get("id")
    except ValueError:
        raise AssertionError(f"POST /v1/publish: not JSON: {text}") from None
    assert isinstance(rid, str) and rid, f"POST /v1/publish: no id in {text}"
    return rid


def main():
    global current
    base = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else ""
    url = urllib.parse.urlsplit(base)
    if url.scheme not in ("http", "https") or not url.port:
        current = "usage"
        fail("python3 stomp_py.py http://127.0.0.1:PORT")
    run = f"{os.getpid()}-{int(time.time() * 1000)}"
    topic = f"/topic/interop.stomppy.{run}"

    listener = Listener()
    conn = stomp.WSConnection(
        [(url.hostname, url.port)],
        ws_path="/ws",
        heartbeats=(HEARTBEAT_MS, HEARTBEAT_MS),
        reconnect_attempts_max=1,
        timeout=WAIT_S,
    )
    conn.set_listener("interop", listener)

    def connect():
        conn.connect(wait=False)
        wait(listener.connected, "CONNECTED")
        version = listener.connected_frame.headers.get("version")
        assert version == "1.2", f"CONNECTED version {version!r}, want 1.2"

    check("connect", connect)

    def subscribe(dest, sub_id, ack="auto"):
        inbox = listener.inbox(sub_id)
        rid = f"sub-receipt-{sub_id}"
        ev = listener.expect_receipt(rid)
        conn.subscribe(dest, sub_id, ack=ack, receipt=rid)
        wait(ev, f"RECEIPT {rid}")
        return inbox

    main_inbox = None

    def subscribe_main():
        nonlocal main_inbox
        main_inbox = subscribe(topic, "main")

    check("subscribe with receipt", subscribe_main)

    def http_reaches():
        body = f"hello from http {run} \u00e9\u2713"
        header = "a:b\\c"  # server must escape it in MESSAGE
        http_publish(base, topic, body, {"x-interop": header})
        m = next_message(main_inbox)
        assert m.body == body, f"body {m.body!r}, want {body!r}"
        assert m.headers.get("message-id"), "no message-id header"
        assert m.headers.get("subscription") == "main", f"subscription header {m.headers.get('subscription')!r}"
        assert m.headers.get("destination") == topic, f"destination header {m.headers.get('destination')!r}"
        got = m.headers.get("x-interop")
        assert got == header, f"x-interop header {got!r}, want {header!r}"

    check("http publish reaches subscriber", http_reaches)

    def send_reaches():
        ev = listener.expect_receipt("send-1")
        header = "x:y\\z"  # stomp.py sends it escaped
        conn.send(topic, "plain send", receipt="send-1", headers={"x-interop": header})
        wait(ev, "RECEIPT send-1")
        m = next_message(main_inbox)
        assert m.body == "plain send", f"body {m.body!r}"
        assert m.headers.get("message-id"), "no message-id header"
        assert "receipt" not in m.headers, "MESSAGE carries the SEND receipt header"
        got = m.headers.get("x-interop")
        assert got == header, f"x-interop header {got!r}, want {header!r}"

    check("send reaches own subscription", send_reaches)

    def tx_abort():
        tx = conn.begin()
        conn.send(topic, "aborted 1", transaction=tx)
        conn.send(topic, "aborted 2", transaction=tx)
        conn.abort(tx)
        expect_none(main_inbox)

    check("transaction abort drops sends", tx_abort)

    def tx_commit():
        tx = conn.begin()
        conn.send(topic, "committed", transaction=tx)
        expect_none(main_inbox, 0.3)
        conn.commit(tx)
        m = next_message(main_inbox)
        assert m.body == "committed", f"body {m.body!r}"
        expect_none(main_inbox, 0.2)

    check("transaction commit delivers", tx_commit)

    def client_individual():
        dest = f"{topic}.acks"
        inbox = subscribe(dest, "acks", ack="client-individual")
        for i in range(3):
            http_publish(base, dest, f"ack-{i}")
        msgs = [next_message(inbox) for _ in range(3)]
        bodies = sorted(m.body for m in msgs)
        assert bodies == ["ack-0", "ack-1", "ack-2"], f"bodies {bodies}"
        for m in msgs:
            assert m.headers.get("ack"), f"MESSAGE {m.headers.get('message-id')} has no ack header"
            assert m.headers.get("subscription") == "acks", f"subscription header {m.headers.get('subscription')!r}"
        # STOMP 1.2: ACK id is the MESSAGE's ack header; stomp.py sends no subscription header.
        for i, m in enumerate(reversed(msgs)):
            rid = f"ack-receipt-{i}"
            ev = listener.expect_receipt(rid)
            conn.ack(m.headers["ack"], receipt=rid)
            wait(ev, f"RECEIPT {rid}")
        ev = listener.expect_receipt("unsub-acks")
        conn.unsubscribe("acks", receipt="unsub-acks")
        wait(ev, "RECEIPT unsub-acks")

    check("client-individual ack", client_individual)

    def heart_beat():
        hb = listener.connected_frame.headers.get("heart-beat", "0,0").replace(" ", "").split(",")
        sx = int(hb[0]) if hb and hb[0].isdigit() else 0
        if sx == 0:
            return "server sends none"
        interval = max(HEARTBEAT_MS, sx)
        if interval > 3000:
            return f"server interval {interval} ms, not waited"
        with listener.lock:
            before = listener.heartbeats
        deadline = time.monotonic() + 2 * interval / 1000 + 1
        while time.monotonic() < deadline:
            with listener.lock:
                if listener.heartbeats > before:
                    assert conn.is_connected(), "connection dropped"
                    return f"every {interval} ms"
            time.sleep(0.05)
        raise AssertionError(f"no heart-beat within {2 * interval + 1000} ms (negotiated {interval} ms)")

    check("heart-beat", heart_beat)

    def disconnect():
        ev = listener.expect_receipt("bye")
        t = threading.Thread(target=conn.disconnect, kwargs={"receipt": "bye"}, daemon=True)
        t.start()
        wait(ev, "RECEIPT for DISCONNECT")
        wait(listener.disconnected, "socket close")
        t.join(WAIT_S)
        assert not t.is_alive(), "disconnect() did not return"

    check("disconnect with receipt", disconnect)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {e}")

#!/usr/bin/env python3
"""The WebSocket length classes (websocket_interop.rs) with Python's `websockets`.

Usage: python3 ws_lengths_websockets.py ws://127.0.0.1:PORT/ws PLAN-JSON
Prints `ok - <case>` per case; exits 0 when all pass, 1 on the first failure.
"""
import asyncio
import json
import sys

ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
WAIT_S = 10.0
TOTAL_S = 60.0


def body(n):
    """A body of n bytes, the same function as text_body in websocket_interop.rs."""
    return bytes(ALNUM[(i * 7 + (i >> 8) + n) % len(ALNUM)] for i in range(n))


def parse(data):
    """One STOMP frame per WebSocket message: command, headers, body."""
    end = data.find(b"\n\n")
    if end < 0 or not data.endswith(b"\0"):
        raise AssertionError(f"not a STOMP frame: {data[:80]!r}")
    lines = data[:end].decode().split("\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k, v)
    return lines[0], headers, data[end + 2 : -1]


async def run(url, plan, state):
    from websockets.asyncio.client import connect

    async with connect(url, subprotocols=["v12.stomp"], max_size=1 << 20) as ws:

        async def recv():
            msg = await asyncio.wait_for(ws.recv(), WAIT_S)
            return msg.encode() if isinstance(msg, str) else msg

        async def frame(command):
            cmd, headers, _ = parse(await recv())
            assert cmd == command, f"expected {command}, got {cmd} {headers.get('message', '')}"

        assert ws.subprotocol == "v12.stomp", f"subprotocol {ws.subprotocol!r}"
        print("ok - subprotocol v12.stomp", flush=True)
        state["case"] = "connect"
        await ws.send(plan["connect"])
        await frame("CONNECTED")
        print("ok - connect", flush=True)
        state["case"] = "subscribe"
        await ws.send(plan["subscribe"])
        await frame("RECEIPT")
        print("ok - subscribe", flush=True)
        for step in plan["steps"]:
            state["case"] = step["name"]
            for out in step["send"]:
                data = b"".join(p["head"].encode() + body(p["body"]) + b"\0" for p in out["frames"])
                assert len(data) == out["len"], f"built {len(data)} bytes, the plan says {out['len']}"
                await ws.send(data.decode())
            receipts = set(step["receipts"])
            expect = list(step["expect"])
            while receipts or expect:
                data = await recv()
                cmd, headers, got = parse(data)
                if cmd == "RECEIPT" and headers.get("receipt-id") in receipts:
                    receipts.discard(headers["receipt-id"])
                elif cmd == "MESSAGE" and expect:
                    e = expect.pop(0)
                    assert len(data) == e["len"], f"MESSAGE of {len(data)} bytes, expected {e['len']}"
                    assert got == body(e["body"]), f"body of {len(got)} bytes differs from the {e['body']} expected"
                else:
                    raise AssertionError(f"unexpected {cmd} {headers}")
            print(f"ok - {step['name']}", flush=True)
        state["case"] = "disconnect"
        await ws.send(plan["disconnect"])
        await frame("RECEIPT")
    print("ok - disconnect", flush=True)


def main():
    url, plan = sys.argv[1], json.loads(sys.argv[2])
    state = {"case": "startup"}
    try:
        import websockets
    except ImportError as e:
        print(f"not ok - cannot import websockets ({e}); run install.sh", flush=True)
        sys.exit(1)
    print(f"# client websockets {websockets.__version__} on Python {sys.version.split()[0]}", flush=True)
    try:
        asyncio.run(asyncio.wait_for(run(url, plan, state), TOTAL_S))
    except Exception as e:  # noqa: BLE001
        why = str(e) or type(e).__name__
        print(f"not ok - {state['case']}: {why}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

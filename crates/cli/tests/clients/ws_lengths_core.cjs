// The WebSocket length-class exchange of crates/cli/tests/websocket_interop.rs, written
// against the WHATWG WebSocket API so that the same code runs in Chromium (loaded into
// the page by ws_lengths_chromium.mjs) and under Node with the `ws` package
// (ws_lengths_ws.mjs). The plan (built by the Rust test) says what to send and what
// must come back; see websocket_interop.rs for its fields.
//
// runLengths(WebSocketImpl, url, plan, log) calls log('ok - <case>') per case and
// resolves to null when every case passed, or to the reason of the first failure.
'use strict';

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const WAIT_MS = 10000;

// A body of n bytes, the same function as text_body in websocket_interop.rs.
function lengthsBody(n) {
  const a = new Array(n);
  for (let i = 0; i < n; i++) a[i] = ALNUM[(i * 7 + (i >> 8) + n) % ALNUM.length];
  return a.join('');
}

async function runLengths(WebSocketImpl, url, plan, log) {
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const inbox = [];
  let wake = null;
  let ended = null;
  let current = 'open';
  let globalTimer = null;
  const notify = () => {
    if (wake) {
      const w = wake;
      wake = null;
      w();
    }
  };

  const ws = new WebSocketImpl(url, ['v12.stomp']);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = ev => {
    inbox.push(typeof ev.data === 'string' ? enc.encode(ev.data) : new Uint8Array(ev.data));
    notify();
  };
  ws.onclose = ev => {
    ended = ended || `connection closed (${ev.code} ${ev.reason})`;
    notify();
  };
  ws.onerror = () => {
    ended = ended || 'connection error';
    notify();
  };

  // The next message (bytes) within WAIT_MS.
  async function next() {
    const deadline = Date.now() + WAIT_MS;
    while (inbox.length === 0) {
      if (ended) throw new Error(ended);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('nothing came within 10 s');
      await new Promise(resolve => {
        const t = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return inbox.shift();
  }

  // One STOMP frame per WebSocket message: command, headers, body bytes.
  function parse(bytes) {
    let end = -1;
    for (let i = 0; i + 1 < bytes.length; i++) {
      if (bytes[i] === 10 && bytes[i + 1] === 10) {
        end = i;
        break;
      }
    }
    if (end < 0 || bytes[bytes.length - 1] !== 0) {
      throw new Error(`not a STOMP frame: ${JSON.stringify(dec.decode(bytes.subarray(0, 80)))}`);
    }
    const lines = dec.decode(bytes.subarray(0, end)).split('\n');
    const headers = {};
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':');
      if (c > 0 && !(l.slice(0, c) in headers)) headers[l.slice(0, c)] = l.slice(c + 1);
    }
    return { command: lines[0], headers, body: bytes.subarray(end + 2, bytes.length - 1) };
  }

  function sameBody(got, n) {
    const want = enc.encode(lengthsBody(n));
    if (got.length !== want.length) return `body of ${got.length} bytes, expected ${n}`;
    for (let i = 0; i < n; i++) {
      if (got[i] !== want[i]) return `body differs at byte ${i}`;
    }
    return null;
  }

  async function frame(command) {
    const f = parse(await next());
    if (f.command !== command) {
      throw new Error(`expected ${command}, got ${f.command} ${f.headers.message || ''}`);
    }
    return f;
  }

  try {
    const timer = new Promise((_, reject) => {
      globalTimer = setTimeout(() => reject(new Error('global timeout 60 s')), 60000);
    });
    const run = (async () => {
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(ended || 'no open within 10 s')), WAIT_MS);
        ws.onopen = () => {
          clearTimeout(t);
          resolve();
        };
      });
      if (ws.protocol !== 'v12.stomp') throw new Error(`subprotocol ${JSON.stringify(ws.protocol)}`);
      log('ok - subprotocol v12.stomp');
      current = 'connect';
      ws.send(plan.connect);
      await frame('CONNECTED');
      log('ok - connect');
      current = 'subscribe';
      ws.send(plan.subscribe);
      await frame('RECEIPT');
      log('ok - subscribe');
      for (const step of plan.steps) {
        current = step.name;
        for (const out of step.send) {
          const text = out.frames.map(p => p.head + lengthsBody(p.body) + '\0').join('');
          const len = enc.encode(text).length;
          if (len !== out.len) throw new Error(`built a ${len}-byte message, the plan says ${out.len}`);
          ws.send(text);
        }
        const receipts = new Set(step.receipts);
        let expect = 0;
        while (receipts.size > 0 || expect < step.expect.length) {
          const bytes = await next();
          const f = parse(bytes);
          if (f.command === 'RECEIPT' && receipts.has(f.headers['receipt-id'])) {
            receipts.delete(f.headers['receipt-id']);
          } else if (f.command === 'MESSAGE' && expect < step.expect.length) {
            const e = step.expect[expect++];
            if (bytes.length !== e.len) {
              throw new Error(`MESSAGE of ${bytes.length} bytes, expected ${e.len}`);
            }
            const bad = sameBody(f.body, e.body);
            if (bad) throw new Error(bad);
          } else {
            throw new Error(`unexpected ${f.command} ${f.headers.message || f.headers['receipt-id'] || ''}`);
          }
        }
        log(`ok - ${step.name}`);
      }
      current = 'disconnect';
      ws.send(plan.disconnect);
      await frame('RECEIPT');
      ws.close(1000);
      log('ok - disconnect');
    })();
    await Promise.race([run, timer]);
    return null;
  } catch (e) {
    try {
      ws.close();
    } catch (_) {
      // already closed
    }
    return `${current}: ${e && e.message ? e.message : e}`;
  } finally {
    clearTimeout(globalTimer);
  }
}

if (typeof module !== 'undefined') module.exports = { runLengths, lengthsBody };

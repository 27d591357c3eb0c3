// Interop check with @stomp/stompjs over the `ws` package.
// Usage: node stompjs.mjs http://127.0.0.1:PORT
// Prints `ok - <check>` per check; exits 0 when all pass, 1 on the first failure.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const TOTAL_TIMEOUT_MS = 30_000;
const WAIT_MS = 5_000;
const QUIET_MS = 500;
const HEARTBEAT_MS = 1000;

const base = (process.argv[2] || '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.log('not ok - usage: node stompjs.mjs http://127.0.0.1:PORT');
  process.exit(1);
}
const wsUrl = `${base.replace(/^http/, 'ws')}/ws`;
const run = `${process.pid}-${Date.now()}`;

let current = 'startup';
function fail(reason) {
  console.log(`not ok - ${current}: ${reason}`);
  process.exit(1);
}
setTimeout(() => fail(`global timeout ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS);
process.on('unhandledRejection', e => fail(e && e.stack ? e.stack : String(e)));

async function check(name, fn) {
  current = name;
  let note;
  try {
    note = await fn();
  } catch (e) {
    fail(e && e.message ? e.message : String(e));
  }
  console.log(`ok - ${name}${note ? ` (${note})` : ''}`);
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]);
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

// Messages of one subscription, consumed in order.
class Inbox {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }
  push(m) {
    const w = this.waiters.shift();
    if (w) w(m);
    else this.items.push(m);
  }
  next(ms = WAIT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return withTimeout(
      new Promise(r => this.waiters.push(r)),
      ms,
      `a MESSAGE on ${this.name}`,
    ).catch(e => {
      this.waiters.shift();
      throw e;
    });
  }
  async none(ms = QUIET_MS) {
    await sleep(ms);
    assert(
      this.items.length === 0,
      `unexpected MESSAGE on ${this.name}: ${JSON.stringify(this.items[0] && this.items[0].body)}`,
    );
  }
}

let socket;
let stompError;
const client = new Client({
  webSocketFactory: () => {
    socket = new WebSocket(wsUrl, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
    return socket;
  },
  reconnectDelay: 0,
  heartbeatIncoming: HEARTBEAT_MS,
  heartbeatOutgoing: HEARTBEAT_MS,
  connectionTimeout: WAIT_MS,
  debug: process.env.STOMP_DEBUG ? s => console.error(s) : () => {},
});
client.onStompError = f => {
  stompError = f;
  fail(`ERROR frame: ${f.headers.message || ''} ${f.body}`);
};
let heartbeats = 0;
client.onHeartbeatReceived = () => heartbeats++;
client.onHeartbeatLost = () => fail('heart-beat lost: no data from server in time');
client.onUnhandledMessage = m => fail(`MESSAGE for unknown subscription ${m.headers.subscription}`);
client.onUnhandledReceipt = f => fail(`unexpected RECEIPT ${f.headers['receipt-id']}`);

function receipt(id) {
  return withTimeout(
    new Promise(r => client.watchForReceipt(id, r)),
    WAIT_MS,
    `RECEIPT ${id}`,
  );
}

async function subscribe(dest, headers = {}) {
  const inbox = new Inbox(dest);
  const rid = `sub-receipt-${dest}`;
  const got = receipt(rid);
  const sub = client.subscribe(dest, m => inbox.push(m), { ...headers, receipt: rid });
  await got;
  return { inbox, sub };
}

async function httpPublish(destination, body, headers) {
  const res = await fetch(`${base}/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ destination, body, headers }),
  });
  const text = await res.text();
  assert(res.status === 202, `POST /v1/publish: status ${res.status}: ${text}`);
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`POST /v1/publish: not JSON: ${text}`);
  }
  assert(typeof json.id === 'string' && json.id.length > 0, `POST /v1/publish: no id in ${text}`);
  return json.id;
}

const topic = `/topic/interop.stompjs.${run}`;
let main;
let connectedFrame;

await check('connect', async () => {
  const connected = new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onWebSocketClose = e => reject(new Error(`socket closed before CONNECTED (code ${e.code})`));
    client.onWebSocketError = e => reject(new Error(`socket error: ${e.message || e}`));
  });
  client.activate();
  const frame = await withTimeout(connected, WAIT_MS, 'CONNECTED');
  connectedFrame = frame;
  client.onWebSocketClose = () => {};
  client.onWebSocketError = () => {};
  assert(frame.headers.version === '1.2', `CONNECTED version ${frame.headers.version}, want 1.2`);
  assert(socket.protocol === 'v12.stomp', `negotiated subprotocol '${socket.protocol}', want v12.stomp`);
});

await check('subscribe with receipt', async () => {
  main = await subscribe(topic);
});

await check('http publish reaches subscriber', async () => {
  const body = `hello from http ${run} \u00e9\u2713`;
  // Server must escape it in MESSAGE. (stompjs 7 mis-decodes a backslash before c/n/r.)
  const header = 'a:b\\x';
  await httpPublish(topic, body, { 'x-interop': header });
  const m = await main.inbox.next();
  assert(m.body === body, `body ${JSON.stringify(m.body)}, want ${JSON.stringify(body)}`);
  assert(m.headers['message-id'], 'no message-id header');
  assert(m.headers.subscription === main.sub.id, `subscription header ${m.headers.subscription}, want ${main.sub.id}`);
  assert(m.headers.destination === topic, `destination header ${m.headers.destination}`);
  const got = m.headers['x-interop'];
  assert(got === header, `x-interop header ${JSON.stringify(got)}, want ${JSON.stringify(header)}`);
});

await check('send reaches own subscription', async () => {
  const got = receipt('send-1');
  const header = 'x:y\\z'; // stompjs sends it escaped
  client.publish({ destination: topic, body: 'plain send', headers: { receipt: 'send-1', 'x-interop': header } });
  await got;
  const m = await main.inbox.next();
  assert(m.body === 'plain send', `body ${JSON.stringify(m.body)}`);
  assert(m.headers['message-id'], 'no message-id header');
  assert(m.headers.receipt === undefined, 'MESSAGE carries the SEND receipt header');
  const h = m.headers['x-interop'];
  assert(h === header, `x-interop header ${JSON.stringify(h)}, want ${JSON.stringify(header)}`);
});

await check('transaction abort drops sends', async () => {
  const tx = client.begin();
  client.publish({ destination: topic, body: 'aborted 1', headers: { transaction: tx.id } });
  client.publish({ destination: topic, body: 'aborted 2', headers: { transaction: tx.id } });
  tx.abort();
  await main.inbox.none();
});

await check('transaction commit delivers', async () => {
  const tx = client.begin();
  client.publish({ destination: topic, body: 'committed', headers: { transaction: tx.id } });
  await main.inbox.none(300);
  tx.commit();
  const m = await main.inbox.next();
  assert(m.body === 'committed', `body ${JSON.stringify(m.body)}`);
  await main.inbox.none(200);
});

await check('client-individual ack', async () => {
  const dest = `${topic}.acks`;
  const { inbox, sub } = await subscribe(dest, { ack: 'client-individual' });
  for (let i = 0; i < 3; i++) await httpPublish(dest, `ack-${i}`);
  const msgs = [];
  for (let i = 0; i < 3; i++) msgs.push(await inbox.next());
  const bodies = msgs.map(m => m.body).sort();
  assert(JSON.stringify(bodies) === '["ack-0","ack-1","ack-2"]', `bodies ${JSON.stringify(bodies)}`);
  for (const m of msgs) {
    assert(m.headers.ack, `MESSAGE ${m.headers['message-id']} has no ack header`);
    assert(m.headers.subscription === sub.id, `subscription header ${m.headers.subscription}`);
  }
  // Ack in reverse order: each ack covers only its own message.
  for (const [i, m] of msgs.reverse().entries()) {
    const got = receipt(`ack-receipt-${i}`);
    m.ack({ receipt: `ack-receipt-${i}` });
    await got;
  }
  const got = receipt('unsub-acks');
  sub.unsubscribe({ receipt: 'unsub-acks' });
  await got;
});

await check('heart-beat', async () => {
  const sx = parseInt((connectedFrame.headers['heart-beat'] || '0,0').split(',')[0], 10) || 0;
  if (sx === 0) return 'server sends none';
  const interval = Math.max(HEARTBEAT_MS, sx);
  if (interval > 3000) return `server interval ${interval} ms, not waited`;
  // stompjs also counts a newline after a frame's NUL as a ping; no frames arrive here.
  const before = heartbeats;
  const deadline = Date.now() + 2 * interval + 1000;
  while (Date.now() < deadline) {
    if (heartbeats > before) return `every ${interval} ms`;
    await sleep(50);
  }
  throw new Error(`no heart-beat within ${2 * interval + 1000} ms (negotiated ${interval} ms)`);
});

await check('disconnect with receipt', async () => {
  let receiptFrame;
  client.onDisconnect = f => {
    receiptFrame = f;
  };
  const closed = new Promise(r => {
    client.onWebSocketClose = r;
  });
  await withTimeout(client.deactivate(), WAIT_MS, 'RECEIPT for DISCONNECT and socket close');
  const ev = await closed;
  assert(receiptFrame, 'socket closed without a RECEIPT for DISCONNECT');
  assert(/^close-/.test(receiptFrame.headers['receipt-id']), `receipt-id ${receiptFrame.headers['receipt-id']}`);
  assert(ev.wasClean, `close not clean (code ${ev.code})`);
  assert(ev.code === 1000 || ev.code === 1005, `close code ${ev.code}`);
  assert(!stompError, 'ERROR frame seen');
});

process.exit(0);

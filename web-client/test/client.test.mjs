// Unit tests of the client's logic against scripted in-process nodes (a fake WebSocket
// that speaks just enough STOMP) and a scripted registry. The real thing (real nodes,
// real registry, real Chromium) is tested by crates/cli/tests/web_client.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PushClient, backoffDelay, fatalReason, nodeOfSession, discoveryUrl, parseMessageId, resumeHeader, advance, DEFAULT_BACKOFF } from '../dist/index.js';

/** One scripted node: what it answers to CONNECT, and every frame it got. */
class FakeNode {
  constructor(id, behaviour = 'accept') {
    this.id = id;
    this.behaviour = behaviour; // 'accept' | 'down' | { error: '...' }
    this.sockets = [];
    this.frames = [];
    this.sessions = 0;
  }
  get url() {
    return `ws://${this.id}.test/ws`;
  }
  /** The server goes away: every open socket closes with `code`. */
  kill(code = 1006) {
    for (const s of this.sockets) s.serverClose(code);
  }
  push(frame) {
    for (const s of this.sockets) if (s.readyState === 1) s.deliver(frame);
  }
  sent(command) {
    return this.frames.filter(f => f.command === command);
  }
  /** What a SUBSCRIBE's RECEIPT carries: the start position, the resume outcome. */
  receiptHeaders(f) {
    if (f.headers['resume-from'] !== undefined) return this.resumeAnswer ?? { resume: 'ok', position: this.position ?? '' };
    return { position: this.position ?? '' };
  }
}

function parse(data) {
  const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
  if (text === '\n' || text === '\r\n') return null;
  const [head, ...rest] = text.split('\n\n');
  const [command, ...lines] = head.split('\n');
  const headers = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    if (!(l.slice(0, i) in headers)) headers[l.slice(0, i)] = l.slice(i + 1);
  }
  return { command, headers, body: rest.join('\n\n').replace(/\0$/, '') };
}

function frame(command, headers, body = '') {
  return command + '\n' + Object.entries(headers).map(([k, v]) => `${k}:${v}`).join('\n') + '\n\n' + body + '\0';
}

class FakeSocket {
  constructor(node) {
    this.node = node;
    this.url = node.url;
    this.readyState = 0;
    this.binaryType = 'arraybuffer';
    node.sockets.push(this);
    setTimeout(() => {
      if (node.behaviour === 'down') return this.serverClose(1006);
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(data) {
    const f = parse(data);
    if (!f) return;
    this.node.frames.push(f);
    const reply = (...a) => setTimeout(() => this.deliver(frame(...a)), 0);
    if (f.command === 'CONNECT') {
      if (this.node.behaviour.error) {
        reply('ERROR', { message: this.node.behaviour.error });
        setTimeout(() => this.serverClose(1002), 1);
      } else {
        reply('CONNECTED', { version: '1.2', 'heart-beat': '0,0', session: `${this.node.id}-${++this.node.sessions}` });
      }
    } else if (f.headers.receipt) {
      const extra = f.command === 'SUBSCRIBE' ? this.node.receiptHeaders(f) : {};
      reply('RECEIPT', { 'receipt-id': f.headers.receipt, ...extra });
    }
  }
  deliver(data) {
    if (this.readyState === 1) this.onmessage?.({ data });
  }
  close() {
    this.serverClose(1000);
  }
  serverClose(code) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason: '', wasClean: code === 1000 }), 0);
  }
}

/** A registry that hands out the first node not avoided (or the only one left). */
function registry(nodes) {
  const calls = [];
  const fetch = async url => {
    calls.push(url);
    const avoid = new URL(url).searchParams.get('avoid')?.split(',') ?? [];
    const live = nodes.filter(n => n.behaviour !== 'gone');
    const n = live.find(n => !avoid.includes(n.id)) ?? live[0];
    if (!n) return new Response(JSON.stringify({ error: 'no live node' }), { status: 503 });
    return new Response(JSON.stringify({ node_id: n.id, ws_url: n.url }), { status: 200 });
  };
  return { fetch, calls };
}

function client(nodes, extra = {}) {
  const reg = registry(nodes);
  const states = [];
  const c = new PushClient({
    registryUrl: 'http://registry.test',
    fetch: reg.fetch,
    webSocketFactory: url => new FakeSocket(nodes.find(n => n.url === url)),
    heartbeatMs: 0,
    connectTimeoutMs: 500,
    backoff: { initialMs: 5, maxMs: 40 },
    random: () => 0.5,
    ...extra,
  });
  c.onState(s => states.push(s));
  return { c, reg, states };
}

async function until(what, cond, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise(r => setTimeout(r, 2));
  }
}

test('backoff doubles from the initial delay, is capped, and jitters within its fraction', () => {
  const b = { initialMs: 500, maxMs: 15_000, factor: 2, jitter: 0 };
  assert.deepEqual([1, 2, 3, 4, 6, 10].map(n => backoffDelay(n, b)), [500, 1000, 2000, 4000, 15_000, 15_000]);
  const j = { ...b, jitter: 0.5 };
  assert.equal(backoffDelay(3, j, () => 0), 1000);
  assert.equal(backoffDelay(3, j, () => 0.999999), 2000);
  assert.deepEqual(DEFAULT_BACKOFF, { initialMs: 500, maxMs: 15_000, factor: 2, jitter: 0.5 });
});

test('refusals that a reconnect cannot cure are told apart', () => {
  assert.equal(fatalReason('unauthorized: token expired'), 'unauthorized');
  assert.equal(fatalReason('forbidden: subscribe /topic/x'), 'forbidden');
  assert.equal(fatalReason('slow consumer'), null);
  assert.equal(fatalReason('server shutting down'), null);
  assert.equal(fatalReason(undefined), null);
});

test('node ids come from session ids; discovery URLs carry user and avoid', () => {
  assert.equal(nodeOfSession('node-a-17'), 'node-a');
  assert.equal(nodeOfSession('node-a-0123456789ab-17'), 'node-a');
  assert.equal(nodeOfSession('n1-ab12cd34ef56-3'), 'n1');
  assert.equal(nodeOfSession('x'), null);
  assert.equal(discoveryUrl('http://r:8090/', 'alice', ['n1']), 'http://r:8090/v1/connect?user=alice&avoid=n1');
  assert.equal(discoveryUrl('http://r:8090'), 'http://r:8090/v1/connect');
});

test('connects through the registry, and after losing its node reconnects elsewhere and resubscribes', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  const { c, reg, states } = client([n1, n2]);
  const got = [];
  c.subscribe('/topic/a', m => got.push(m.body));
  c.start();
  await until('connected to n1', () => c.state.state === 'connected');
  assert.equal(c.state.nodeId, 'n1');
  assert.equal(c.state.sessionId, 'n1-1');
  assert.deepEqual(n1.sent('SUBSCRIBE').map(f => [f.headers.id, f.headers.destination]), [['sub-0', '/topic/a']]);
  n1.push(frame('MESSAGE', { destination: '/topic/a', subscription: 'sub-0', 'message-id': '0-1' }, 'one'));
  await until('first message', () => got.length === 1);

  n1.behaviour = 'gone';
  n1.kill(1006);
  await until('connected to n2', () => c.state.state === 'connected' && c.state.nodeId === 'n2');
  assert.match(reg.calls.at(-1), /avoid=n1/);
  assert.deepEqual(n2.sent('SUBSCRIBE').map(f => [f.headers.id, f.headers.destination]), [['sub-0', '/topic/a']]);
  n2.push(frame('MESSAGE', { destination: '/topic/a', subscription: 'sub-0', 'message-id': '0-2' }, 'two'));
  await until('second message', () => got.length === 2);
  assert.deepEqual(got, ['one', 'two']);
  assert.deepEqual(
    states.map(s => s.state).filter((s, i, a) => s !== a[i - 1]),
    ['connecting', 'connected', 'reconnecting', 'connected'],
  );
  await c.stop();
  assert.equal(c.state.state, 'stopped');
});

test('a node that cannot be reached is retried with growing delays', async () => {
  const n1 = new FakeNode('n1', 'down');
  const { c, reg } = client([n1]);
  c.start();
  await until('three failed attempts', () => c.state.attempt >= 3);
  assert.equal(c.state.state, 'reconnecting');
  assert.ok(reg.calls.length >= 3, 'each attempt asks the registry again');
  n1.behaviour = 'accept';
  await until('connected', () => c.state.state === 'connected');
  assert.equal(c.state.attempt, 0);
  await c.stop();
});

test('an unreachable registry is retried too', async () => {
  let up = false;
  const n1 = new FakeNode('n1');
  const reg = registry([n1]);
  const c = new PushClient({
    registryUrl: 'http://registry.test',
    fetch: async url => {
      if (!up) throw new TypeError('fetch failed');
      return reg.fetch(url);
    },
    webSocketFactory: () => new FakeSocket(n1),
    heartbeatMs: 0,
    connectTimeoutMs: 500,
    backoff: { initialMs: 5, maxMs: 20 },
  }).start();
  await until('two failed discoveries', () => c.state.attempt >= 2);
  assert.match(c.state.reason, /^discovery: fetch failed/);
  up = true;
  await until('connected', () => c.state.state === 'connected');
  await c.stop();
});

test('an invalid token stops the client with the reason, and nothing more is tried', async () => {
  const n1 = new FakeNode('n1', { error: 'unauthorized: invalid token signature' });
  const { c } = client([n1], { token: 'bad' });
  c.start();
  await until('stopped', () => c.state.state === 'stopped');
  assert.equal(c.state.reason, 'unauthorized: invalid token signature');
  assert.equal(n1.sent('CONNECT')[0].headers.passcode, 'bad');
  await new Promise(r => setTimeout(r, 100));
  assert.equal(n1.sockets.length, 1, 'no further connection attempts');
});

test('a refused token is refreshed once through the callback, then the client stops', async () => {
  const n1 = new FakeNode('n1', { error: 'unauthorized: token expired' });
  const asked = [];
  const { c } = client([n1], {
    token: 'old',
    refreshToken: reason => {
      asked.push(reason);
      return 'new';
    },
  });
  c.start();
  await until('stopped', () => c.state.state === 'stopped');
  assert.deepEqual(asked, ['unauthorized: token expired']);
  assert.deepEqual(n1.sent('CONNECT').map(f => f.headers.passcode), ['old', 'new']);
});

test('a refreshed token that works keeps the client going', async () => {
  const n1 = new FakeNode('n1', { error: 'unauthorized: token expired' });
  const { c } = client([n1], {
    token: 'old',
    refreshToken: () => {
      n1.behaviour = 'accept';
      return 'new';
    },
  });
  c.start();
  await until('connected', () => c.state.state === 'connected');
  assert.deepEqual(n1.sent('CONNECT').map(f => f.headers.passcode), ['old', 'new']);
  await c.stop();
});

test('forbidden stops the client too', async () => {
  const n1 = new FakeNode('n1');
  const { c } = client([n1]);
  c.start();
  await until('connected', () => c.state.state === 'connected');
  n1.push(frame('ERROR', { message: 'forbidden: subscribe /topic/secret' }));
  n1.kill(1002);
  await until('stopped', () => c.state.state === 'stopped');
  assert.equal(c.state.reason, 'forbidden: subscribe /topic/secret');
});

test('an operator who says not to reconnect stops the client', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  const { c, reg } = client([n1, n2]);
  c.start();
  await until('connected', () => c.state.state === 'connected');
  const calls = reg.calls.length;
  n1.push(frame('ERROR', { message: 'logged out', reconnect: 'false' }));
  n1.kill(1000);
  await until('stopped', () => c.state.state === 'stopped');
  assert.equal(c.state.reason, 'logged out');
  await new Promise(r => setTimeout(r, 50));
  assert.equal(reg.calls.length, calls, 'the registry is not asked again');
});

test('an operator who says to reconnect is followed at once, without counting a failure', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  const { c, states } = client([n1, n2], { backoff: { initialMs: 5, maxMs: 10_000, factor: 1000 } });
  c.start();
  await until('connected', () => c.state.state === 'connected');
  n1.push(frame('ERROR', { message: 'moved', reconnect: 'true' }));
  n1.kill(1000);
  await until('on n2', () => c.state.nodeId === 'n2' && c.state.state === 'connected');
  assert.ok(states.every(s => s.attempt === 0), 'no attempt counted as failed');
  await c.stop();
});

test('a draining node (close 1012) is left at once, without counting a failure', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  const { c, reg, states } = client([n1, n2], { backoff: { initialMs: 5, maxMs: 10_000, factor: 1000 } });
  c.start();
  await until('connected', () => c.state.state === 'connected');
  n1.push(frame('ERROR', { message: 'server shutting down' }));
  n1.kill(1012);
  await until('on n2', () => c.state.nodeId === 'n2' && c.state.state === 'connected');
  assert.match(reg.calls.at(-1), /avoid=n1/);
  assert.ok(states.every(s => s.attempt === 0), 'no attempt counted as failed');
  assert.ok(states.some(s => s.reason === 'server shutting down'), 'the reason is shown meanwhile');
  await c.stop();
});

test('onRequest answers with the correlation id, and errors are answered too', async () => {
  const n1 = new FakeNode('n1');
  const { c } = client([n1]);
  c.onRequest('/user/queue/requests', m => {
    if (m.body === 'boom') throw new Error('cannot do that');
    return { body: `done: ${m.body}`, headers: { 'content-type': 'text/plain' } };
  });
  c.start();
  await until('connected', () => c.state.state === 'connected');
  const req = (id, body) =>
    frame('MESSAGE', { destination: '/user/queue/requests', subscription: 'sub-0', 'message-id': id, 'correlation-id': `c-${id}`, 'reply-to': '/reply/n7' }, body);
  n1.push(req('1', 'open door'));
  n1.push(req('2', 'boom'));
  n1.push(frame('MESSAGE', { destination: '/user/queue/requests', subscription: 'sub-0', 'message-id': '3' }, 'not a request'));
  await until('two answers', () => n1.sent('SEND').length === 2);
  await new Promise(r => setTimeout(r, 20));
  const sends = n1.sent('SEND');
  assert.equal(sends.length, 2, 'a message without correlation-id is not answered');
  assert.deepEqual(
    sends.map(f => [f.headers.destination, f.headers['correlation-id'], f.body, f.headers['reply-error'] ?? null]),
    [
      ['/reply/n7', 'c-1', 'done: open door', null],
      ['/reply/n7', 'c-2', '', 'cannot do that'],
    ],
  );
  assert.equal(sends[0].headers['content-type'], 'text/plain');
  await c.stop();
});

test('publish resolves on the receipt and refuses when not connected; setToken sends the token', async () => {
  const n1 = new FakeNode('n1');
  const { c } = client([n1]);
  await assert.rejects(c.publish('/topic/a', 'x'), /not connected/);
  c.start();
  await until('connected', () => c.state.state === 'connected');
  await c.publish('/topic/a', 'hello', { k: 'v' });
  const [send] = n1.sent('SEND');
  assert.equal(send.body, 'hello');
  assert.equal(send.headers.k, 'v');
  await c.setToken('fresh');
  assert.deepEqual(n1.sent('SEND').map(f => [f.headers.destination, f.headers.passcode]).at(-1), ['/session/token', 'fresh']);
  await c.stop();
});

test('unsubscribe is forgotten across reconnects', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  const { c } = client([n1, n2]);
  const a = c.subscribe('/topic/a', () => {});
  c.subscribe('/topic/b', () => {});
  c.start();
  await until('connected', () => c.state.state === 'connected');
  a.unsubscribe();
  assert.deepEqual(n1.sent('UNSUBSCRIBE').map(f => f.headers.id), ['sub-0']);
  n1.behaviour = 'gone';
  n1.kill();
  await until('on n2', () => c.state.nodeId === 'n2' && c.state.state === 'connected');
  assert.deepEqual(n2.sent('SUBSCRIBE').map(f => f.headers.destination), ['/topic/b']);
  await c.stop();
});

test('message ids parse into stream and offset; positions keep the highest', () => {
  assert.deepEqual(parseMessageId('3-17'), ['3', 17]);
  assert.deepEqual(parseMessageId('node-a-5'), ['node-a', 5]);
  assert.equal(parseMessageId('x'), null);
  assert.equal(parseMessageId('3-x'), null);
  const p = new Map();
  for (const id of ['0-5', '1-2', '0-3', '0-9', 'junk']) advance(p, id);
  assert.equal(resumeHeader(p), '0-9,1-2');
});

test('each subscription resumes after a reconnect from the last message it saw', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  n1.position = '0-10,1-4';
  const lost = [];
  const { c } = client([n1, n2], { onResumeLost: (sub, streams) => lost.push([sub.destination, streams]) });
  const got = [];
  c.subscribe('/topic/a', m => got.push(m.headers['message-id']));
  c.subscribe('/topic/b', () => {});
  c.start();
  await until('connected', () => c.state.state === 'connected');
  assert.equal(n1.sent('SUBSCRIBE')[0].headers['resume-from'], undefined, 'a first subscribe starts fresh');
  await until('receipts', () => n1.sent('SUBSCRIBE').length === 2);
  await new Promise(r => setTimeout(r, 20));
  n1.push(frame('MESSAGE', { destination: '/topic/a', subscription: 'sub-0', 'message-id': '0-11' }, 'x'));
  n1.push(frame('MESSAGE', { destination: '/topic/a', subscription: 'sub-0', 'message-id': '2-0' }, 'y'));
  await until('two messages', () => got.length === 2);

  n2.resumeAnswer = { resume: 'lost', 'resume-lost': '1', position: '0-12,1-9,2-0' };
  n1.behaviour = 'gone';
  n1.kill();
  await until('on n2', () => c.state.nodeId === 'n2' && c.state.state === 'connected');
  const subs = n2.sent('SUBSCRIBE');
  assert.deepEqual(
    subs.map(f => [f.headers.destination, f.headers['resume-from']]),
    [
      ['/topic/a', '0-11,1-4,2-0'],
      ['/topic/b', '0-10,1-4'],
    ],
  );
  await until('lost reported', () => lost.length === 2);
  assert.deepEqual(lost[0], ['/topic/a', ['1']]);
  await c.stop();
});

test('position updates move every partition of a subscription forward, and only its own', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  n1.position = '0-10,1-4';
  const { c } = client([n1, n2]);
  c.subscribe('/topic/a', () => {});
  c.subscribe('/topic/b', () => {});
  c.start();
  await until('connected', () => c.state.state === 'connected');
  assert.equal(n1.sent('CONNECT')[0].headers['position-updates'], 'on');
  await until('receipts', () => n1.sent('SUBSCRIBE').length === 2);
  await new Promise(r => setTimeout(r, 20));
  n1.push(frame('RECEIPT', { 'receipt-id': 'position', subscription: 'sub-0', position: '0-50,1-40,2-7' }));
  // Never backwards.
  n1.push(frame('RECEIPT', { 'receipt-id': 'position', subscription: 'sub-1', position: '0-3' }));
  await new Promise(r => setTimeout(r, 20));
  n1.behaviour = 'gone';
  n1.kill();
  await until('on n2', () => c.state.nodeId === 'n2' && c.state.state === 'connected');
  assert.deepEqual(
    n2.sent('SUBSCRIBE').map(f => [f.headers.destination, f.headers['resume-from']]),
    [
      ['/topic/a', '0-50,1-40,2-7'],
      ['/topic/b', '0-10,1-4'],
    ],
  );
  await c.stop();
});

test('resume: false subscribes fresh after a reconnect', async () => {
  const n1 = new FakeNode('n1');
  const n2 = new FakeNode('n2');
  n1.position = '0-1';
  const { c } = client([n1, n2], { resume: false });
  c.subscribe('/topic/a', () => {});
  c.start();
  await until('connected', () => c.state.state === 'connected');
  await new Promise(r => setTimeout(r, 20));
  n1.behaviour = 'gone';
  n1.kill();
  await until('on n2', () => c.state.nodeId === 'n2' && c.state.state === 'connected');
  assert.equal(n2.sent('SUBSCRIBE')[0].headers['resume-from'], undefined);
  assert.equal(n1.sent('CONNECT')[0].headers['position-updates'], undefined);
  await c.stop();
});

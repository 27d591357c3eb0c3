// The demo page (pushcenter-client inside) in real headless Chromium against a two-node
// cluster behind a registry: discovery, a push, request/reply, kill -9 of the page's node
// and the reconnect, and a refused token.
// Usage: node web_client.mjs REGISTRY_URL SCREENSHOT.png
// Env: NODES="n1=<http url>=<pid>,n2=...", JWT_SECRET, API_KEY, CHROMIUM.
// Prints `ok - <check>` per check (and `reconnect_ms <n>`); exits 1 on the first failure.
import { createHmac } from 'node:crypto';
import { chromium } from 'playwright-core';

const registry = (process.argv[2] || '').replace(/\/+$/, '');
const shot = process.argv[3];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const nodes = Object.fromEntries(
  process.env.NODES.split(',').map(e => {
    const [id, http, pid] = e.split('=');
    return [id, { http, pid: Number(pid) }];
  }),
);
const apiKey = process.env.API_KEY;

function jwt(claims) {
  const b64 = o => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + createHmac('sha256', process.env.JWT_SECRET).update(head).digest('base64url');
}

async function api(node, path, body) {
  const res = await fetch(`${nodes[node].http}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function stats(node) {
  return (await fetch(`${nodes[node].http}/v1/stats`)).json();
}

const shows = (page, text) =>
  page.waitForFunction(t => [...document.querySelectorAll('#messages pre')].some(p => p.textContent === t), text, {
    timeout: 10_000,
  });

let browser;
async function main() {
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(String(e)));

  const token = jwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 600 });
  await page.goto(`${registry}/demo?subscribe=/topic/web&respond=1&token=${token}`);
  await page.waitForSelector('#state.connected', { timeout: 10_000 });
  const first = await page.textContent('#node');
  if (!nodes[first]) throw new Error(`page shows node ${first}`);
  const other = Object.keys(nodes).find(n => n !== first);
  console.log(`ok - page connects through the registry (to ${first})`);

  // Published on the other node: it reaches the page through Kafka.
  let r = await api(other, '/v1/publish', { destination: '/topic/web', body: 'before the kill' });
  if (r.status !== 202) throw new Error(`publish: ${r.status} ${JSON.stringify(r.body)}`);
  await shows(page, 'before the kill');
  console.log('ok - page shows a message published over HTTP');

  r = await api(other, '/v1/requests', {
    user: 'alice',
    destination: '/user/queue/requests',
    body: 'ping',
    timeout_ms: 5000,
  });
  if (r.status !== 200 || r.body.reply?.body !== 'done: ping') {
    throw new Error(`request: ${r.status} ${JSON.stringify(r.body)}`);
  }
  console.log('ok - request/reply answered by the page');

  const killed = Date.now();
  process.kill(nodes[first].pid, 'SIGKILL');
  // Published while the page has no node: resume brings it.
  r = await api(other, '/v1/publish', { destination: '/topic/web', body: 'while away' });
  if (r.status !== 202) throw new Error(`publish: ${r.status}`);
  await page.waitForFunction(
    n => document.querySelector('#state').className === 'connected' && document.querySelector('#node').textContent === n,
    other,
    { timeout: 15_000 },
  );
  console.log(`reconnect_ms ${Date.now() - killed}`);
  console.log(`ok - page reconnects to ${other} by itself`);

  // The subscription was restored: a message published now arrives.
  const after = `after the kill ${Date.now()}`;
  r = await api(other, '/v1/publish', { destination: '/topic/web', body: after });
  if (r.status !== 202) throw new Error(`publish: ${r.status}`);
  await shows(page, after);
  console.log('ok - restored subscription gets the next message');
  await shows(page, 'while away');
  const copies = await page.evaluate(
    () => [...document.querySelectorAll('#messages pre')].filter(p => p.textContent === 'while away').length,
  );
  if (copies !== 1) throw new Error(`'while away' shown ${copies} times`);
  console.log('ok - a message published while away arrives once (resume)');
  if (shot) await page.screenshot({ path: shot, fullPage: true });

  // A bad token: the page shows why and stops; the node sees no further attempts.
  const before = (await stats(other)).connections_total;
  const bad = await browser.newPage();
  bad.on('pageerror', e => errors.push(String(e)));
  await bad.goto(`${registry}/demo?subscribe=/topic/web&token=not.a.token`);
  await bad.waitForSelector('#state.stopped', { timeout: 10_000 });
  const reason = await bad.textContent('#reason');
  // Unescaped: the node sends a pre-CONNECTED ERROR as STOMP 1.0.
  if (reason !== 'unauthorized: invalid token') throw new Error(`reason shown: ${reason}`);
  console.log(`ok - bad token stops the page with the reason (${reason})`);
  await new Promise(res => setTimeout(res, 3000));
  const attempts = (await stats(other)).connections_total - before;
  if (attempts !== 1) throw new Error(`${attempts} connections for the bad token, want 1`);
  console.log('ok - no further connection attempts');

  // An operator disconnects alice and says not to come back: the page stops there.
  const beforeOp = (await stats(other)).connections_total;
  r = await api(other, '/v1/disconnect', { user: 'alice', reason: 'logged out', reconnect: false });
  if (r.status !== 200 || r.body.closed !== 1) throw new Error(`disconnect: ${r.status} ${JSON.stringify(r.body)}`);
  await page.waitForSelector('#state.stopped', { timeout: 10_000 });
  const why = await page.textContent('#reason');
  if (why !== 'logged out') throw new Error(`reason shown after the disconnect: ${why}`);
  await new Promise(res => setTimeout(res, 2000));
  const again = (await stats(other)).connections_total - beforeOp;
  if (again !== 0) throw new Error(`${again} connections after reconnect: false, want 0`);
  console.log('ok - told not to reconnect, the page stops and does not reconnect');

  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
  console.log('ok - no page errors');
}

main()
  .then(() => browser.close())
  .catch(async e => {
    console.log(`not ok - ${e && e.message ? e.message : e}`);
    if (browser) await browser.close();
    process.exit(1);
  });

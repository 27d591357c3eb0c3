// The registry dashboard in real headless Chromium, while traffic runs: the node list,
// charts that fill with each node's numbers, and an admin call made from the page.
// Usage: node dashboard.mjs REGISTRY_URL SCREENSHOT.png
// Env: NODES="n1,n2" (every node expected), BUSY="n1,n2" (nodes expected to deliver),
//      API_KEY, PRESENCE="<user>=<node>" (a connected user and the node holding it),
//      CHROMIUM, HOLD_S (seconds to keep charting before the screenshot, default 0).
// Prints `ok - <check>` per check; exits 1 on the first failure.
import { chromium } from 'playwright-core';

const registry = (process.argv[2] || '').replace(/\/+$/, '');
const shot = process.argv[3];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const nodes = process.env.NODES.split(',');
const busy = (process.env.BUSY || process.env.NODES).split(',');
const [user, userNode] = process.env.PRESENCE.split('=');
const apiKey = process.env.API_KEY;
const hold = Number(process.env.HOLD_S || 0) * 1000;

// The chart's series for `node` (its position in the legend), newest last.
const series = (page, chart, node) =>
  page.evaluate(
    ([chart, node]) => {
      const u = window.dashboard.charts[chart];
      if (!u) return null;
      const i = u.series.findIndex(s => s.label === node || s.label === node + ' (draining)');
      return i > 0 ? u.data[i] : null;
    },
    [chart, node],
  );

let browser;
async function main() {
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  let refusal = false; // while the wrong key is tried, its 401 is no error
  page.on('pageerror', e => errors.push(String(e)));
  // A Content-Security-Policy refusal or a missing asset shows here.
  page.on('console', m => {
    if (m.type() === 'error' && !(refusal && /status of 401/.test(m.text()))) errors.push(m.text());
  });
  await page.goto(`${registry}/`);

  await page.waitForFunction(
    ids => ids.every(id => document.querySelector(`#nodes tr[data-node="${id}"] td.state`)?.textContent === 'live'),
    nodes,
    { timeout: 15_000 },
  );
  console.log(`ok - node list shows ${nodes.join(', ')} live`);

  // Charts have data once two samples of a node gave a rate and a latency quantile.
  await page.waitForFunction(
    ([busy, nodes]) => {
      const d = window.dashboard;
      const col = (chart, id) => {
        const u = d.charts[chart];
        const i = u ? u.series.findIndex(s => s.label === id) : -1;
        return i > 0 ? u.data[i] : [];
      };
      return (
        d.history.length >= 3 &&
        busy.every(id => col('deliveries', id).some(v => v > 0)) &&
        nodes.every(id => col('connections', id).some(v => v > 0)) &&
        busy.some(id => col('publishes', id).some(v => v > 0)) &&
        busy.some(id => col('latency', id).some(v => v > 0))
      );
    },
    [busy, nodes],
    { timeout: 30_000, polling: 250 },
  );
  for (const id of busy) {
    const deliveries = (await series(page, 'deliveries', id)).filter(v => v != null);
    const latency = (await series(page, 'latency', id)).filter(v => v != null);
    console.log(
      `${id}: deliveries/s ${deliveries.map(v => v.toFixed(0)).join(' ')}; p99 ms ${latency.map(v => v.toFixed(1)).join(' ')}`,
    );
  }
  const xs = await page.evaluate(() => window.dashboard.charts.deliveries.data[0].length);
  console.log(`ok - charts have data (${xs} samples; deliveries/s > 0 on ${busy.join(', ')})`);
  const p99 = await page.evaluate(() => [...document.querySelectorAll('#nodes td.latency')].map(td => td.textContent));
  if (!p99.some(t => / ms$/.test(t))) throw new Error(`no p99 in the node list: ${p99}`);
  console.log(`ok - p99 latency shown (${p99.join(', ')})`);
  const lag = await page.evaluate(() => [...document.querySelectorAll('#nodes td.lag')].map(td => td.textContent));
  if (!lag.every(t => /^\d+$/.test(t))) throw new Error(`Kafka lag not shown for every node: ${lag}`);
  console.log(`ok - Kafka lag shown (${lag.join(', ')})`);

  // A wrong key: the node refuses it, the page says so.
  refusal = true;
  await page.fill('#api-key', 'not-the-key');
  await page.fill('#presence-form input[name=user]', user);
  await page.click('#presence-form button');
  await page.waitForFunction(() => /: 401/.test(document.querySelector('#admin-status').textContent), null, {
    timeout: 10_000,
  });
  refusal = false;
  console.log('ok - a wrong API key is refused (401)');

  await page.fill('#api-key', apiKey);
  await page.click('#presence-form button');
  const row = await page.waitForSelector('#presence-sessions tr[data-session]', { timeout: 10_000 });
  const where = await row.$eval('td.node', td => td.textContent);
  if (where !== userNode) throw new Error(`presence shows ${user} on ${where}, want ${userNode}`);
  const status = await page.textContent('#admin-status');
  console.log(`ok - presence of ${user} from the page: on ${where} (${status})`);
  const stored = await page.evaluate(() => [sessionStorage.length, localStorage.length, document.cookie]);
  if (stored[0] !== 1 || stored[1] !== 0 || stored[2] !== '') throw new Error(`key storage: ${stored}`);
  console.log('ok - the key is in sessionStorage only');

  if (hold) await page.waitForTimeout(hold);
  if (shot) await page.screenshot({ path: shot });
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

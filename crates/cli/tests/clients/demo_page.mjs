// The node's demo page in real headless Chromium (Debian's, driven by playwright-core):
// it connects, subscribes, and shows a message published over HTTP.
// Usage: node demo_page.mjs http://127.0.0.1:PORT SCREENSHOT.png
// Prints `ok - <check>` per check; exits 1 on the first failure.
import { chromium } from 'playwright-core';

const base = (process.argv[2] || '').replace(/\/+$/, '');
const shot = process.argv[3];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

let browser;
async function main() {
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(String(e)));

  await page.goto(`${base}/?subscribe=/topic/demo.page`);
  await page.waitForSelector('#state.connected', { timeout: 10_000 });
  console.log('ok - page connects over STOMP');

  const body = `hello page ${Date.now()}`;
  const res = await fetch(`${base}/v1/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ destination: '/topic/demo.page', body }),
  });
  if (res.status !== 202) throw new Error(`publish answered ${res.status}`);
  await page.waitForFunction(
    text => [...document.querySelectorAll('#messages pre')].some(p => p.textContent === text),
    body,
    { timeout: 10_000 },
  );
  console.log('ok - page shows a message published over HTTP');

  await page.fill('#pub-body', 'from the form');
  await page.fill('#pub-dest', '/topic/demo.page');
  await page.click('#publish');
  await page.waitForFunction(
    () => [...document.querySelectorAll('#messages pre')].some(p => p.textContent === 'from the form'),
    null,
    { timeout: 10_000 },
  );
  const result = await page.textContent('#pub-result');
  if (!result.startsWith('202')) throw new Error(`publish form shows ${result}`);
  console.log('ok - publish form delivers to the page');

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

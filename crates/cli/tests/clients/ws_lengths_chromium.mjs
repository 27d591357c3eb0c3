// The WebSocket length classes (websocket_interop.rs) with the WebSocket of real
// headless Chromium (Debian's, driven by playwright-core): the page is the node's own
// /healthz, the exchange is ws_lengths_core.cjs run inside it.
// Usage: node ws_lengths_chromium.mjs ws://127.0.0.1:PORT/ws PLAN-JSON
// Prints `ok - <case>` per case; exits 1 on the first failure.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [url, planJson] = process.argv.slice(2);
const plan = JSON.parse(planJson);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const core = readFileSync(new URL('./ws_lengths_core.cjs', import.meta.url), 'utf8');

let browser;
let code = 0;
try {
  browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  console.log(`# client Chromium ${browser.version()}`);
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(String(e)));
  await page.goto(url.replace(/^ws/, 'http').replace(/\/ws$/, '/healthz'));
  await page.addScriptTag({ content: core });
  const { lines, error } = await page.evaluate(
    async ({ url, plan }) => {
      const lines = [];
      const error = await runLengths(WebSocket, url, plan, line => lines.push(line));
      return { lines, error };
    },
    { url, plan },
  );
  for (const line of lines) console.log(line);
  if (error) throw new Error(error);
  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
} catch (e) {
  console.log(`not ok - ${e && e.message ? e.message : e}`);
  code = 1;
} finally {
  if (browser) await browser.close();
}
process.exit(code);

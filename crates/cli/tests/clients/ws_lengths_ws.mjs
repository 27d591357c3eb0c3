// The WebSocket length classes (websocket_interop.rs) with Node's `ws` package.
// Usage: node ws_lengths_ws.mjs ws://127.0.0.1:PORT/ws PLAN-JSON
// Prints `ok - <case>` per case; exits 1 on the first failure.
import { createRequire } from 'node:module';
import WebSocket from 'ws';

const require = createRequire(import.meta.url);
const { runLengths } = require('./ws_lengths_core.cjs');
const { version } = require('ws/package.json');

const [url, planJson] = process.argv.slice(2);
console.log(`# client ws ${version} on Node.js ${process.versions.node}`);
const error = await runLengths(WebSocket, url, JSON.parse(planJson), line => console.log(line));
if (error) {
  console.log(`not ok - ${error}`);
  process.exit(1);
}
process.exit(0);

// The node and the registry serve the browser bundle from crates/node/assets (compiled
// into the binary, so building the server never needs npm). `check` fails when that copy
// differs from a fresh `npm run build`; `update` refreshes it.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = fileURLToPath(new URL('../dist/pushcenter-client.bundle.js', import.meta.url));
const served = fileURLToPath(new URL('../../crates/node/assets/pushcenter-client.js', import.meta.url));
const fresh = readFileSync(built, 'utf8');
let current = '';
try {
  current = readFileSync(served, 'utf8');
} catch {
  // missing: treated as stale
}
if (process.argv[2] === 'update') {
  if (current !== fresh) writeFileSync(served, fresh);
  console.log(current === fresh ? 'assets: up to date' : `assets: updated ${served}`);
} else if (current !== fresh) {
  console.error(`assets: ${served} is stale; run 'make web-client' and commit it`);
  process.exit(1);
} else {
  console.log('assets: up to date');
}

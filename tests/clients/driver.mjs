// Drives the JavaScript client for tests/clients: subscribes as told on the command line,
// records every event it yields, and answers "state" on stdin with one JSON line.
import { createInterface } from "node:readline";
import { connect } from "../../frontend/static/changecast-client.js";

const [url, collection, email, password, heartbeatMs, where] = process.argv.slice(2);
const log = [];
let sub;
let client;
let failure = null;

function record(event) {
  if (event.type === "change") {
    const stock = event.diff?.set?.stock ?? event.doc?.stock ?? null;
    log.push([event.type, event.seq, event.key, event.op, stock]);
  } else if (event.type === "snapshot") {
    log.push([event.type, event.seq, null, null, event.docs.size]);
  } else if (event.type === "resync-end") {
    log.push([event.type, event.seq, null, null, null]);
  } else {
    log.push([event.type, null, null, event.state ?? event.reason ?? null, null]);
  }
}

try {
  client = await connect(url, {
    auth: email ? { email, password } : null,
    heartbeatMs: Number(heartbeatMs), timeoutMs: 1000, backoffMs: [50, 500],
  });
  sub = await client.subscribe(collection, { where: where || null });
  console.log(JSON.stringify({ ready: true }));
} catch (error) {
  console.log(JSON.stringify({ ready: false, error: error.name, code: error.code ?? null, message: error.message }));
  process.exit(0);
}

(async () => {
  try {
    for await (const event of sub) record(event);
  } catch (error) {
    failure = { error: error.name, message: error.message };
  }
})();

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line === "state") {
    console.log(JSON.stringify({
      view: Object.fromEntries(sub.view), log, resyncs: sub.resyncs, duplicates: sub.duplicates,
      reconnects: client.reconnects, state: client.state, failure,
    }));
  } else if (line === "quit") {
    await client.close();
    process.exit(0);
  }
}

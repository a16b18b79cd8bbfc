// Print every product whose stock is low, and each change to them, as it happens.
//
//   node examples/watch_low_stock.mjs [http://127.0.0.1:8000] [threshold]
//
// Node 22+ has a WebSocket built in; on Node 20 run it with --experimental-websocket
// (or pass the `ws` package: connect(url, {WebSocket})). Products are public: no sign-in.
import { connect } from "../frontend/static/changecast-client.js";

const url = process.argv[2] ?? "http://127.0.0.1:8000";
const threshold = Number(process.argv[3] ?? 10);
const fail = (error) => { console.error(`watch_low_stock: ${error.message}`); process.exit(1); };
if (!Number.isInteger(threshold)) fail(new Error(`threshold must be a whole number, got ${process.argv[3]}`));

const shop = await connect(url).catch(fail);
const low = await shop.subscribe("products", { where: `stock < ${threshold}` }).catch(fail);
process.on("SIGINT", async () => { await shop.close(); process.exit(0); });

for await (const event of low) {
  if (event.type === "snapshot") {
    console.log(`${event.docs.size} products below ${threshold}:`);
    const docs = [...event.docs.values()].sort((a, b) => a.stock - b.stock);
    for (const doc of docs) console.log(`  ${doc._id.padEnd(14)} ${String(doc.stock).padStart(4)}  ${doc.name}`);
  } else if (event.type === "change" && event.op === "leave") {
    console.log(`- ${event.key} is stocked again`);
  } else if (event.type === "change") {
    console.log(`! ${event.key} stock ${low.view.get(event.key).stock}`);
  } else {
    console.log(`(${event.type} ${event.state ?? event.reason ?? ""})`);
  }
}

// The floor: a bare broadcast server on Node's `ws`. POST /write relays the request body,
// as it is, to every open WebSocket (no database, no filter, no encoding per client).
//   node bare.js <port>
"use strict";
const http = require("http");
const { WebSocketServer } = require("ws");

const port = Number(process.argv[2] || 0);
const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/write") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const frame = Buffer.concat(chunks);
    for (const client of wss.clients) {
      if (client.readyState === 1) client.send(frame, { binary: false });
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on("SIGTERM", () => process.exit(0));

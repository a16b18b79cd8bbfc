// The fan-out benchmark's load generator: N WebSocket clients and one open-loop writer in
// one process, on one clock, so that write -> client latency needs no clock sync.
//   node loadgen.js '<json config>'
// Config: {ws, origin, subscribe (text or null), clients, rate, seconds, drain, base,
//          write: {url, method, cookie, body: "changecast"|"relay", products: [...]}}
// Protocol with the caller: prints "READY" once every client is connected (and subscribed),
// waits for a line on stdin, runs, prints one JSON line of results.
"use strict";
const http = require("http");
const WebSocket = require("ws");
const { performance } = require("perf_hooks");

const cfg = JSON.parse(process.argv[2]);
const N = cfg.clients;
const WRITES = Math.round(cfg.rate * cfg.seconds);
const BASE = cfg.base; // stock values are BASE + write index: unique per run
const arrivals = new Float64Array(WRITES * N); // 0: never seen
const sentAt = new Float64Array(WRITES);
const doneAt = new Float64Array(WRITES);
const status = new Int32Array(WRITES);
let frames = 0;
let seen = 0; // (write, client) pairs first seen
let answered = 0;
let appliedSoFar = 0;
const STOCK = /"stock":(\d+)/g;
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function onMessage(index, data) {
  const t = performance.now();
  frames++;
  const text = data.toString();
  STOCK.lastIndex = 0;
  let m;
  while ((m = STOCK.exec(text)) !== null) {
    const w = Number(m[1]) - BASE;
    if (w >= 0 && w < WRITES) {
      const slot = w * N + index;
      if (arrivals[slot] === 0) { arrivals[slot] = t; seen++; }
    }
  }
}

function connect(index) {
  return new Promise((resolve, reject) => {
    const headers = { Origin: cfg.origin };
    const ws = new WebSocket(cfg.ws, { headers, perMessageDeflate: false });
    ws.on("error", reject);
    ws.on("open", () => {
      if (!cfg.subscribe) {
        ws.on("message", (d) => onMessage(index, d));
        resolve(ws);
        return;
      }
      ws.once("message", () => {
        ws.on("message", (d) => onMessage(index, d));
        resolve(ws);
      });
      ws.send(cfg.subscribe);
    });
  });
}

function write(n) {
  const product = cfg.write.products[n % cfg.write.products.length];
  const value = BASE + n;
  let body;
  if (cfg.write.body === "relay") {
    body = JSON.stringify({ type: "change", id: "p", seq: value, op: "update",
      collection: "products", key: product,
      changes: { set: { stock: value, updated_at: new Date().toISOString() }, unset: [] },
      at: Date.now() });
  } else {
    body = JSON.stringify({ stock: value });
  }
  const url = cfg.write.url.replace("{product}", product);
  const headers = { "content-type": "application/json", origin: cfg.origin,
    "content-length": Buffer.byteLength(body) };
  if (cfg.write.cookie) headers.cookie = cfg.write.cookie;
  sentAt[n] = performance.now();
  const req = http.request(url, { method: cfg.write.method, headers, agent }, (res) => {
    res.resume();
    res.on("end", () => {
      status[n] = res.statusCode; doneAt[n] = performance.now(); answered++;
      if (res.statusCode === 200) appliedSoFar++;
    });
  });
  req.on("error", () => { status[n] = -1; doneAt[n] = performance.now(); answered++; });
  req.end(body);
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  const k = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[k] * 100) / 100;
}

async function main() {
  const sockets = [];
  for (let start = 0; start < N; start += 200) {
    const batch = [];
    for (let i = start; i < Math.min(N, start + 200); i++) batch.push(connect(i));
    sockets.push(...(await Promise.all(batch)));
  }
  let closed = 0;
  for (const ws of sockets) ws.on("close", () => closed++);
  process.stdout.write("READY\n");
  await new Promise((resolve) => process.stdin.once("data", resolve));
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((resolve) => {
    let n = 0;
    const tick = () => {
      const due = Math.floor(((performance.now() - t0) / 1000) * cfg.rate) + 1;
      while (n < Math.min(due, WRITES)) write(n++);
      if (n >= WRITES) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  const wroteAt = performance.now();
  // Drain: until every applied write reached every client, or the drain time is up.
  const deadline = wroteAt + cfg.drain * 1000;
  while (performance.now() < deadline && (answered < WRITES || seen < appliedSoFar * N)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  const lat = [];
  let lost = 0;
  let applied = 0;
  const writeLat = [];
  for (let w = 0; w < WRITES; w++) {
    if (status[w] !== 200) continue;
    applied++;
    writeLat.push(doneAt[w] - sentAt[w]);
    for (let i = 0; i < N; i++) {
      const a = arrivals[w * N + i];
      if (a === 0) lost++;
      else lat.push(a - sentAt[w]);
    }
  }
  lat.sort((a, b) => a - b);
  writeLat.sort((a, b) => a - b);
  const wall = (t1 - t0) / 1000;
  const result = {
    clients: N, rate: cfg.rate, seconds: cfg.seconds, writes: WRITES, applied,
    applied_share: WRITES ? applied / WRITES : null,
    write_p50_ms: pct(writeLat, 50), write_p99_ms: pct(writeLat, 99),
    deliveries: lat.length, expected: applied * N, lost,
    p50_ms: pct(lat, 50), p95_ms: pct(lat, 95), p99_ms: pct(lat, 99),
    max_ms: lat.length ? Math.round(lat[lat.length - 1]) : null,
    frames, closed_early: closed, wall_s: Math.round(wall * 1000) / 1000,
    loadgen_cpu_share: Math.round(((cpu.user + cpu.system) / 1e6 / wall) * 1000) / 1000,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n"); process.exit(1); });

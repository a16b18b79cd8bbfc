// The fan-out benchmark's load generator: N WebSocket clients and one open-loop writer in
// one process, on one clock, so that write -> client latency needs no clock sync.
//   node loadgen.js '<json config>'
// Config: {ws, origin, subscribe (text or null), clients, rate, seconds, drain, base,
//          write: {url, method, cookie, body: "changecast"|"relay"|"template", products: [...],
//                  template (body "template": the frame to relay, "{stock}" in it)},
//          pattern (optional: the regex whose first group is a stock value; JSON's by
//          default), stride (optional: stock values are base + stride x write index),
//          sockets (optional: per client {url, cookie, kind}; kind "dashboard" shows no
//          stock, "admin" is also timed on the orders it is shown),
//          orders (optional: {url, cookie, rate}: a second open-loop writer whose answers
//          carry an order's "_id")}
// A config of "@path" is read from that file (thousands of sockets do not fit argv).
// Protocol with the caller: prints "READY" once every client is connected (and subscribed),
// waits for a line on stdin, runs, prints one JSON line of results.
"use strict";
const http = require("http");
const WebSocket = require("ws");
const { performance } = require("perf_hooks");

const arg = process.argv[2];
const cfg = JSON.parse(arg.startsWith("@") ? require("fs").readFileSync(arg.slice(1), "utf8") : arg);
const N = cfg.clients;
const WRITES = Math.round(cfg.rate * cfg.seconds);
const BASE = cfg.base; // stock values are BASE + STRIDE x write index: unique per run
const STRIDE = cfg.stride || 1;
const sockets_ = cfg.sockets || null;
const kinds = sockets_ ? sockets_.map((s) => s.kind || "page") : new Array(N).fill("json");
// Orders (the mixed point): id -> [sent, answered]; per admin client, id -> first seen.
const ORDERS = cfg.orders ? Math.round(cfg.orders.rate * cfg.seconds) : 0;
const orderSent = new Map();
const orderSeen = kinds.map((k) => (k === "admin" ? new Map() : null));
const ORDER_ID = /id="order-(ORD-[A-Z0-9]{8})"/g;
const framesOf = new Int32Array(N);
let ordersAnswered = 0;
const arrivals = new Float64Array(WRITES * N); // 0: never seen
const sentAt = new Float64Array(WRITES);
const doneAt = new Float64Array(WRITES);
const status = new Int32Array(WRITES);
let frames = 0;
let seen = 0; // (write, client) pairs first seen
let answered = 0;
let appliedSoFar = 0;
const STOCK = new RegExp(cfg.pattern || '"stock":(\\d+)', "g");
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function onMessage(index, data) {
  const t = performance.now();
  frames++;
  framesOf[index]++;
  const text = data.toString();
  STOCK.lastIndex = 0;
  let m;
  while ((m = STOCK.exec(text)) !== null) {
    const offset = Number(m[1]) - BASE;
    const w = offset / STRIDE;
    if (offset >= 0 && offset % STRIDE === 0 && w < WRITES) {
      const slot = w * N + index;
      if (arrivals[slot] === 0) { arrivals[slot] = t; seen++; }
    }
  }
  const orders = orderSeen[index];
  if (orders !== null) {
    ORDER_ID.lastIndex = 0;
    while ((m = ORDER_ID.exec(text)) !== null) if (!orders.has(m[1])) orders.set(m[1], t);
  }
}

function connect(index) {
  return new Promise((resolve, reject) => {
    const headers = { Origin: cfg.origin };
    const own = sockets_ ? sockets_[index] : null;
    if (own && own.cookie) headers.Cookie = own.cookie;
    const ws = new WebSocket(own ? own.url : cfg.ws, { headers, perMessageDeflate: false });
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
  const value = BASE + STRIDE * n;
  let body;
  if (cfg.write.body === "template") {
    body = cfg.write.template.split("{stock}").join(String(value));
  } else if (cfg.write.body === "relay") {
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

function order() {
  const o = cfg.orders;
  const sent = performance.now();
  const headers = { "content-type": "application/json", origin: cfg.origin,
    "content-length": 0, cookie: o.cookie };
  const req = http.request(o.url, { method: "POST", headers, agent }, (res) => {
    const chunks = [];
    res.on("data", (c) => chunks.push(c));
    res.on("end", () => {
      ordersAnswered++;
      if (res.statusCode !== 201) return;
      try { orderSent.set(JSON.parse(Buffer.concat(chunks))._id, [sent, performance.now()]); }
      catch (e) { /* not an order: counted as not placed */ }
    });
  });
  req.on("error", () => { ordersAnswered++; });
  req.end();
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
    let placed = 0;
    const tick = () => {
      const elapsed = (performance.now() - t0) / 1000;
      const due = Math.floor(elapsed * cfg.rate) + 1;
      while (n < Math.min(due, WRITES)) write(n++);
      if (ORDERS) {
        const dueOrders = Math.floor(elapsed * cfg.orders.rate) + 1;
        while (placed < Math.min(dueOrders, ORDERS)) { order(); placed++; }
      }
      if (n >= WRITES && placed >= ORDERS) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  const wroteAt = performance.now();
  // Drain: until every applied write reached every client, or the drain time is up.
  const deadline = wroteAt + cfg.drain * 1000;
  const showsStock = kinds.filter((k) => k !== "dashboard").length;
  while (performance.now() < deadline && (answered < WRITES || seen < appliedSoFar * showsStock
         || ordersAnswered < ORDERS)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  const lat = [];
  const byKind = {};
  let lost = 0;
  let applied = 0;
  const writeLat = [];
  for (let w = 0; w < WRITES; w++) {
    if (status[w] !== 200) continue;
    applied++;
    writeLat.push(doneAt[w] - sentAt[w]);
    for (let i = 0; i < N; i++) {
      const kind = kinds[i];
      if (kind === "dashboard") continue;
      const mine = byKind[kind] || (byKind[kind] = { lat: [], lost: 0 });
      const a = arrivals[w * N + i];
      if (a === 0) { lost++; mine.lost++; }
      else { lat.push(a - sentAt[w]); mine.lat.push(a - sentAt[w]); }
    }
  }
  lat.sort((a, b) => a - b);
  writeLat.sort((a, b) => a - b);
  const wall = (t1 - t0) / 1000;
  const kindsSeen = {};
  for (const kind of new Set(kinds)) {
    const members = kinds.map((k, i) => (k === kind ? i : -1)).filter((i) => i >= 0);
    const frameCount = members.reduce((sum, i) => sum + framesOf[i], 0);
    const row = { clients: members.length,
      frames_per_client_per_s: Math.round((frameCount / members.length / wall) * 100) / 100 };
    const stock = byKind[kind];
    if (stock) {
      stock.lat.sort((a, b) => a - b);
      Object.assign(row, { stock_p50_ms: pct(stock.lat, 50), stock_p99_ms: pct(stock.lat, 99),
        stock_lost: stock.lost });
    }
    if (kind === "admin" && ORDERS) {
      const orderLat = [];
      let unseen = 0;
      for (const i of members) {
        for (const [id, [sent]] of orderSent) {
          const at = orderSeen[i].get(id);
          if (at === undefined) unseen++; else orderLat.push(at - sent);
        }
      }
      orderLat.sort((a, b) => a - b);
      Object.assign(row, { order_row_p50_ms: pct(orderLat, 50),
        order_row_p99_ms: pct(orderLat, 99), order_rows_unseen: unseen });
    }
    kindsSeen[kind] = row;
  }
  const result = {
    clients: N, rate: cfg.rate, seconds: cfg.seconds, writes: WRITES, applied,
    applied_share: WRITES ? applied / WRITES : null,
    write_p50_ms: pct(writeLat, 50), write_p99_ms: pct(writeLat, 99),
    deliveries: lat.length, expected: applied * showsStock, lost,
    orders: ORDERS, orders_placed: orderSent.size, kinds: kindsSeen,
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

// ChangeCast's live protocol (/ws) as one ES module: no build step, no dependency.
// Browsers: import it from /static/changecast-client.js (the page's cookie signs it in).
// Node 18+: pass a WebSocket class (the `ws` package, or Node 22's global one) and
// `auth: {email, password}`; the client keeps the session cookie itself.
//
//   const cc = await connect("http://127.0.0.1:8000", {auth: {email, password}});
//   const products = await cc.subscribe("products", {where: "stock < 10"});
//   for await (const event of products) console.log(event.type, products.view.size);
//
// The same semantics as the Python client (changecast_client): a snapshot from the REST
// list (keyset pages), subscribe with resume_from = its seq, a view kept current, reconnect
// with jittered back-off that resumes from the last applied seq, and on `resync` a reload
// announced as resync-begin, snapshot, resync-end. No change is delivered twice.

const SESSION_ENDED = 1008;
const PAGE = 500;

export class ChangeCastError extends Error {
  constructor(message, code) { super(message); this.name = new.target.name; this.code = code; }
}
export class ConnectError extends ChangeCastError {
  constructor(message, code = "connect") { super(message, code); }
}
export class AuthError extends ChangeCastError {
  constructor(message) { super(message, "unauthorized"); }
}
export class AccessDenied extends ChangeCastError {}
export class FilterError extends ChangeCastError {
  constructor(message) { super(message, "bad_where"); }
}
export class SessionClosed extends ChangeCastError {
  constructor(message) { super(message, "session_ended"); }
}
export class ProtocolError extends ChangeCastError {}

/** The error for a refused request or subscription (status 0: a socket error message). */
export function serverError(status, body, where) {
  const error = (body && typeof body === "object" && (body.error ?? body)) || {};
  const code = typeof error.code === "string" ? error.code : "";
  const message = typeof error.message === "string" ? error.message : String(body ?? "").slice(0, 200);
  if (code === "bad_where" || (status === 400 && where != null)) {
    return new FilterError(`bad where ${JSON.stringify(where)}: ${message}`, "bad_where");
  }
  if (code === "unauthorized" || code === "forbidden" || status === 401 || status === 403) {
    const kind = code === "unauthorized" || code === "forbidden" ? code
      : status === 401 ? "unauthorized" : "forbidden";
    return new AccessDenied(message || kind, kind);
  }
  return new ProtocolError(status ? `${status}: ${message}` : message, code || String(status));
}

/** Apply one change event to a view (a Map of documents by key). */
export function apply(view, change) {
  const { op, key } = change;
  if (op === "insert" || op === "replace" || op === "enter") {
    if (change.doc) view.set(key, change.doc);
  } else if (op === "delete" || op === "leave") {
    view.delete(key);
  } else if (op === "update" && change.diff && view.has(key)) {
    applyDiff(view.get(key), change.diff);
  }
}

/** Set and unset dotted paths of a document in place. */
export function applyDiff(doc, diff) {
  for (const [path, value] of Object.entries(diff.set ?? {})) {
    const parts = path.split(".");
    const last = parts.pop();
    let target = doc;
    for (const part of parts) {
      if (Array.isArray(target) && /^\d+$/.test(part)) { target = target[Number(part)]; continue; }
      if (target[part] === null || typeof target[part] !== "object") target[part] = {};
      target = target[part];
    }
    if (target && typeof target === "object") target[last] = value;
  }
  for (const path of diff.unset ?? []) {
    const parts = path.split(".");
    const last = parts.pop();
    let target = doc;
    for (const part of parts) {
      target = target == null ? undefined : target[part];
    }
    if (target && typeof target === "object") {
      if (Array.isArray(target)) target[Number(last)] = null; else delete target[last];
    }
  }
}

const END = Symbol("end");

export class Subscription {
  constructor(client, collection, where, { snapshot = true, events = true } = {}) {
    this.client = client;
    this.collection = collection;
    this.where = where ?? null;
    this.snapshot = snapshot;
    this.view = new Map();
    this.seq = null;
    this.changes = 0;
    this.duplicates = 0;
    this.resyncs = 0;
    this._events = events;
    this._queue = [];
    this._waiting = null;
    this._needSnapshot = snapshot;
    this._resyncing = false;
    this._resyncEpoch = 0; // resyncs so far: an attach ends the one it was started for
    this._attaching = Promise.resolve();
    this._ended = false;
    this._error = null;
  }

  [Symbol.asyncIterator]() { return this; }

  async next() {
    if (!this._events) throw new TypeError("subscribed with events: false: read .view instead");
    if (this._queue.length === 0) {
      if (this._ended) return this._finish();
      await new Promise((resolve) => { this._waiting = resolve; });
    }
    const item = this._queue.shift();
    if (item === END) { this._queue.unshift(END); return this._finish(); }
    return { value: item, done: false };
  }

  _finish() {
    if (this._error) throw this._error;
    return { value: undefined, done: true };
  }

  async return() { await this.unsubscribe(); return { value: undefined, done: true }; }

  /** Stop this subscription; its iterator ends. */
  async unsubscribe() { this.client._unsubscribe(this); this._end(null); }

  _emit(event) {
    if (!this._events || this._ended) return;
    this._queue.push(event);
    if (this._waiting) { const wake = this._waiting; this._waiting = null; wake(); }
  }

  _end(error) {
    if (this._ended) return;
    this._ended = true;
    this._error = error;
    if (this._events) {
      this._queue.push(END);
      if (this._waiting) { const wake = this._waiting; this._waiting = null; wake(); }
    }
  }

  /** (Re)subscribe, one at a time: the snapshot when one is due, then from the last seq. */
  _attach(first) {
    const run = this._attaching.then(() => this._attachNow(first));
    this._attaching = run.catch(() => {});
    return run;
  }

  async _attachNow(first) {
    if (this._ended) return;
    const epoch = this._resyncEpoch;
    if (this._needSnapshot) {
      const { docs, seq } = await this._load(first);
      this.view = new Map(docs);
      this.seq = seq;
      this._needSnapshot = false;
      this._emit({ type: "snapshot", docs: new Map(docs), seq });
    }
    const reply = await this.client._requestSubscribe(this, this.client._nextId(), this.seq);
    if (this.seq === null) this.seq = Number(reply.seq ?? 0);
    if (this._resyncing && epoch === this._resyncEpoch) {
      // (A resync that came right behind this `subscribed` is the next attach's.)
      this._resyncing = false;
      this._emit({ type: "resync-end", seq: this.seq });
    }
  }

  async _load(first) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.client.load(this.collection, this.where);
      } catch (error) {
        const retry = error instanceof ConnectError ||
          (error instanceof ProtocolError && ["503", "unavailable", "500", "error"].includes(error.code));
        if (first || !retry) throw error;
      }
      await sleep(Math.min(5000, 100 * 2 ** attempt));
    }
  }

  _change(msg) {
    if (this.seq !== null && msg.seq <= this.seq) { this.duplicates++; return; }
    const change = {
      type: "change", op: msg.op, key: String(msg.key), seq: msg.seq,
      collection: msg.collection ?? this.collection, at: msg.at ?? null, doc: msg.doc ?? null,
      diff: msg.changes ? { set: msg.changes.set ?? {}, unset: msg.changes.unset ?? [] } : null,
    };
    apply(this.view, change);
    this.seq = msg.seq;
    this.changes++;
    this._emit(change);
  }

  _resync(reason) {
    this.resyncs++;
    this._resyncEpoch++;
    this._resyncing = true;
    this._needSnapshot = this.snapshot;
    if (!this.snapshot) this.seq = null;
    this._emit({ type: "resync-begin", reason });
    this._attach(false).catch(() => {}); // a lost connection re-attaches on its own
  }
}

export class Client {
  constructor(url, options = {}) {
    let parsed;
    try { parsed = new URL(url); } catch { parsed = null; }
    if (!parsed || !["http:", "https:"].includes(parsed.protocol)) {
      throw new TypeError(`url must be the server's http:// or https:// address, got ${JSON.stringify(url)}`);
    }
    this.base = url.replace(/\/+$/, "");
    this.wsUrl = this.base.replace(/^http/, "ws") + "/ws";
    this.auth = options.auth ?? null;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.heartbeatMs = options.heartbeatMs ?? 15000;
    this.timeoutMs = options.timeoutMs ?? 10000;
    this.backoffMs = options.backoffMs ?? [100, 10000];
    this.cookie = typeof this.auth === "string" ? this.auth : "";
    this.browser = typeof document !== "undefined";
    this.state = "connecting";
    this.reconnects = 0;
    this.subscriptions = new Map();
    this._all = [];
    this._ws = null;
    this._ids = 0;
    this._replies = new Map();
    this._error = null;
    this._heard = 0;
    this._timer = null;
    this._live = null;
    this._liveResolve = null;
    this._setLive(false);
    if (!this.WebSocket) {
      throw new TypeError("no WebSocket here: pass {WebSocket} (Node: the ws package, or Node 22+)");
    }
  }

  _setLive(live) {
    if (live) { this._liveResolve?.(); return; }
    this._live = new Promise((resolve) => { this._liveResolve = resolve; });
  }

  async start() {
    if (this.auth && typeof this.auth === "object") await this._signIn(this.auth.email, this.auth.password);
    await this._open();
    this.state = "live";
    this._setLive(true);
  }

  async close() {
    this.state = "closed";
    clearInterval(this._timer);
    if (this._ws) { this._drop(this._ws); }
    for (const sub of this._all) sub._end(null);
  }

  async subscribe(collection, { where = null, snapshot = true, events = true } = {}) {
    if (this.state === "closed") throw this._error ?? new ChangeCastError("the client is closed");
    const sub = new Subscription(this, collection, where, { snapshot, events });
    try {
      await sub._attach(true);
    } catch (error) {
      if (error.code === "no_snapshot") { // the socket's verdict first: forbidden, unknown...
        await this._requestSubscribe(sub, this._nextId(), null);
        this._unsubscribe(sub);
      }
      throw error;
    }
    this._all.push(sub);
    return sub;
  }

  _nextId() { this._ids += 1; return `s${this._ids}`; }

  async _requestSubscribe(sub, id, resumeFrom) {
    await this._live;
    const message = { op: "subscribe", id, collection: sub.collection };
    if (sub.where != null) message.where = sub.where;
    if (resumeFrom != null) message.resume_from = resumeFrom;
    this.subscriptions.set(id, sub);
    let answer;
    try {
      answer = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new ConnectError("no answer to subscribe")), this.timeoutMs);
        this._replies.set(id, {
          resolve: (m) => { clearTimeout(timer); resolve(m); },
          reject: (e) => { clearTimeout(timer); reject(e); },
        });
        this._ws.send(JSON.stringify(message));
      });
    } catch (error) {
      this.subscriptions.delete(id);
      throw error;
    } finally {
      this._replies.delete(id);
    }
    if (answer.type === "error") {
      this.subscriptions.delete(id);
      throw serverError(0, answer, sub.where);
    }
    return answer;
  }

  _unsubscribe(sub) {
    this._all = this._all.filter((s) => s !== sub);
    for (const [id, s] of this.subscriptions) {
      if (s !== sub) continue;
      this.subscriptions.delete(id);
      if (this._ws && this.state === "live") this._ws.send(JSON.stringify({ op: "unsubscribe", id }));
    }
  }

  // ---- HTTP ----------------------------------------------------------------------------

  async http(method, path, body) {
    const headers = { Accept: "application/json" };
    if (!this.browser) {
      headers.Origin = this.base;
      if (this.cookie) headers.Cookie = this.cookie;
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    try {
      response = await this.fetch(this.base + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin", signal: controller.signal,
      });
    } catch (error) {
      throw new ConnectError(`cannot reach ${this.base}: ${error.message ?? error}`);
    } finally {
      clearTimeout(timer);
    }
    const text = await response.text();
    let decoded = null;
    try { decoded = text ? JSON.parse(text) : null; } catch { decoded = text; }
    return { status: response.status, body: decoded, headers: response.headers };
  }

  async _signIn(email, password) {
    const { status, body, headers } = await this.http("POST", "/api/login", { email, password });
    if (status === 401) throw new AuthError(`the server refused the credentials of ${email}`, "unauthorized");
    if (status !== 200) throw serverError(status, body);
    if (!this.browser) {
      const cookies = typeof headers.getSetCookie === "function" ? headers.getSetCookie() : [headers.get("set-cookie")];
      if (!cookies[0]) throw new ProtocolError("the server signed in without a session cookie");
      this.cookie = cookies[0].split(";")[0];
    }
  }

  /** Every matching document, in keyset pages, and the seq of the first page. */
  async load(collection, where) {
    const docs = new Map();
    let seq = null;
    let after = null;
    for (;;) {
      const query = new URLSearchParams({ limit: String(PAGE), sort: "_id" });
      if (where != null) query.set("where", where);
      if (after != null) query.set("after", after);
      const { status, body } = await this.http("GET", `/api/${encodeURIComponent(collection)}?${query}`);
      if (status === 404) {
        throw new ProtocolError(`${collection} has no list endpoint to load a snapshot from; subscribe with snapshot: false`, "no_snapshot");
      }
      if (status !== 200 || !body || typeof body !== "object") throw serverError(status, body, where);
      if (seq === null) seq = body.seq;
      for (const doc of body.items) docs.set(String(doc._id), doc);
      if (body.next_cursor == null || body.items.length === 0) return { docs, seq };
      after = String(body.items[body.items.length - 1]._id);
    }
  }

  // ---- the socket ----------------------------------------------------------------------

  _open() {
    return new Promise((resolve, reject) => {
      let ws;
      const options = this.browser ? undefined : { headers: { Origin: this.base, ...(this.cookie ? { Cookie: this.cookie } : {}) } };
      try {
        ws = options ? new this.WebSocket(this.wsUrl, options) : new this.WebSocket(this.wsUrl);
      } catch (error) {
        reject(new ConnectError(`cannot open ${this.wsUrl}: ${error.message}`));
        return;
      }
      const timer = setTimeout(() => { this._drop(ws); reject(new ConnectError(`cannot open ${this.wsUrl}: timed out`)); }, this.timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        this._ws = ws;
        this._heard = Date.now();
        ws.onmessage = (event) => { this._heard = Date.now(); this._dispatch(JSON.parse(String(event.data))); };
        ws.onclose = (event) => this._lost(ws, event.code, event.reason);
        ws.onerror = () => {};
        clearInterval(this._timer);
        this._timer = setInterval(() => this._beat(ws), this.heartbeatMs);
        resolve();
      };
      ws.onerror = (event) => {
        clearTimeout(timer);
        reject(new ConnectError(`cannot open ${this.wsUrl}: ${event.message ?? "the handshake failed"}`));
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        reject(new ConnectError(`cannot open ${this.wsUrl}: closed (${event.code})`, String(event.code)));
      };
    });
  }

  /** Ping; a socket that has said nothing for a heartbeat and a timeout is dead. */
  _beat(ws) {
    if (ws !== this._ws) return;
    if (Date.now() - this._heard > this.heartbeatMs + this.timeoutMs) {
      this._drop(ws);
      this._lost(ws, 1006, "no heartbeat");
      return;
    }
    try { ws.send(JSON.stringify({ op: "ping" })); } catch { /* the close handler follows */ }
  }

  /** Forget a socket at once: a dead network may take minutes to say so. */
  _drop(ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try { if (typeof ws.terminate === "function") ws.terminate(); else ws.close(); } catch { /* gone */ }
  }

  async _lost(ws, code, reason) {
    if (ws !== this._ws || this.state === "closed") return;
    this._ws = null;
    clearInterval(this._timer);
    if (code === SESSION_ENDED) {
      this._fail(new SessionClosed(`the session ended (${reason || "signed out"}); sign in again`, "session_ended"));
      return;
    }
    const detail = `connection lost (${code}${reason ? ` ${reason}` : ""})`;
    this.state = "reconnecting";
    this._setLive(false);
    for (const reply of this._replies.values()) reply.reject(new ConnectError(detail));
    this.subscriptions.clear();
    for (let attempt = 1; this.state !== "closed"; attempt++) {
      this.reconnects++;
      for (const sub of this._all) sub._emit({ type: "status", state: "reconnecting", detail, attempt });
      const [low, high] = this.backoffMs;
      await sleep(Math.random() * Math.min(high, low * 2 ** Math.min(attempt, 16)));
      if (this.state === "closed") return;
      try {
        await this._open();
      } catch {
        continue;
      }
      this.state = "live";
      this._setLive(true);
      this._reattach();
      return;
    }
  }

  async _reattach() {
    for (const sub of this._all) sub._emit({ type: "status", state: "live", detail: "reconnected", attempt: 0 });
    for (const sub of [...this._all]) {
      try {
        await sub._attach(false);
      } catch (error) {
        if (error instanceof ConnectError) return; // lost again: the next connection re-attaches
        sub._end(error);
        this._all = this._all.filter((s) => s !== sub);
      }
    }
  }

  _dispatch(msg) {
    const { type, id } = msg;
    if (type === "change") {
      this.subscriptions.get(id)?._change(msg);
    } else if ((type === "subscribed" || type === "error") && this._replies.has(id)) {
      this._replies.get(id).resolve(msg);
    } else if (type === "resync") {
      const sub = this.subscriptions.get(id);
      this.subscriptions.delete(id);
      sub?._resync(String(msg.reason ?? ""));
    }
  }

  _fail(error) {
    this._error = error;
    this.state = "closed";
    for (const reply of this._replies.values()) reply.reject(error);
    for (const sub of this._all) sub._end(error);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Connect to a ChangeCast server at `url` (http://host:port). Options: `auth`
 * ({email, password}, a session cookie string, or null: anonymous, products only),
 * `WebSocket` (the class to use; default globalThis.WebSocket), `heartbeatMs` (15000),
 * `timeoutMs` (10000), `backoffMs` ([100, 10000]: first and largest reconnect delay).
 */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  await client.start();
  return client;
}

"use strict";
/**
 * roombench's "node" server variant: Node's official socket.io server speaking the wire
 * contract of docs/PROTOCOL.md, exactly like the reference server (roombench/servers/reference.py).
 *
 *   node server.js --host 127.0.0.1 --port 8000 [--token T] [--redis redis://127.0.0.1:6379]
 *                  [--faults '{"drop_live_every": 2}'] [--csr-max-ms 120000]
 *
 * Socket.IO v5 / Engine.IO v4 on Node's http module (no framework: the REST surface is two
 * routes), websocket transport only, path /socket.io/. Without --redis everything lives in
 * this process's memory. With --redis, several processes share one Redis, the same way the
 * py-redis variant does (roombench/servers/redis_store.py, same keys and channel):
 *   - @socket.io/redis-adapter spans rooms across processes (user_typing, message_read);
 *   - per channel a counter (INCR) and a sorted set of the stored JSON scored by id, so the
 *     join ack's last_id and the REST backfill agree on every process;
 *   - new_message does not go through the adapter: one Lua script assigns the id, stores the
 *     message and PUBLISHes it, atomically, and every process hands the publications to its
 *     own sockets (io.local) in the order Redis delivers them, which is id order. Through the
 *     adapter, id assignment and publication would be two steps, a message could overtake a
 *     lower id from another process, and a lower id missed right before a drop would never be
 *     backfilled (clients fetch "after" the highest id they saw).
 *
 * --csr-max-ms N turns on socket.io's connectionStateRecovery with maxDisconnectionDuration
 * N ms (the node-csr variants): a client that reconnects within N ms with its pid and last
 * offset gets its rooms back and the events it missed replayed. With --redis it uses
 * @socket.io/redis-streams-adapter, which supports recovery (the classic redis-adapter does
 * not); new_message then goes through the adapter (io.to(room) in the storing process, after
 * the Lua script), so the stream stores it for replay. Id assignment and publication are then
 * two steps: across processes a message may overtake a lower id (counted as out_of_order; a
 * replay covers it, a REST backfill "after" the higher id does not).
 *
 * This server is a benchmark target: the hot path (send_message) allocates the message and
 * its ack and nothing else, handlers are module-level functions (no closures per socket),
 * the in-memory backfill is an index slice (ids are 1, 2, 3… so id k sits at index k-1),
 * and the Redis backfill joins the stored JSON strings without parsing them.
 * It logs errors only.
 */

const http = require("node:http");
const { Server } = require("socket.io");

const DEFAULT_LIMIT = 100;
const MAX_LIMIT = 1000;
const EXIT_GRACE_MS = 800;

/** Fault names and defaults: the fields of roombench.servers.reference.Faults. */
const FAULT_DEFAULTS = Object.freeze({
  drop_live_every: 0,
  backfill_empty: false,
  ack_delay_ms: 0,
  duplicate_every: 0,
  garbage_every: 0,
  backfill_status: 0,
  backfill_garbage: false,
});

// ---------------------------------------------------------------- command line

function usageError(message) {
  process.stderr.write(`server.js: error: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  // the token comes by environment when roombench starts us (never on a command line: ps shows it)
  const args = { host: "127.0.0.1", port: 8000, token: process.env.ROOMBENCH_SERVER_TOKEN ?? null, redis: null, faults: "",
    "csr-max-ms": null };
  for (let i = 0; i < argv.length; i++) {
    let key = argv[i];
    let value;
    const eq = key.indexOf("=");
    if (eq > 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else {
      value = argv[++i];
    }
    const name = key.replace(/^--/, "");
    if (!key.startsWith("--") || !(name in args)) usageError(`unknown argument ${key}`);
    if (value === undefined) usageError(`${key} needs a value`);
    args[name] = value;
  }
  const port = Number(args.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    usageError(`port must be 1..65535, got ${args.port}`);
  }
  args.port = port;
  args.faults = parseFaults(args.faults);
  if (args["csr-max-ms"] !== null) {
    const ms = Number(args["csr-max-ms"]);
    if (!Number.isInteger(ms) || ms < 1) usageError(`--csr-max-ms must be an integer >= 1, got ${args["csr-max-ms"]}`);
    args["csr-max-ms"] = ms;
  }
  return args;
}

function parseFaults(text) {
  let given;
  try {
    given = text ? JSON.parse(text) : {};
  } catch (err) {
    usageError(`bad --faults ${text}: ${err.message}`);
  }
  if (given === null || typeof given !== "object" || Array.isArray(given)) {
    usageError(`bad --faults ${text}: not a JSON object`);
  }
  const faults = { ...FAULT_DEFAULTS };
  for (const [name, value] of Object.entries(given)) {
    if (!(name in FAULT_DEFAULTS)) usageError(`unknown fault ${name}`);
    const kind = typeof FAULT_DEFAULTS[name];
    if (typeof value !== kind || (kind === "number" && !(value >= 0))) {
      usageError(`fault ${name} must be a ${kind === "number" ? "number >= 0" : kind}`);
    }
    faults[name] = value;
  }
  return faults;
}

// ---------------------------------------------------------------- stores

/** All messages in this process's memory; ids are 1, 2, 3… per channel. Calls are synchronous. */
class MemoryStore {
  constructor() {
    this.sync = true;
    this.channels = new Map(); // channel id -> array of messages, message id k at index k-1
  }

  append(channelId, senderId, content, tempId) {
    let messages = this.channels.get(channelId);
    if (messages === undefined) {
      messages = [];
      this.channels.set(channelId, messages);
    }
    const message = {
      id: messages.length + 1,
      channel_id: channelId,
      sender_id: senderId,
      content,
      temp_id: tempId,
      ts: Date.now() / 1000,
    };
    messages.push(message);
    return message;
  }

  lastId(channelId) {
    const messages = this.channels.get(channelId);
    return messages === undefined ? null : messages.length;
  }

  /** The JSON text of at most `limit` messages with id > `after`, in id order. */
  afterJson(channelId, after, limit) {
    const messages = this.channels.get(channelId);
    if (messages === undefined || after >= messages.length) return "[]";
    return JSON.stringify(messages.slice(after, after + limit));
  }
}

// KEYS: counter, sorted set. ARGV: pub/sub channel, the message's JSON object without its id.
// The id goes in by string surgery, so the bytes stored and published are the same.
const APPEND_SCRIPT = `
local id = redis.call('INCR', KEYS[1])
local message = '{"id":' .. string.format('%d', id) .. ',' .. string.sub(ARGV[2], 2)
redis.call('ZADD', KEYS[2], id, message)
redis.call('PUBLISH', ARGV[1], message)
return id`;

const KEY_PREFIX = "roombench:";
const NEW_MESSAGE_CHANNEL = `${KEY_PREFIX}new_message`;

/** Messages in Redis, shared by every process on the same Redis. Calls return promises. */
class RedisStore {
  constructor(client, fanOutHere = false) {
    this.sync = false;
    this.client = client;
    this.sha = null;
    /** recovery (the streams adapter): the storing process emits through the adapter itself */
    this.fanOutHere = fanOutHere;
  }

  /** Load the script and fan every published message out to this process's sockets. */
  async start(subscriber, server) {
    this.sha = await this.client.sendCommand(["SCRIPT", "LOAD", APPEND_SCRIPT]);
    if (this.fanOutHere) return;
    // one subscription, one listener: local delivery keeps Redis's (= id) order
    await subscriber.subscribe(NEW_MESSAGE_CHANNEL, (json) => {
      const message = JSON.parse(json);
      server.local.to(message.channel_id).emit("new_message", message);
    });
  }

  /** Store and publish the message in one step; resolves to its id. */
  async append(channelId, senderId, content, tempId) {
    const body = JSON.stringify({
      channel_id: channelId, sender_id: senderId, content, temp_id: tempId, ts: Date.now() / 1000,
    });
    const args = ["2", seqKey(channelId), messagesKey(channelId), NEW_MESSAGE_CHANNEL, body];
    let id;
    try {
      id = await this.client.sendCommand(["EVALSHA", this.sha, ...args]);
    } catch (err) {
      if (!String(err.message).startsWith("NOSCRIPT")) throw err;
      id = await this.client.sendCommand(["EVAL", APPEND_SCRIPT, ...args]); // Redis lost its scripts
    }
    if (this.fanOutHere) {
      // through the adapter (not io.local): only what the stream stores can be replayed
      io.to(channelId).emit("new_message", { id, ...JSON.parse(body) });
    }
    return id;
  }

  async lastId(channelId) {
    const value = await this.client.sendCommand(["GET", seqKey(channelId)]);
    return value === null ? null : Number(value);
  }

  async afterJson(channelId, after, limit) {
    const rows = await this.client.sendCommand([
      "ZRANGEBYSCORE", messagesKey(channelId), `(${after}`, "+inf", "LIMIT", "0", String(limit),
    ]);
    return `[${rows.join(",")}]`; // the stored JSON as is: nothing parsed, nothing re-encoded
  }
}

function seqKey(channelId) {
  return `${KEY_PREFIX}seq:${channelId}`;
}

function messagesKey(channelId) {
  return `${KEY_PREFIX}messages:${channelId}`;
}

// ---------------------------------------------------------------- live events

let store = null;
let faults = FAULT_DEFAULTS;
let io = null;

function isObject(data) {
  return data !== null && typeof data === "object" && !Array.isArray(data);
}

function error(message) {
  return { error: message };
}

/** Send `reply` as the ack when the client asked for one (`ack` is its callback). */
function answer(ack, reply) {
  if (typeof ack === "function") {
    if (reply === undefined) ack();
    else ack(reply);
  }
}

function everyK(k, id) {
  return k > 0 && id % k === 0;
}

function onConnection(socket) {
  socket.on("join", onJoin);
  socket.on("leave", onLeave);
  socket.on("send_message", onSendMessage);
  socket.on("typing", onTyping);
  socket.on("mark_read", onMarkRead);
}

// Handlers run with `this` = the socket (EventEmitter), so one function serves every socket.
// An event sent with an ack but no payload arrives as (ackFn): the first argument is shifted.

function onJoin(data, ack) {
  if (typeof data === "function") [data, ack] = [undefined, data];
  if (!isObject(data) || typeof data.room !== "string") {
    return answer(ack, error('join needs {"room": <string>}'));
  }
  const room = data.room;
  this.join(room);
  if (typeof ack !== "function") return undefined;
  if (store.sync) return ack({ ok: true, last_id: store.lastId(room) });
  return store.lastId(room).then(
    (lastId) => ack({ ok: true, last_id: lastId }),
    (err) => failed(ack, "join", err),
  );
}

function onLeave(data, ack) {
  if (typeof data === "function") [data, ack] = [undefined, data];
  if (!isObject(data) || typeof data.room !== "string") {
    return answer(ack, error('leave needs {"room": <string>}'));
  }
  this.leave(data.room);
  return answer(ack, { ok: true });
}

function onSendMessage(data, ack) {
  if (typeof data === "function") [data, ack] = [undefined, data];
  if (!isObject(data) || typeof data.channel_id !== "string"
      || typeof data.content !== "string" || typeof data.temp_id !== "string") {
    return answer(ack, error('send_message needs {"channel_id", "content", "temp_id"}, all strings'));
  }
  const sender = this.data.userId;
  if (store.sync) {
    const message = store.append(data.channel_id, sender, data.content, data.temp_id);
    fanOut(this, message);
    return ackSent(ack, message.id, message.temp_id);
  }
  const tempId = data.temp_id; // the Redis store publishes (fans out) by itself
  return store.append(data.channel_id, sender, data.content, tempId).then(
    (id) => ackSent(ack, id, tempId),
    (err) => failed(ack, "send_message", err),
  );
}

/** Fan a stored message out to its room, faults permitting. */
function fanOut(socket, message) {
  const room = message.channel_id;
  if (!everyK(faults.drop_live_every, message.id)) {
    io.to(room).emit("new_message", message);
    if (everyK(faults.duplicate_every, message.id)) io.to(room).emit("new_message", message);
    if (everyK(faults.garbage_every, message.id)) io.to(room).emit("new_message", "garbage");
  } else if (socket.rooms.has(room)) {
    socket.emit("new_message", message); // dropped live: only the sender's own echo survives
  }
}

function ackSent(ack, id, tempId) {
  if (typeof ack !== "function") return;
  const reply = { id, temp_id: tempId };
  if (faults.ack_delay_ms > 0) setTimeout(ack, faults.ack_delay_ms, reply);
  else ack(reply);
}

function onTyping(data, ack) {
  if (typeof data === "function") [data, ack] = [undefined, data];
  if (!isObject(data) || typeof data.channel !== "string") {
    return answer(ack, error('typing needs {"channel": <string>}'));
  }
  this.to(data.channel).emit("user_typing", { channel: data.channel, user_id: this.data.userId });
  return answer(ack, undefined);
}

function onMarkRead(data, ack) {
  if (typeof data === "function") [data, ack] = [undefined, data];
  const messageId = isObject(data) ? data.message_id : undefined;
  if (!isObject(data) || typeof data.channel_id !== "string" || !Number.isInteger(messageId)) {
    return answer(ack, error('mark_read needs {"channel_id": <string>, "message_id": <int>}'));
  }
  const event = { channel_id: data.channel_id, message_id: messageId, user_id: this.data.userId };
  io.to(data.channel_id).emit("message_read", event);
  return answer(ack, undefined);
}

function failed(ack, event, err) {
  process.stderr.write(`${event} failed: ${err && err.stack ? err.stack : err}\n`);
  answer(ack, error(`${event} failed: storage error`));
}

/** Socket.IO middleware: the auth payload's token, and who this connection is. */
function authenticate(token) {
  return (socket, next) => {
    const auth = isObject(socket.handshake.auth) ? socket.handshake.auth : {};
    if (token !== null && auth.token !== token) return next(new Error("invalid token"));
    const userId = auth.user_id;
    socket.data.userId = typeof userId === "string" && userId ? userId : socket.id;
    return next();
  };
}

// ---------------------------------------------------------------- REST

const JSON_TYPE = "application/json";
const NOT_FOUND = JSON.stringify(error("not found"));
const NOT_ALLOWED = JSON.stringify(error("method not allowed; use GET"));
const UNAUTHORIZED = JSON.stringify(error("missing or invalid bearer token"));

function respond(res, status, body, contentType = JSON_TYPE, extraHeaders = undefined) {
  const headers = { "content-type": contentType, "content-length": Buffer.byteLength(body) };
  if (extraHeaders) Object.assign(headers, extraHeaders);
  res.writeHead(status, headers);
  res.end(body);
}

function notAllowed(req, res) {
  if (req.method === "GET") return false;
  respond(res, 405, NOT_ALLOWED, JSON_TYPE, { allow: "GET" });
  return true;
}

/** The HTTP side: GET /healthz and GET /channels/{id}/messages (socket.io takes /socket.io/). */
function restHandler(token) {
  const expected = token === null ? null : `Bearer ${token}`;
  return (req, res) => {
    const url = req.url;
    const q = url.indexOf("?");
    const parts = (q < 0 ? url : url.slice(0, q)).split("/");
    if (parts.length === 2 && parts[1] === "healthz") {
      if (!notAllowed(req, res)) respond(res, 200, "ok", "text/plain; charset=utf-8");
      return;
    }
    if (parts.length === 4 && parts[0] === "" && parts[1] === "channels" && parts[2]
        && parts[3] === "messages") {
      if (notAllowed(req, res)) return;
      if (expected !== null && req.headers.authorization !== expected) {
        respond(res, 401, UNAUTHORIZED);
        return;
      }
      messages(res, decodeSegment(parts[2]), q < 0 ? "" : url.slice(q + 1));
      return;
    }
    respond(res, 404, NOT_FOUND);
  };
}

function decodeSegment(segment) {
  try {
    return decodeURIComponent(segment); // %2F stays inside the segment: a channel may hold "/"
  } catch {
    return segment;
  }
}

const INTEGER = /^\s*[+-]?\d+\s*$/;

/** A query parameter as an integer (the last one given wins, a blank one counts as absent). */
function intParam(query, name, fallback) {
  const values = query.getAll(name).filter((v) => v !== "");
  if (values.length === 0) return fallback;
  const text = values[values.length - 1];
  if (!INTEGER.test(text)) throw new RangeError(`${name} must be an integer, got '${text}'`);
  return Number(text);
}

function messages(res, channelId, queryString) {
  let after;
  let limit;
  try {
    const query = new URLSearchParams(queryString);
    after = intParam(query, "after", 0);
    limit = intParam(query, "limit", DEFAULT_LIMIT);
    if (after < 0 || limit < 1) throw new RangeError("after must be >= 0 and limit >= 1");
  } catch (err) {
    respond(res, 400, JSON.stringify(error(err.message)));
    return;
  }
  if (faults.backfill_status) {
    respond(res, faults.backfill_status, "", "text/plain");
  } else if (faults.backfill_garbage) {
    respond(res, 200, "<html>not json", "text/html");
  } else if (faults.backfill_empty) {
    respond(res, 200, "[]");
  } else if (store.sync) {
    respond(res, 200, store.afterJson(channelId, after, Math.min(limit, MAX_LIMIT)));
  } else {
    store.afterJson(channelId, after, Math.min(limit, MAX_LIMIT)).then(
      (body) => respond(res, 200, body),
      (err) => {
        process.stderr.write(`backfill failed: ${err && err.stack ? err.stack : err}\n`);
        respond(res, 500, JSON.stringify(error("storage error")));
      },
    );
  }
}

// ---------------------------------------------------------------- main

/** Connect the Redis clients, install the adapter and return the store and a closer. */
async function useRedis(server, url, recovery) {
  const { createClient } = require("redis");
  // connection state recovery needs an adapter that stores packets: the Redis Streams one
  const { createAdapter } = require(recovery ? "@socket.io/redis-streams-adapter" : "@socket.io/redis-adapter");
  const pub = createClient({ url });
  const sub = pub.duplicate();
  const data = pub.duplicate(); // storage apart from pub/sub: a backfill never waits on a publish
  const clients = [pub, sub, data];
  for (const client of clients) client.on("error", (err) => process.stderr.write(`redis: ${err.message}\n`));
  await Promise.all(clients.map((client) => client.connect()));
  server.adapter(recovery ? createAdapter(pub) : createAdapter(pub, sub));
  const redisStore = new RedisStore(data, recovery);
  await redisStore.start(sub, server);
  const close = () => Promise.allSettled(clients.map((client) => client.quit()));
  return { store: redisStore, close };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  faults = args.faults;
  const httpServer = http.createServer(restHandler(args.token));
  io = new Server(httpServer, {
    path: "/socket.io/",
    transports: ["websocket"],
    serveClient: false,
    pingInterval: 25000,
    pingTimeout: 20000,
    maxHttpBufferSize: 1000000,
    ...(args["csr-max-ms"] === null ? {} : {
      // middlewares run on a recovered connect too: the token is checked every time
      connectionStateRecovery: { maxDisconnectionDuration: args["csr-max-ms"], skipMiddlewares: false },
    }),
  });
  let closeStore = async () => {};
  if (args.redis) {
    if (Object.keys(FAULT_DEFAULTS).some((name) => faults[name] !== FAULT_DEFAULTS[name])) {
      usageError("--faults is not supported with --redis");
    }
    const redis = await useRedis(io, args.redis, args["csr-max-ms"] !== null);
    store = redis.store;
    closeStore = redis.close;
  } else {
    store = new MemoryStore();
  }
  io.use(authenticate(args.token));
  io.on("connection", onConnection);
  httpServer.on("error", (err) => {
    process.stderr.write(`server.js: ${err.message}\n`); // e.g. "listen EADDRINUSE: address already in use …"
    process.exit(1);
  });
  // Node's default backlog, 511, drops the SYNs of a connect burst while the loop is busy
  // (each dropped one waits 1 s for its retransmit); the kernel caps it at somaxconn
  httpServer.listen({ port: args.port, host: args.host, backlog: 4096 });
  const shutdown = () => {
    setTimeout(() => process.exit(0), EXIT_GRACE_MS).unref(); // open sockets must not hold exit hostage
    Promise.allSettled([io.close(), closeStore()]).then(() => process.exit(0));
  };
  process.once("SIGTERM", shutdown);
  process.once("SIGINT", shutdown);
}

main().catch((err) => {
  process.stderr.write(`server.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});

"use strict";
/**
 * A small socket.io-client driver: the yardstick of what Node's official client costs.
 *
 *   node client.js --url http://127.0.0.1:PORT --token T --connections N
 *                  [--mode ack|fanout|idle] [--room-size M] [--rate R] [--size 64]
 *
 * ack:    every connection joins a room of its own and runs a closed loop: send_message
 *         with an ack callback, the next one when the ack is back (the server's echo
 *         new_message is received and counted too). Latency: send -> ack.
 * fanout: rooms of M connections; each sends R messages/s on a fixed schedule (open
 *         loop: latency counts from the intended send time, as roombench's does) and
 *         measures send -> each other member's new_message.
 * idle:   connect and join, nothing else.
 * Connections are opened at most 256 at a time. Marks: see marks.js.
 */
const { io } = require("socket.io-client");
const { performance } = require("perf_hooks");
const marks = require("./marks");

function parseArgs(argv) {
  const out = { mode: "ack", "room-size": "1", rate: "1", size: "64", token: "" };
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

const args = parseArgs(process.argv.slice(2));
const N = Number(args.connections);
const MODE = args.mode;
const ROOM_SIZE = Number(args["room-size"]);
const INTERVAL_MS = 1000 / Number(args.rate);
const CONTENT = "x".repeat(Number(args.size));
const CONCURRENCY = 256;
const now = () => performance.now();

let ready = 0;
let acks = 0;
let deliveries = 0;
let errors = 0;
let running = true;
const ackLat = new marks.Samples();
const fanLat = new marks.Samples();
const sent = new Map(); // fanout: temp_id -> [intended ms, deliveries still expected]

function closedLoop(socket, room, me) {
  let k = 0;
  const send = () => {
    const t = now();
    socket.emit("send_message", { channel_id: room, content: CONTENT, temp_id: `${me}-${k++}` }, () => {
      ackLat.add(now() - t);
      acks++;
      if (running) send();
    });
  };
  send();
}

function openLoop(socket, room, me) {
  let k = 0;
  let due = now() + Math.random() * INTERVAL_MS;
  const tick = () => {
    if (!running) return;
    const intended = due;
    const tempId = `${me}-${k++}`;
    sent.set(tempId, [intended, ROOM_SIZE - 1]);
    socket.emit("send_message", { channel_id: room, content: CONTENT, temp_id: tempId }, () => {
      ackLat.add(now() - intended);
      acks++;
    });
    due += INTERVAL_MS;
    setTimeout(tick, Math.max(0, due - now()));
  };
  setTimeout(tick, Math.max(0, due - now()));
}

function onNewMessage(me, msg) {
  if (msg.sender_id === me) return; // our own echo
  const entry = sent.get(msg.temp_id);
  if (entry === undefined) return;
  fanLat.add(now() - entry[0]);
  deliveries++;
  if (--entry[1] === 0) sent.delete(msg.temp_id);
}

function open(i, done) {
  const me = `n${process.pid}-${i}`;
  const room = MODE === "fanout" ? `nf-${process.pid}-${Math.floor(i / ROOM_SIZE)}` : `n-${me}`;
  const socket = io(args.url, { transports: ["websocket"], forceNew: true, auth: { token: args.token, user_id: me } });
  socket.on("new_message", MODE === "fanout" ? (msg) => onNewMessage(me, msg) : () => {});
  socket.on("connect_error", () => errors++);
  socket.once("connect", () => {
    socket.emit("join", { room }, () => {
      ready++;
      done();
      if (MODE === "ack") closedLoop(socket, room, me);
      else if (MODE === "fanout") openLoop(socket, room, me);
    });
  });
}

// Each connection starts its load once joined, as a Locust user does.
let next = 0;
let inFlight = 0;
function pump() {
  while (inFlight < CONCURRENCY && next < N) {
    inFlight++;
    open(next++, () => {
      inFlight--;
      pump();
    });
  }
}

marks.drive(
  () => ready,
  () => {
    ackLat.reset();
    fanLat.reset();
    acks = 0;
    deliveries = 0;
  },
  () => {
    running = false;
    return { acks, deliveries, errors: { connect_error: errors }, lat: { ack: ackLat.summary(), fanout: fanLat.summary() } };
  },
);
pump();

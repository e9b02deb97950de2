"use strict";
/**
 * Artillery processor for the benchmark: names each virtual user's room and tells run.py
 * (marks, see ../node_client/marks.js) when every user is connected and what happened in
 * the measured window. Acks and their latency are Artillery's own: every acknowledged
 * emit fires its `socketio.response_time` histogram event, which one listener counts (no
 * extra step in the loop). Runs in Artillery's worker thread.
 */
const path = require("path");
const marks = require(path.join(__dirname, "..", "node_client", "marks.js"));

let users = 0;
let ready = 0;
let acks = 0;
let errors = 0;
let hooked = false;
const latency = new marks.Samples();
const CONTENT = "x".repeat(Number(process.env.BENCH_SIZE || "64"));

function hook(ee) {
  hooked = true;
  ee.on("histogram", (name, ms) => {
    if (name === "socketio.response_time") {
      acks++;
      latency.add(ms);
    }
  });
  ee.on("error", () => errors++);
  marks.drive(
    () => ready,
    () => {
      acks = 0;
      errors = 0;
      latency.reset();
    },
    () => ({ acks, deliveries: 0, errors: { errors }, lat: { ack: latency.summary() } }),
  );
}

function benchInit(context, ee, next) {
  if (!hooked) hook(ee);
  context.vars.room = `art-${process.pid}-${users++}`;
  context.vars.content = CONTENT;
  return next();
}

function benchReady(context, ee, next) {
  ready++;
  return next();
}

module.exports = { benchInit, benchReady };

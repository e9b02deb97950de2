"use strict";
/**
 * The driver side of the benchmark's mark protocol for Node drivers (the socket.io-client
 * loop and Artillery's processor); the same protocol as marks.py, described there:
 * "before", "ready" once BENCH_USERS users are connected (or BENCH_READY_TIMEOUT s
 * passed), then the window from the control file BENCH_CTL: "start", "end".
 * Lines are written with one fs.writeSync each, so a worker thread can write them too.
 */
const fs = require("fs");

const PREFIX = "@@bench ";

function emit(ev, fields = {}) {
  const line = PREFIX + JSON.stringify({ ev, pid: process.pid, t: Date.now() / 1000, ...fields }) + "\n";
  fs.writeSync(1, line);
}

function rss() {
  return process.memoryUsage.rss();
}

/** Latency samples (ms) of one window; percentiles by sorting once at the end. */
class Samples {
  constructor() {
    this.a = new Float64Array(1 << 16);
    this.n = 0;
  }

  add(v) {
    if (this.n === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }

  reset() {
    this.n = 0;
  }

  summary() {
    const n = this.n;
    if (!n) return { n: 0, p50_ms: 0, p99_ms: 0 };
    const s = this.a.slice(0, n).sort();
    const at = (p) => s[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
    return { n, p50_ms: at(0.5), p99_ms: at(0.99) };
  }
}

/** Wait for the control file, then call start() and end() at its wall-clock instants. */
function waitWindow(start, end) {
  const path = process.env.BENCH_CTL;
  const giveUp = Date.now() + 120000;
  const timer = setInterval(() => {
    let w;
    try {
      w = JSON.parse(fs.readFileSync(path, "utf8"));
    } catch {
      if (Date.now() > giveUp) clearInterval(timer);
      return;
    }
    clearInterval(timer);
    setTimeout(() => {
      start();
      emit("start");
      setTimeout(() => emit("end", end()), Math.max(0, w.end * 1000 - Date.now()));
    }, Math.max(0, w.start * 1000 - Date.now()));
  }, 50);
}

/**
 * The whole protocol: `connected()` counts ready users; `start()` resets counters;
 * `end()` returns what was counted since. Call once, before connecting.
 */
function drive(connected, start, end) {
  const expected = Number(process.env.BENCH_USERS || "1");
  const t0 = Date.now() / 1000;
  emit("before", { rss: rss() });
  const deadline = Date.now() + 1000 * Number(process.env.BENCH_READY_TIMEOUT || "60");
  const poll = setInterval(() => {
    const n = connected();
    if (n < expected && Date.now() < deadline) return;
    clearInterval(poll);
    emit("ready", { connected: n, expected, rss: rss(), t_begin: t0 });
    waitWindow(start, end);
  }, 20);
}

module.exports = { emit, rss, Samples, drive };

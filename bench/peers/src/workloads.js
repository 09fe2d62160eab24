// W1–W3, written once against the adapter interface (src/adapters/*.js):
//   start() → server {url, cpuSeconds(), memory(), stop()}
//   seedBoard(url, doc, n) / openBoard(url, doc, me, onRemote) / joinBoard(url, doc)
//   seedCounter(url, doc) / openCounter(url, doc, me) / readCounter(url, doc)
// Every check waits for an event (an acknowledgement, a change seen by a
// client) with a deadline; nothing sleeps to synchronise.

import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";

import { inbox } from "./inbox.js";
import { clockMs, Samples } from "./stats.js";

let docSeq = 0;
const uniqueDoc = (prefix) => `${prefix}-${process.pid}-${++docSeq}`;

export class CheckFailed extends Error {
  name = "CheckFailed";
}

function deadline(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new CheckFailed(`${what} (no progress within ${ms / 1000} s)`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** CPU seconds between two `process.cpuUsage()` readings. */
function cpuSecondsBetween(a, b) {
  return (b.user - a.user + b.system - a.system) / 1e6;
}

/**
 * The worker threads the closed loops of W1 and W2 run in
 * (src/generator-thread.js), the same for every system: one Node thread
 * taking in every client's changes would cap the fastest server at what
 * that thread can read. Kept for a system's whole repetition, so that the
 * warm-up warms their JIT.
 */
export class GeneratorThreads {
  #count;
  #workers = [];
  /** Errors the server reported to the threads' clients, by code, over every job (warm-up included). */
  serverErrors = {};
  constructor(count) {
    this.#count = Math.max(1, count);
    this.#spawn();
  }
  get count() {
    return this.#count;
  }
  #spawn() {
    this.#workers = Array.from({ length: this.#count }, (_, t) => {
      const worker = new Worker(new URL("./generator-thread.js", import.meta.url));
      return { worker, next: inbox(worker, (message) => new CheckFailed(`thread ${t}: ${message}`)) };
    });
  }
  /** Clients 0..C-1 by thread: thread t holds clients t, t + T, t + 2T, … */
  split(C) {
    const T = this.#count;
    return Array.from({ length: T }, (_, t) => Array.from({ length: C }, (_, i) => i).filter((i) => i % T === t));
  }
  /** Posts `messages[t]` to thread t (one message to all if not an array) and waits for every reply. */
  exchange(messages, ms, what) {
    const replies = this.#workers.map(({ worker, next }, t) => {
      worker.postMessage(Array.isArray(messages) ? messages[t] : messages);
      return next();
    });
    return deadline(Promise.all(replies), ms, what);
  }
  /**
   * Opens every thread's clients with `jobs` (one per thread), starts them
   * all at once and waits for every thread's result; then closes every
   * client (no client leaves while others still work). `begin()` runs once
   * all are open, just before they start, and `end()` once all are done,
   * before any client closes. After a failure the threads are replaced,
   * since one may be mid-job.
   */
  async run(jobs, timeoutMs, label, begin, end) {
    try {
      await this.exchange(jobs, timeoutMs, `${label}: clients did not all open`);
      const before = begin();
      const done = await this.exchange("go", timeoutMs + 10_000, `${label}: threads did not finish`);
      const after = end();
      for (const d of done) for (const [code, n] of Object.entries(d.serverErrors)) this.serverErrors[code] = (this.serverErrors[code] ?? 0) + n;
      await this.exchange("close", timeoutMs, `${label}: clients did not all close`);
      return { before, after, done };
    } catch (error) {
      await this.close();
      this.#spawn();
      throw error;
    }
  }
  async close() {
    await Promise.all(this.#workers.map(({ worker }) => worker.terminate()));
  }
}

/**
 * W1 whiteboard: C clients, each moves its own shape K times in a closed loop
 * (the next move once the server acknowledged the previous one). Every other
 * client must see every move, in order. The clients are spread over
 * `threads` (a `GeneratorThreads`).
 */
export async function w1(adapter, server, { clients: C, ops: K, timeoutMs }, threads) {
  const doc = uniqueDoc("w1");
  await adapter.seedBoard(server.url, doc, C);
  const mine = threads.split(C);
  const jobs = mine.map((m) => ({ kind: "w1", adapterId: adapter.id, url: server.url, doc, clients: C, ops: K, mine: m, timeoutMs }));
  const { before, after, done } = await threads.run(
    jobs,
    timeoutMs,
    `W1 ${adapter.name}`,
    () => ({ split: server.cpuSplit(), lg: process.cpuUsage() /* the whole process: every thread */, t0: clockMs() }),
    () => ({ split: server.cpuSplit(), mem: server.memory(), lg: process.cpuUsage() }),
  );
  const { split: split0, t0 } = before;
  const { split: split1, mem } = after;
  const loadgenCpu = cpuSecondsBetween(before.lg, after.lg);
  const cpu0 = split0.user + split0.system;
  const cpu1 = split1.user + split1.system;
  const tAcked = Math.max(...done.map((d) => d.ackedAt));
  const t1 = Math.max(...done.map((d) => d.seenAt));
  // Fan-out: each arrival paired with its move's send time, whichever thread sent it.
  const stride = K + 1;
  const sendOf = new Array(C);
  done.forEach((d, t) => mine[t].forEach((i, li) => (sendOf[i] = d.sendTimes.subarray(li * stride, (li + 1) * stride))));
  const ack = new Samples();
  const fan = new Samples();
  done.forEach((d, t) => {
    for (const v of d.acks) ack.push(v);
    for (let li = 0; li < mine[t].length; li++) {
      for (let j = 0; j < C; j++) {
        const base = (li * C + j) * stride;
        for (let seq = 1; seq <= K; seq++) {
          const at = d.recvTimes[base + seq];
          if (!Number.isNaN(at)) fan.push(at - sendOf[j][seq]);
        }
      }
    }
  });
  const rate = throughput(C, K, t0, t1);
  const { ops } = rate;
  return {
    ...rate,
    threads: threads.count,
    ackedPerSec: ops / ((tAcked - t0) / 1000),
    ackP50: ack.p(50),
    ackP99: ack.p(99),
    fanP50: fan.p(50),
    fanP99: fan.p(99),
    fanSamples: fan.length,
    serverCpuPerOpUs: ((cpu1 - cpu0) / ops) * 1e6,
    serverKernelCpuPerOpUs: ((split1.system - split0.system) / ops) * 1e6,
    serverCpuSeconds: cpu1 - cpu0,
    loadgenCpuSeconds: loadgenCpu,
    serverRss: mem.rss,
    errors: done.flatMap((d) => d.errors).slice(0, 5),
  };
}

/** The fields every closed-loop result starts with: C clients × K ops between t0 and t1 (ms). */
function throughput(C, K, t0, t1) {
  const ops = C * K;
  const seconds = (t1 - t0) / 1000;
  return { clients: C, ops, seconds, opsPerSec: ops / seconds };
}

/**
 * W2 hot counter: C clients each add 1 to one counter K times, closed loop.
 * `mode` "add" (the commutative op) or "rmw" (read-modify-write). The final
 * value is read by a fresh client. The clients are spread over `threads`.
 */
export async function w2(adapter, server, { clients: C, ops: K, timeoutMs }, mode, threads) {
  const doc = uniqueDoc(`w2${mode}`);
  await adapter.seedCounter(server.url, doc);
  const jobs = threads.split(C).map((m) => ({ kind: "w2", adapterId: adapter.id, url: server.url, doc, ops: K, mine: m, mode, timeoutMs }));
  const { before, after, done } = await threads.run(
    jobs,
    timeoutMs,
    `W2${mode === "add" ? "a" : "b"} ${adapter.name}`,
    () => ({ cpu: server.cpuSeconds(), lg: process.cpuUsage(), t0: clockMs() }),
    () => ({ cpu: server.cpuSeconds(), lg: process.cpuUsage() }),
  );
  const t1 = Math.max(...done.map((d) => d.doneAt));
  const cpu1 = after.cpu;
  const loadgenCpu = cpuSecondsBetween(before.lg, after.lg);
  const ack = new Samples();
  for (const d of done) for (const v of d.acks) ack.push(v);
  const runs = done.reduce((sum, d) => sum + d.runs, 0);
  // Every thread has closed its clients.
  const final = await adapter.readCounter(server.url, doc);
  const rate = throughput(C, K, before.t0, t1);
  const { ops } = rate;
  return {
    ...rate,
    threads: threads.count,
    ackP50: ack.p(50),
    ackP99: ack.p(99),
    final,
    expected: ops,
    exact: final === ops,
    runsPerOp: runs / ops,
    runsMax: Math.max(...done.map((d) => d.runsMax)),
    rejectionRate: runs > 0 ? (runs - ops) / runs : 0,
    serverCpuPerOpUs: ((cpu1 - before.cpu) / ops) * 1e6,
    loadgenCpuSeconds: loadgenCpu,
    errors: [],
  };
}

/** W3 late joiner: time and bytes received for a new client to load an N-shape board. */
export async function w3(adapter, server, { shapes: N, joins, timeoutMs }) {
  const doc = uniqueDoc("w3");
  await adapter.seedBoard(server.url, doc, N);
  const times = [];
  const bytes = [];
  const errors = [];
  // Server CPU over all joins (clock ticks are 10 ms: one join is too short to time alone).
  let cpu = 0;
  for (let j = 0; j < joins; j++) {
    const cpu0 = server.cpuSeconds();
    const t0 = performance.now();
    const joiner = await deadline(adapter.joinBoard(server.url, doc), timeoutMs, `W3 ${adapter.name}: join did not finish`);
    const t1 = performance.now();
    const cpu1 = server.cpuSeconds();
    times.push(t1 - t0);
    bytes.push(joiner.bytes());
    cpu += cpu1 - cpu0;
    const count = joiner.shapeCount();
    if (count !== N) errors.push(`join ${j}: ${count} shapes loaded, expected ${N}`);
    joiner.close();
  }
  const mem = server.memory();
  return { shapes: N, joins, timesMs: times, bytes, serverCpuMsPerJoin: (cpu / joins) * 1000, serverRss: mem.rss, errors };
}

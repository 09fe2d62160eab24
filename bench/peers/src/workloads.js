// W1–W3, written once against the adapter interface (src/adapters/*.js):
//   start() → server {url, cpuSeconds(), memory(), stop()}
//   seedBoard(url, doc, n) / openBoard(url, doc, me, onRemote) / joinBoard(url, doc)
//   seedCounter(url, doc) / openCounter(url, doc) / readCounter(url, doc)
// Every check waits for an event (an acknowledgement, a change seen by a
// client) with a deadline; nothing sleeps to synchronise.

import { performance } from "node:perf_hooks";

import { Samples } from "./stats.js";

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

/** Opens `count` clients one after another (connection storms are not what is measured). */
async function openAll(count, open) {
  const out = [];
  for (let i = 0; i < count; i++) out.push(await open(i));
  return out;
}

function lgCpu(start) {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

/**
 * W1 whiteboard: C clients, each moves its own shape K times in a closed loop
 * (the next move once the server acknowledged the previous one). Every other
 * client must see every move, in order.
 */
export async function w1(adapter, server, { clients: C, ops: K, timeoutMs }) {
  const doc = uniqueDoc("w1");
  await adapter.seedBoard(server.url, doc, C);
  const sendTimes = Array.from({ length: C }, () => new Float64Array(K + 1));
  const ack = new Samples();
  const fan = new Samples();
  const last = Array.from({ length: C }, () => new Int32Array(C));
  let outOfOrder = 0;
  let remaining = C * (C - 1) * K;
  let allSeen;
  const seen = new Promise((resolve) => (allSeen = resolve));
  if (remaining === 0) allSeen();
  const boards = await openAll(C, (i) =>
    adapter.openBoard(server.url, doc, i, (j, seq) => {
      const now = performance.now();
      const prev = last[i][j];
      if (typeof seq !== "number" || seq <= prev || seq > K) {
        outOfOrder++;
        return;
      }
      if (seq !== prev + 1) outOfOrder++; // a move this client never saw on its own
      last[i][j] = seq;
      fan.push(now - sendTimes[j][seq]);
      remaining -= seq - prev;
      if (remaining === 0) allSeen();
    }),
  );
  const split0 = server.cpuSplit();
  const cpu0 = split0.user + split0.system;
  const lg0 = process.cpuUsage();
  const t0 = performance.now();
  await deadline(
    Promise.all(
      boards.map(async (board, i) => {
        const times = sendTimes[i];
        for (let k = 1; k <= K; k++) {
          const t = performance.now();
          times[k] = t;
          await board.move(k);
          ack.push(performance.now() - t);
        }
      }),
    ),
    timeoutMs,
    `W1 ${adapter.name}: moves not all acknowledged`,
  );
  const tAcked = performance.now();
  await deadline(seen, timeoutMs, `W1 ${adapter.name}: not every client saw every move (${remaining} missing)`);
  const t1 = performance.now();
  const split1 = server.cpuSplit();
  const cpu1 = split1.user + split1.system;
  const mem = server.memory();
  const loadgenCpu = lgCpu(lg0);
  const errors = [];
  if (outOfOrder > 0) errors.push(`${outOfOrder} moves seen out of order or skipped`);
  for (let i = 0; i < C && errors.length < 5; i++) {
    for (let j = 0; j < C; j++) {
      const v = boards[i].seqOf(j);
      if (v !== K) {
        errors.push(`client ${i} holds shape ${j} at ${v}, expected ${K}`);
        break;
      }
    }
  }
  for (const b of boards) b.close();
  const rate = throughput(C, K, t0, t1);
  const { ops } = rate;
  return {
    ...rate,
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
    errors,
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
 * value is read by a fresh client.
 */
export async function w2(adapter, server, { clients: C, ops: K, timeoutMs }, mode) {
  const doc = uniqueDoc(`w2${mode}`);
  await adapter.seedCounter(server.url, doc);
  const counters = await openAll(C, () => adapter.openCounter(server.url, doc));
  const ack = new Samples();
  let runs = 0;
  let runsMax = 0;
  const cpu0 = server.cpuSeconds();
  const lg0 = process.cpuUsage();
  const t0 = performance.now();
  await deadline(
    Promise.all(
      counters.map(async (counter) => {
        for (let k = 0; k < K; k++) {
          const t = performance.now();
          const r = await counter[mode]();
          runs += r;
          if (r > runsMax) runsMax = r;
          ack.push(performance.now() - t);
        }
      }),
    ),
    timeoutMs,
    `W2${mode === "add" ? "a" : "b"} ${adapter.name}: increments not all acknowledged`,
  );
  const t1 = performance.now();
  const cpu1 = server.cpuSeconds();
  const loadgenCpu = lgCpu(lg0);
  for (const c of counters) c.close();
  const final = await adapter.readCounter(server.url, doc);
  const rate = throughput(C, K, t0, t1);
  const { ops } = rate;
  return {
    ...rate,
    ackP50: ack.p(50),
    ackP99: ack.p(99),
    final,
    expected: ops,
    exact: final === ops,
    runsPerOp: runs / ops,
    runsMax,
    rejectionRate: runs > 0 ? (runs - ops) / runs : 0,
    serverCpuPerOpUs: ((cpu1 - cpu0) / ops) * 1e6,
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

// A load-generator thread (see `GeneratorThreads` in workloads.js). It lives
// as long as one system's repetition, so its JIT warms up with the warm-up
// run. For each job (W1 or W2) it opens the clients it is given, waits for
// "go", runs their closed loops, posts back its raw samples, and closes its
// clients on "close". Times are on the process-wide monotonic clock
// (`clockMs`), so the main thread can pair a move sent here with its
// arrival on another thread.

import { parentPort } from "node:worker_threads";

import { inbox } from "./inbox.js";
import { clockMs, Samples } from "./stats.js";

const next = inbox(parentPort);

/** A check that failed: reported by its message alone (anything else with its stack). */
class CheckFailed extends Error {}

const JOBS = { w1, w2 };

for (;;) {
  const job = await next();
  // What the job opened. Closed only once every thread has finished (the
  // main thread says "close"): a client leaving while others still write
  // would have its server send to a closed socket, which ShareDB's server
  // does not survive.
  const clients = [];
  try {
    parentPort.postMessage(await JOBS[job.kind](job, clients));
    await next(); // "close"
    for (const c of clients) c.close();
    parentPort.postMessage({ type: "closed" });
  } catch (error) {
    for (const c of clients) c.close();
    parentPort.postMessage({ type: "failed", message: error instanceof CheckFailed ? error.message : (error?.stack ?? String(error)) });
  }
}

/**
 * Tells the main thread the clients are open, waits for "go", then runs
 * `loops` and returns their result, or rejects with `stuck()`'s message if
 * they take longer than `timeoutMs`.
 */
async function started(loops, timeoutMs, stuck) {
  parentPort.postMessage({ type: "ready" });
  await next(); // "go"
  let timer;
  const timedOut = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`${stuck()} within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    return await Promise.race([timedOut, loops()]);
  } finally {
    clearTimeout(timer);
  }
}

/** Server-reported errors since `before` (the adapter's counts are per thread and cumulative). */
function errorsSince(adapter, before) {
  const out = {};
  for (const [code, n] of Object.entries(adapter.diagnostics())) {
    if (n > (before[code] ?? 0)) out[code] = n - (before[code] ?? 0);
  }
  return out;
}

/**
 * W1 for clients `mine` of C, opened into `boards`: each moves its shape K
 * times; done once each has seen every other's moves.
 */
async function w1({ adapterId, url, doc, clients: C, ops: K, mine, timeoutMs }, boards) {
  const adapter = await import(`./adapters/${adapterId}.js`);
  const diagnostics0 = adapter.diagnostics();
  const L = mine.length;
  const stride = K + 1;
  // sendTimes[li * stride + seq]: when local client li sent move seq.
  const sendTimes = new Float64Array(L * stride);
  // recvTimes[(li * C + j) * stride + seq]: when local client li saw client j's move seq (NaN: not in order).
  const recvTimes = new Float64Array(L * C * stride).fill(Number.NaN);
  const last = new Int32Array(L * C);
  const ack = new Samples();
  let outOfOrder = 0;
  let remaining = L * (C - 1) * K;
  let allSeen;
  const seen = new Promise((resolve) => (allSeen = resolve));
  if (remaining === 0) allSeen();

  // One after another: connection storms are not what is measured.
  for (let li = 0; li < L; li++) {
    boards.push(
      await adapter.openBoard(url, doc, mine[li], (j, seq) => {
        const now = clockMs();
        const at = li * C + j;
        const prev = last[at];
        if (typeof seq !== "number" || seq <= prev || seq > K) {
          outOfOrder++;
          return;
        }
        if (seq !== prev + 1) outOfOrder++; // a move this client never saw on its own
        last[at] = seq;
        recvTimes[at * stride + seq] = now;
        remaining -= seq - prev;
        if (remaining === 0) allSeen();
      }),
    );
  }
  let ackedAt;
  await started(
    async () => {
      await Promise.all(
        boards.map(async (board, li) => {
          for (let k = 1; k <= K; k++) {
            const t = clockMs();
            sendTimes[li * stride + k] = t;
            await board.move(k);
            ack.push(clockMs() - t);
          }
        }),
      );
      ackedAt = clockMs();
      await seen;
    },
    timeoutMs,
    () => (ack.length < L * K ? `moves not all acknowledged (${ack.length} of ${L * K})` : `not every client saw every move (${remaining} missing)`),
  );
  const seenAt = clockMs();
  const errors = [];
  if (outOfOrder > 0) errors.push(`${outOfOrder} moves seen out of order or skipped`);
  for (let li = 0; li < L && errors.length < 5; li++) {
    for (let j = 0; j < C; j++) {
      const v = boards[li].seqOf(j);
      if (v !== K) {
        errors.push(`client ${mine[li]} holds shape ${j} at ${v}, expected ${K}`);
        break;
      }
    }
  }
  return { type: "done", ackedAt, seenAt, acks: ack.values().slice(), sendTimes, recvTimes, errors, serverErrors: errorsSince(adapter, diagnostics0) };
}

/** W2 for clients `mine`, opened into `counters`: each adds 1 to the counter K times, `mode` "add" or "rmw". */
async function w2({ adapterId, url, doc, ops: K, mine, mode, timeoutMs }, counters) {
  const adapter = await import(`./adapters/${adapterId}.js`);
  const diagnostics0 = adapter.diagnostics();
  const ack = new Samples();
  let runs = 0;
  let runsMax = 0;
  for (const me of mine) counters.push(await adapter.openCounter(url, doc, me));
  await started(
    () =>
      Promise.all(
        counters.map(async (counter) => {
          for (let k = 0; k < K; k++) {
            const t = clockMs();
            const r = await counter[mode]();
            runs += r;
            if (r > runsMax) runsMax = r;
            ack.push(clockMs() - t);
          }
        }),
      ),
    timeoutMs,
    () => `increments not all acknowledged (${ack.length} of ${mine.length * K})`,
  );
  const doneAt = clockMs();
  return { type: "done", doneAt, acks: ack.values().slice(), runs, runsMax, serverErrors: errorsSince(adapter, diagnostics0) };
}

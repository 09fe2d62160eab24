// A W1 load-generator thread (see `W1Threads` in workloads.js). It lives as
// long as one system's repetition, so its JIT warms up with the warm-up run.
// For each job it opens the boards of the clients it is given, waits for
// "go", runs their closed loops, and posts back its raw samples once every
// client it holds has seen every other client's moves. Times are on the
// process-wide monotonic clock (`clockMs`), so the main thread can pair a
// move sent here with its arrival on another thread.

import { parentPort } from "node:worker_threads";

import { inbox } from "./inbox.js";
import { clockMs, Samples } from "./stats.js";

const next = inbox(parentPort);

/** A check that failed: reported by its message alone (anything else with its stack). */
class CheckFailed extends Error {}

for (;;) {
  const job = await next();
  try {
    parentPort.postMessage(await w1(job));
  } catch (error) {
    parentPort.postMessage({ type: "failed", message: error instanceof CheckFailed ? error.message : (error?.stack ?? String(error)) });
  }
}

async function w1({ adapterId, url, doc, clients: C, ops: K, mine, timeoutMs }) {
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

  const boards = [];
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
  let timer;
  try {
    parentPort.postMessage({ type: "ready" });
    await next(); // "go"
    const timedOut = new Promise((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new CheckFailed(
              `${ack.length < L * K ? `moves not all acknowledged (${ack.length} of ${L * K})` : `not every client saw every move (${remaining} missing)`} within ${timeoutMs / 1000} s`,
            ),
          ),
        timeoutMs,
      );
    });
    await Promise.race([
      timedOut,
      Promise.all(
        boards.map(async (board, li) => {
          for (let k = 1; k <= K; k++) {
            const t = clockMs();
            sendTimes[li * stride + k] = t;
            await board.move(k);
            ack.push(clockMs() - t);
          }
        }),
      ),
    ]);
    const ackedAt = clockMs();
    await Promise.race([timedOut, seen]);
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
    const serverErrors = {};
    for (const [code, n] of Object.entries(adapter.diagnostics())) {
      if (n > (diagnostics0[code] ?? 0)) serverErrors[code] = n - (diagnostics0[code] ?? 0);
    }
    return { type: "done", ackedAt, seenAt, acks: ack.values().slice(), sendTimes, recvTimes, errors, serverErrors };
  } finally {
    clearTimeout(timer);
    for (const b of boards) b.close();
  }
}

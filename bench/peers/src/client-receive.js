// What a W1 change costs the TypeScript client to take in, with no socket,
// kernel or server in the way: 32 clients in one process, as in the load
// generator, each on a scripted socket, holding a board of 32 shapes, are
// handed the other 31 clients' moves as batched frames, frame by frame in
// turn, and read each moved shape with the W1 adapter's own `change`
// listener. Prints the median CPU time per delivered change over several
// runs.
//
//   node src/client-receive.js [--client DIR] [--rounds N] [--runs R] [--receivers C] [--pending N]
//
// --pending N: each client has N moves of its own shape pending throughout
// (default 0). In W1 most changes find none: the acknowledgement of a move
// and the changes after it arrive in one read, and the next move is sent
// only once that read is handled. A browser dragging a shape has several.
//
// --client: a built @concord/client (its dist/index.js), to compare two
// builds side by side; default the workspace's.

import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

import { followMoves } from "./adapters/concord.js";

const { values } = parseArgs({
  options: {
    client: { type: "string" },
    rounds: { type: "string", default: "2000" },
    runs: { type: "string", default: "7" },
    receivers: { type: "string", default: "32" },
    pending: { type: "string", default: "0" },
  },
});
const { Client } = await import(
  values.client ? pathToFileURL(resolve(values.client, "index.js")).href : "@concord/client"
);
const ROUNDS = Number(values.rounds);
const RUNS = Number(values.runs);
const CLIENTS = 32;
const RECEIVERS = Number(values.receivers);
const PENDING = Number(values.pending);
/** Changes per frame: what a coalescing window holds at W1 rates. */
const PER_FRAME = 8;

class ScriptedSocket {
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent = [];
  constructor(url) {
    this.url = url;
    sockets.push(this);
  }
  send(data) {
    this.sent.push(data);
  }
  close() {
    this.readyState = 3;
  }
  deliver(text) {
    this.onmessage({ data: text });
  }
}
const sockets = [];

function board() {
  const shapes = {};
  for (let i = 0; i < CLIENTS; i++) shapes[`s${i}`] = { x: 0, y: 0, w: 100, h: 50, color: "#3366cc" };
  return { shapes };
}

/** One receiving client, live on the board with `PENDING` moves of its own shape `me` pending. */
async function receiver(docId, me) {
  const client = new Client("ws://scripted/ws", { WebSocket: ScriptedSocket, clientId: `k7Hq2mPz9x${me}`, reconnect: false });
  const socket = sockets[sockets.length - 1];
  socket.readyState = 1;
  socket.onopen({});
  socket.deliver(JSON.stringify({ type: "welcome", protocol: 1, session: `s${me}` }));
  const handle = client.document(docId);
  socket.deliver(JSON.stringify({ type: "snapshot", doc: docId, version: 0, value: board() }));
  socket.deliver(JSON.stringify({ type: "opened", doc: docId, version: 0 }));
  await handle.whenReady();
  const state = { client, handle, socket, seen: 0 };
  followMoves(handle, me, (_j, x) => {
    if (typeof x === "number") state.seen++;
  });
  for (let k = 1; k <= PENDING; k++) {
    void handle
      .transact((tx) => {
        tx.set(`/shapes/s${me}/x`, k);
        tx.set(`/shapes/s${me}/y`, k);
      })
      .catch(() => {});
  }
  return state;
}

/** The frames the server sends: every other client's moves, `PER_FRAME` changes to a frame. */
function framesOf(docId) {
  const frames = [];
  let version = 0;
  let batch = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (let j = 1; j < CLIENTS; j++) {
      version++;
      batch.push(
        JSON.stringify({
          type: "change",
          doc: docId,
          version,
          tx_id: `c${j}Xy7Qm2LpR-${round}`,
          patch: [
            { op: "add", path: `/shapes/s${j}/x`, value: round },
            { op: "add", path: `/shapes/s${j}/y`, value: round },
          ],
        }),
      );
      if (batch.length === PER_FRAME) {
        frames.push(`[${batch.join(",")}]`);
        batch = [];
      }
    }
  }
  if (batch.length > 0) frames.push(`[${batch.join(",")}]`);
  return { frames, changes: version };
}

const DOC_ID = `w1-${process.pid}-1`;
// Built once, before any timing.
const { frames, changes } = framesOf(DOC_ID);

async function run() {
  sockets.length = 0;
  const docId = DOC_ID;
  // Every receiver owns shape 0, which no frame moves.
  const receivers = [];
  for (let i = 0; i < RECEIVERS; i++) receivers.push(await receiver(docId, 0));
  const start = process.cpuUsage();
  for (const frame of frames) for (const r of receivers) r.socket.deliver(frame);
  const used = process.cpuUsage(start);
  for (const r of receivers) {
    if (r.seen !== changes) throw new Error(`saw ${r.seen} of ${changes} changes`);
    if (r.handle.pendingCount !== PENDING) throw new Error(`${PENDING} own moves should still be pending`);
    r.client.close();
  }
  return (used.user + used.system) / (changes * RECEIVERS);
}

const results = [];
for (let i = 0; i < RUNS + 1; i++) {
  const us = await run();
  if (i > 0) results.push(us); // the first run warms the JIT up
}
results.sort((a, b) => a - b);
const median = results[Math.floor(results.length / 2)];
console.log(
  `client receive: ${median.toFixed(2)} µs CPU per change (median of ${RUNS} runs of ${ROUNDS * (CLIENTS - 1)} changes to each of ${RECEIVERS} clients, ${PENDING} pending; ${results.map((r) => r.toFixed(2)).join(" ")})`,
);

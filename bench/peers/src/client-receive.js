// What a W1 change costs the TypeScript client to take in, with no socket,
// kernel or server in the way: one client, on a scripted socket, holding a
// board of 32 shapes with its own move pending (as in W1's closed loop), is
// handed the other 31 clients' moves as batched frames and reads each moved
// shape in its `change` listener, as the W1 adapter does. Prints the median
// CPU time per delivered change over several runs.
//
//   node src/client-receive.js [--client DIR] [--rounds N] [--runs R]
//
// --client: a built @concord/client (its dist/index.js), to compare two
// builds side by side; default the workspace's.

import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const { values } = parseArgs({
  options: {
    client: { type: "string" },
    rounds: { type: "string", default: "2000" },
    runs: { type: "string", default: "7" },
  },
});
const { Client } = await import(
  values.client ? pathToFileURL(resolve(values.client, "index.js")).href : "@concord/client"
);
const ROUNDS = Number(values.rounds);
const RUNS = Number(values.runs);
const CLIENTS = 32;
const ME = 0;
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

async function run() {
  sockets.length = 0;
  const docId = `w1-${process.pid}-1`;
  const client = new Client("ws://scripted/ws", { WebSocket: ScriptedSocket, clientId: "k7Hq2mPz9xWv", reconnect: false });
  const socket = sockets[0];
  socket.readyState = 1;
  socket.onopen({});
  socket.deliver(JSON.stringify({ type: "welcome", protocol: 1, session: "s1" }));
  const handle = client.document(docId);
  socket.deliver(JSON.stringify({ type: "snapshot", doc: docId, version: 0, value: board() }));
  socket.deliver(JSON.stringify({ type: "opened", doc: docId, version: 0 }));
  await handle.whenReady();
  let seen = 0;
  handle.on("change", (event) => {
    if (event.origin !== "remote") return;
    for (const w of event.writes) {
      if (!w.startsWith("/shapes/s") || !w.endsWith("/x")) continue;
      const j = Number(w.slice(9, -2));
      if (j === ME) continue;
      if (typeof handle.get(w) === "number") seen++;
    }
  });
  // Our own move stays pending throughout, as it is most of the time in W1.
  void handle
    .transact((tx) => {
      tx.set(`/shapes/s${ME}/x`, 1);
      tx.set(`/shapes/s${ME}/y`, 1);
    })
    .catch(() => {});
  // The frames, built before timing: what the server sends.
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
  const start = process.cpuUsage();
  for (const frame of frames) socket.deliver(frame);
  const used = process.cpuUsage(start);
  if (seen !== version) throw new Error(`saw ${seen} of ${version} changes`);
  if (handle.pendingCount !== 1) throw new Error("the own move should still be pending");
  client.close();
  return (used.user + used.system) / version;
}

const results = [];
for (let i = 0; i < RUNS + 1; i++) {
  const us = await run();
  if (i > 0) results.push(us); // the first run warms the JIT up
}
results.sort((a, b) => a - b);
const median = results[Math.floor(results.length / 2)];
console.log(
  `client receive: ${median.toFixed(2)} µs CPU per change (median of ${RUNS} runs of ${ROUNDS * (CLIENTS - 1)} changes; ${results.map((r) => r.toFixed(2)).join(" ")})`,
);

// Concord through its TypeScript client, @concord/client (web/client), on
// the real `concord` binary, in memory (`--memory`).

import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";

import { connect } from "@concord/client";

import { startServer } from "../proc.js";
import { meteredWebSocket } from "../socket.js";

const repo = fileURLToPath(new URL("../../../../", import.meta.url));

export const name = "Concord";
export const id = "concord";

/** Errors the server reported to clients (e.g. rate_limited), by code. */
const serverErrors = new Map();
export function diagnostics() {
  return Object.fromEntries(serverErrors);
}

export function binary() {
  return process.env.CONCORD_BIN ?? `${repo}target/release/concord`;
}

export async function start() {
  serverErrors.clear();
  const bin = binary();
  if (!existsSync(bin)) throw new Error(`concord binary not found at ${bin}: build it with 'cargo build --release -p concord-server --bin concord' (run.sh does)`);
  const extra = (process.env.CONCORD_ARGS ?? "").split(" ").filter(Boolean);
  return startServer(
    "concord",
    bin,
    ["serve", "--listen", "127.0.0.1:0", "--memory", ...extra],
    (line) => {
      const m = /(https?:\/\/[^\s)]+)/.exec(line);
      return m ? `${m[1].replace(/\/$/, "").replace(/^http/, "ws")}/ws` : undefined;
    },
    { RUST_LOG: process.env.RUST_LOG ?? "warn" },
  );
}

async function session(url, docId) {
  const { WebSocket, meter } = meteredWebSocket();
  // reconnect: false so a dropped connection fails the run loudly instead of
  // being resumed behind the benchmark's back.
  const client = await connect(url, { WebSocket, reconnect: false, connectTimeoutMs: 30_000 });
  client.on("error", (e) => serverErrors.set(e.code, (serverErrors.get(e.code) ?? 0) + 1));
  const handle = await client.open(docId);
  handle.on("error", (e) => serverErrors.set(e.code, (serverErrors.get(e.code) ?? 0) + 1));
  return { client, handle, meter };
}

function shapesOf(n, x = 0) {
  const shapes = {};
  for (let i = 0; i < n; i++) shapes[`s${i}`] = { x, y: x, w: 100, h: 50, color: "#3366cc" };
  return shapes;
}

export async function seedBoard(url, docId, n) {
  const { client, handle } = await session(url, docId);
  const shapes = shapesOf(n);
  await handle.transact((tx) => tx.set("/shapes", shapes));
  client.close();
}

/**
 * Calls `onRemote(j, x)` for every other client's move that reaches
 * `handle`: each remote change to `/shapes/s<j>/x` with `j` not `me`, with
 * the value now there. (Also used by src/client-receive.js.)
 */
export function followMoves(handle, me, onRemote) {
  handle.on("change", (event) => {
    if (event.origin !== "remote") return;
    for (const w of event.writes) {
      // "/shapes/s<j>/x"
      if (!w.startsWith("/shapes/s") || !w.endsWith("/x")) continue;
      const j = Number(w.slice(9, -2));
      if (j === me) continue;
      onRemote(j, handle.get(w));
    }
  });
}

export async function openBoard(url, docId, me, onRemote) {
  const { client, handle, meter } = await session(url, docId);
  followMoves(handle, me, onRemote);
  const x = `/shapes/s${me}/x`;
  const y = `/shapes/s${me}/y`;
  return {
    move: (seq) =>
      handle.transact((tx) => {
        tx.set(x, seq);
        tx.set(y, seq);
      }),
    seqOf: (j) => handle.get(`/shapes/s${j}/x`),
    shapeCount: () => Object.keys(handle.get("/shapes") ?? {}).length,
    bytes: meter.bytes,
    close: () => client.close(),
  };
}

/** Joins a board and resolves once it is loaded (the first snapshot is in the replica). */
export async function joinBoard(url, docId) {
  const { client, handle, meter } = await session(url, docId);
  return {
    shapeCount: () => Object.keys(handle.get("/shapes") ?? {}).length,
    bytes: meter.bytes,
    close: () => client.close(),
  };
}

export async function seedCounter(url, docId) {
  const { client, handle } = await session(url, docId);
  await handle.transact((tx) => tx.set("/n", 0));
  client.close();
}

export async function openCounter(url, docId) {
  const { client, handle, meter } = await session(url, docId);
  return {
    /** The commutative `incr` op: reads nothing, never conflicts. */
    add: () => handle.transact((tx) => tx.increment("/n", 1)).then(() => 1),
    /** Read-modify-write: reads /n, writes n + 1; re-run by `transact` on rejection. Resolves with the number of runs. */
    rmw: async () => {
      let runs = 0;
      await handle.transact(
        (tx) => {
          runs++;
          tx.set("/n", (tx.getNumber("/n") ?? 0) + 1);
        },
        { attempts: 1_000_000 },
      );
      return runs;
    },
    bytes: meter.bytes,
    close: () => client.close(),
  };
}

export async function readCounter(url, docId) {
  const { client, handle } = await session(url, docId);
  const n = handle.get("/n");
  client.close();
  return n;
}

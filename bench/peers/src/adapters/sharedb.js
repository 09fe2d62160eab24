// ShareDB: json0 (the default type), in-memory backend, over `ws`
// (servers/sharedb.js), with ShareDB's own browser/Node client.


import ShareDB from "sharedb/lib/client/index.js";

import { startPeerServer } from "../proc.js";
import { meteredWebSocket } from "../socket.js";

export const name = "ShareDB";
export const id = "sharedb";
const COLLECTION = "bench";

export function diagnostics() {
  return {};
}

export function start() {
  return startPeerServer("sharedb");
}

function cb(resolve, reject) {
  return (err) => (err ? reject(err) : resolve());
}

async function session(url, docId, { subscribe = true } = {}) {
  const { WebSocket, meter } = meteredWebSocket();
  const ws = new WebSocket(url);
  const connection = new ShareDB.Connection(ws);
  const doc = connection.get(COLLECTION, docId);
  await new Promise((resolve, reject) => (subscribe ? doc.subscribe(cb(resolve, reject)) : doc.fetch(cb(resolve, reject))));
  return { connection, doc, meter, close: () => connection.close() };
}

function shapesOf(n, x = 0) {
  const shapes = {};
  for (let i = 0; i < n; i++) shapes[`s${i}`] = { x, y: x, w: 100, h: 50, color: "#3366cc" };
  return shapes;
}

const submit = (doc, op) => new Promise((resolve, reject) => doc.submitOp(op, cb(resolve, reject)));

export async function seedBoard(url, docId, n) {
  const { doc, close } = await session(url, docId, { subscribe: false });
  await new Promise((resolve, reject) => doc.create({ shapes: shapesOf(n) }, cb(resolve, reject)));
  close();
}

export async function openBoard(url, docId, me, onRemote) {
  const { doc, meter, close } = await session(url, docId);
  doc.on("op batch", (op, source) => {
    if (source) return;
    for (const c of op) {
      const p = c.p;
      if (p.length === 3 && p[0] === "shapes" && p[2] === "x") {
        const j = Number(p[1].slice(1));
        if (j !== me) onRemote(j, c.oi);
      }
    }
  });
  const key = `s${me}`;
  return {
    move: (seq) => {
      const s = doc.data.shapes[key];
      return submit(doc, [
        { p: ["shapes", key, "x"], od: s.x, oi: seq },
        { p: ["shapes", key, "y"], od: s.y, oi: seq },
      ]);
    },
    seqOf: (j) => doc.data.shapes[`s${j}`]?.x,
    shapeCount: () => Object.keys(doc.data?.shapes ?? {}).length,
    bytes: meter.bytes,
    close,
  };
}

export async function joinBoard(url, docId) {
  const { doc, meter, close } = await session(url, docId);
  return {
    shapeCount: () => Object.keys(doc.data?.shapes ?? {}).length,
    bytes: meter.bytes,
    close,
  };
}

export async function seedCounter(url, docId) {
  const { doc, close } = await session(url, docId, { subscribe: false });
  await new Promise((resolve, reject) => doc.create({ n: 0 }, cb(resolve, reject)));
  close();
}

export async function openCounter(url, docId) {
  const { doc, meter, close } = await session(url, docId);
  return {
    /** json0's numeric add (`na`). */
    add: () => submit(doc, [{ p: ["n"], na: 1 }]).then(() => 1),
    /**
     * Read-modify-write as a ShareDB app would write it: replace n with n + 1
     * (`od`/`oi`). ShareDB has no read validation: the server transforms a
     * concurrent replace against the one that got there first and the later
     * one wins, so increments are lost. One run per op, never rejected.
     */
    rmw: () => {
      const v = doc.data.n;
      return submit(doc, [{ p: ["n"], od: v, oi: v + 1 }]).then(() => 1);
    },
    bytes: meter.bytes,
    close,
  };
}

export async function readCounter(url, docId) {
  const { doc, close } = await session(url, docId, { subscribe: false });
  const n = doc.data?.n;
  close();
  return n;
}

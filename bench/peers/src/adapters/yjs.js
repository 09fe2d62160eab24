// Yjs: a Y.Doc per client, synced through y-websocket's provider with the
// y-websocket server (servers/yjs.js). Documents are Y.Maps: `shapes` holds a
// Y.Map per shape.
//
// y-websocket has no acknowledgement. The server applies every update and
// sends it to every connection of the document, the sender included, so the
// closed loop waits for that echo: an incoming sync update whose state
// reaches this client's clock (Y.parseUpdateMeta). This costs the Yjs
// clients one extra parse per incoming message, which the other systems'
// clients do not pay.


import * as decoding from "lib0/decoding";
import { WebsocketProvider } from "y-websocket";
import * as Y from "yjs";

import { startPeerServer } from "../proc.js";
import { meteredWebSocket } from "../socket.js";

export const name = "Yjs";
export const id = "yjs";

// One listener per provider on process 'exit' (y-websocket's own).
process.setMaxListeners(0);

export function diagnostics() {
  return {};
}

export function start() {
  return startPeerServer("yjs");
}

async function session(url, docId) {
  const ydoc = new Y.Doc();
  /** Waiters for the echo of this client's own updates: [clock, resolve]. */
  const waiters = [];
  const onMessage = (data) => {
    if (waiters.length === 0) return;
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const decoder = decoding.createDecoder(bytes);
    if (decoding.readVarUint(decoder) !== 0) return; // messageSync
    const syncType = decoding.readVarUint(decoder); // 1 step 2, 2 update
    if (syncType !== 1 && syncType !== 2) return;
    const meta = Y.parseUpdateMeta(decoding.readVarUint8Array(decoder));
    const reached = meta.to.get(ydoc.clientID);
    if (reached === undefined) return;
    // The provider applies the message after this listener; resolve after it.
    queueMicrotask(() => {
      while (waiters.length > 0 && waiters[0][0] <= reached) waiters.shift()[1]();
    });
  };
  const { WebSocket, meter } = meteredWebSocket(onMessage);
  // disableBc: without it, providers of the same room in one process would
  // sync through a BroadcastChannel and bypass the server.
  const provider = new WebsocketProvider(url, docId, ydoc, { WebSocketPolyfill: WebSocket, disableBc: true });
  await new Promise((resolve, reject) => {
    const onSync = (synced) => {
      if (!synced) return;
      provider.off("sync", onSync);
      provider.off("connection-error", onError);
      resolve();
    };
    const onError = () => reject(new Error(`y-websocket: connection error to ${url}`));
    provider.on("sync", onSync);
    provider.on("connection-error", onError);
  });
  /** Runs `fn` as one Yjs transaction and resolves once the server echoed it. */
  const change = (fn) => {
    ydoc.transact(fn);
    const clock = Y.getState(ydoc.store, ydoc.clientID);
    return new Promise((resolve) => waiters.push([clock, resolve]));
  };
  const close = () => {
    provider.destroy();
    ydoc.destroy();
  };
  return { ydoc, provider, meter, change, close };
}

export async function seedBoard(url, docId, n) {
  const { ydoc, change, close } = await session(url, docId);
  const shapes = ydoc.getMap("shapes");
  await change(() => {
    for (let i = 0; i < n; i++) {
      shapes.set(`s${i}`, new Y.Map(Object.entries({ x: 0, y: 0, w: 100, h: 50, color: "#3366cc" })));
    }
  });
  close();
}

export async function openBoard(url, docId, me, onRemote) {
  const { ydoc, meter, change, close } = await session(url, docId);
  const shapes = ydoc.getMap("shapes");
  shapes.observeDeep((events, tr) => {
    if (tr.local) return;
    for (const e of events) {
      const target = e.target;
      if (target === shapes || !e.keysChanged.has("x")) continue;
      const j = Number(target._item.parentSub.slice(1));
      if (j !== me) onRemote(j, target.get("x"));
    }
  });
  const mine = shapes.get(`s${me}`);
  return {
    move: (seq) =>
      change(() => {
        mine.set("x", seq);
        mine.set("y", seq);
      }),
    seqOf: (j) => shapes.get(`s${j}`)?.get("x"),
    shapeCount: () => shapes.size,
    bytes: meter.bytes,
    close,
  };
}

export async function joinBoard(url, docId) {
  const { ydoc, meter, close } = await session(url, docId);
  const shapes = ydoc.getMap("shapes");
  return { shapeCount: () => shapes.size, bytes: meter.bytes, close };
}

export async function seedCounter(url, docId) {
  const { ydoc, change, close } = await session(url, docId);
  await change(() => ydoc.getMap("counter").set("n", 0));
  close();
}

/** Client `me` of the counter's clients (unique among them: it names the client's key). */
export async function openCounter(url, docId, me) {
  const { ydoc, meter, change, close } = await session(url, docId);
  const counter = ydoc.getMap("counter");
  const key = `c${me}`;
  return {
    /**
     * Yjs has no numeric-add op. The CRDT way to count is a per-client
     * counter (a G-counter): each client writes only its own key; the value
     * is the sum of all keys. Each write replaces the key's previous item.
     */
    add: () => change(() => counter.set(key, (counter.get(key) ?? 0) + 1)).then(() => 1),
    /** Read-modify-write on one key: last writer wins, so increments are lost. One run per op. */
    rmw: () => change(() => counter.set("n", (counter.get("n") ?? 0) + 1)).then(() => 1),
    bytes: meter.bytes,
    close,
  };
}

/** The counter's value: the sum over all keys (only `n` in the read-modify-write document). */
export async function readCounter(url, docId) {
  const { ydoc, close } = await session(url, docId);
  let sum = 0;
  for (const v of ydoc.getMap("counter").values()) sum += v;
  close();
  return sum;
}

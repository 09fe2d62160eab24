// The whiteboard's model against the real server, without a browser: the
// guarded undo is a transaction, so an undo that ran on a stale replica is
// rejected by the server and re-run, and then refuses with its reason.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect, type Client } from "@concord/client";

import { ConcordServer } from "../../client/test/support/server.js";
import { FaultProxy } from "../../client/test/support/proxy.js";
import { waitFor } from "../../client/test/support/wait.js";
import { Board, type Shape } from "../src/board.js";

let server: ConcordServer;
const clients: Client[] = [];

before(async () => {
  server = await ConcordServer.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server.stop();
});

async function open(url: string, doc: string, name: string): Promise<Board> {
  const client = await connect(url, { reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  clients.push(client);
  const board = new Board(await client.open(doc), { id: client.clientId, name, color: "#000" });
  await board.init();
  return board;
}

const rect = { type: "rect", x: 10, y: 10, w: 100, h: 50, color: "#6d5efc" } as const;

test("edits of different shapes never conflict, and undo restores one's own edit", async () => {
  const doc = `board:unit-${process.pid}-1`;
  const alice = await open(server.wsUrl, doc, "Alice");
  const bob = await open(server.wsUrl, doc, "Bob");
  const a = alice.create({ ...rect });
  const b = bob.create({ ...rect, x: 300 });
  await waitFor(() => alice.doc.pendingCount === 0 && bob.doc.pendingCount === 0 && alice.doc.version === bob.doc.version && alice.doc.version >= 3, "both shapes everywhere");
  const moveA = alice.edit(a, "move");
  const moveB = bob.edit(b, "move");
  assert.ok(moveA && moveB);
  for (let i = 1; i <= 10; i++) {
    moveA.set({ x: 10 + i * 5 });
    moveB.set({ y: 10 + i * 5 });
  }
  moveA.end();
  moveB.end();
  await waitFor(() => alice.doc.pendingCount === 0 && bob.doc.pendingCount === 0 && alice.doc.version === bob.doc.version, "settled");
  assert.equal(alice.shape(a)?.x, 60);
  assert.equal(bob.shape(b)?.y, 60);
  assert.deepEqual(alice.doc.value, bob.doc.value);
  const undone = await alice.undo();
  assert.deepEqual(undone, { ok: true, label: "move" });
  assert.equal(alice.shape(a)?.x, 10);
  await waitFor(() => bob.shape(a)?.x === 10, "the undo at Bob");
  assert.deepEqual(await alice.redo(), { ok: true, label: "move" });
  assert.equal(alice.shape(a)?.x, 60);
});

test("an undo run on a stale replica is rejected by the server, re-run, and refused", async () => {
  const doc = `board:unit-${process.pid}-2`;
  const proxy = await FaultProxy.start(server.wsUrl);
  try {
    const alice = await open(proxy.url, doc, "Alice");
    const bob = await open(server.wsUrl, doc, "Bob");
    const id = alice.create({ ...rect });
    await waitFor(() => bob.shape(id) !== undefined && alice.doc.pendingCount === 0, "the shape at Bob");
    alice.update(id, { color: "#ef4444" }, "recolour");
    await waitFor(() => bob.shape(id)?.color === "#ef4444" && alice.doc.pendingCount === 0, "the recolour at Bob");
    // Alice goes offline; Bob moves the shape; Alice, not knowing, undoes.
    proxy.setOnline(false);
    await waitFor(() => !alice.doc.live, "Alice offline");
    bob.update(id, { x: 500 }, "move");
    await waitFor(() => bob.doc.pendingCount === 0, "Bob's move committed");
    const notices: string[] = [];
    alice.onNotice = (message) => notices.push(message);
    const undo = alice.undo();
    // Locally the guard held (Alice had not seen Bob's move): her undo is pending.
    assert.equal(alice.shape(id)?.color, "#6d5efc");
    assert.equal(alice.doc.pendingCount, 1);
    proxy.setOnline(true);
    const result = await undo;
    assert.deepEqual(result, { ok: false, reason: "Can't undo recolour: Bob changed this shape since." });
    assert.deepEqual(notices, [result.ok ? "" : result.reason]);
    await waitFor(() => alice.doc.version === bob.doc.version && alice.doc.pendingCount === 0, "settled");
    const shape = alice.shape(id) as Shape;
    assert.equal(shape.color, "#ef4444", "nothing of the refused undo remains");
    assert.equal(shape.x, 500);
    assert.deepEqual(alice.doc.value, bob.doc.value);
    assert.ok(!alice.canRedo, "a refused undo leaves nothing to redo");
  } finally {
    await proxy.close();
  }
});

test("creating a shape on a board with no shapes object yet creates it", async () => {
  const doc = `board:unit-${process.pid}-3`;
  const client = await connect(server.wsUrl);
  clients.push(client);
  const handle = await client.open(doc);
  const board = new Board(handle, { id: client.clientId, name: "Cy", color: "#000" });
  // No init(): the create itself must cope.
  const id = board.create({ ...rect });
  await waitFor(() => handle.pendingCount === 0, "committed");
  assert.ok(board.shape(id));
  assert.deepEqual(Object.keys(handle.value as object), ["shapes"]);
});

test("a view-only board writes nothing: no init, and every edit is refused with a notice before it reaches the document", async () => {
  const doc = `board:unit-${process.pid}-4`;
  const editor = await open(server.wsUrl, doc, "Ed");
  const shapeId = editor.create({ ...rect });
  await waitFor(() => editor.doc.pendingCount === 0, "the editor's shape committed");
  const client = await connect(server.wsUrl);
  clients.push(client);
  const handle = await client.open(doc);
  const viewer = new Board(handle, { id: client.clientId, name: "Vi", color: "#000" }, { readOnly: true });
  const notices: string[] = [];
  viewer.onNotice = (message) => notices.push(message);
  await viewer.init();
  const version = handle.version;
  assert.throws(() => viewer.create({ ...rect }), /view-only/);
  assert.equal(viewer.edit(shapeId, "move"), undefined);
  viewer.update(shapeId, { color: "#ef4444" });
  viewer.remove(shapeId);
  assert.deepEqual(await viewer.undo(), { ok: false, reason: "This board is open view-only: it cannot be changed here." });
  assert.ok(!viewer.canUndo && !viewer.canRedo);
  assert.equal(handle.pendingCount, 0, "nothing was sent");
  assert.equal(handle.version, version);
  assert.ok(notices.length >= 3 && notices.every((n) => /view-only/.test(n)), notices.join("; "));
  // What the editor does still shows live on the view-only board.
  editor.update(shapeId, { color: "#22c55e" }, "recolour");
  await waitFor(() => viewer.shape(shapeId)?.color === "#22c55e", "the editor's change at the viewer");
});

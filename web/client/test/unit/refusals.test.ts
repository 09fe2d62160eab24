// The server's refusals at the client, with a scripted socket playing the
// server: a `rejected` `forbidden`, `invalid` or `vetoed` fails the
// transaction with its own typed error (never re-run), rolls its writes
// back and is reported on the document; an `error` `forbidden` answering an
// `open` ends the document's handle with an `AccessDeniedError` instead of
// leaving `whenReady()` waiting.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AccessDeniedError,
  Client,
  ForbiddenError,
  InvalidError,
  ServerError,
  TransactionRejected,
  VetoedError,
  type Rejection,
} from "../../src/index.js";
import { closedAfterEachTest, fakeSockets, liveDocumentOnFakeSocket, type FakeSocket } from "../support/fake-socket.js";
import { waitFor } from "../support/wait.js";

const DOC = "doc";
const clients = closedAfterEachTest();

/** Runs one transaction that the server answers with `rejection`; returns its error, the runs and what the document reported. */
async function refused(rejection: Rejection) {
  const { doc, sockets } = await liveDocumentOnFakeSocket(clients, DOC);
  const socket = sockets[0] as FakeSocket;
  const reported: (ServerError | TransactionRejected)[] = [];
  doc.on("error", (e) => reported.push(e));
  let runs = 0;
  const result = doc
    .transact((tx) => {
      runs++;
      tx.set("/settings", { theme: "dark" });
    })
    .then(() => null, (e: unknown) => e);
  const [sent] = socket.commits();
  assert.ok(sent);
  assert.deepEqual(doc.value, { settings: { theme: "dark" } }, "optimistic");
  socket.receive({ type: "rejected", doc: DOC, tx_id: sent.tx.tx_id, rejection });
  const error = await result;
  return { error, runs, reported, doc, socket, txId: sent.tx.tx_id };
}

test("a forbidden write fails with ForbiddenError (its op, pointer and reason), rolled back, never re-run, reported on the document", async () => {
  const rejection: Rejection = { reason: "forbidden", op_index: 0, pointer: "/settings", message: "outside the token's write scopes (/shapes)" };
  const { error, runs, reported, doc, socket, txId } = await refused(rejection);
  assert.ok(error instanceof ForbiddenError, String(error));
  assert.ok(error instanceof TransactionRejected, "still a TransactionRejected");
  assert.equal(error.name, "ForbiddenError");
  assert.equal(error.code, "forbidden");
  assert.equal(error.opIndex, 0);
  assert.equal(error.pointer, "/settings");
  assert.equal(error.detail, "outside the token's write scopes (/shapes)");
  assert.deepEqual(error.rejection, rejection);
  assert.equal(error.doc, DOC);
  assert.equal(error.txId, txId);
  assert.match(error.message, /forbidden: op 0 writes \/settings: outside the token's write scopes/);
  assert.equal(runs, 1, "not re-run");
  assert.equal(socket.commits().length, 1, "nothing sent again");
  assert.deepEqual(doc.value, {}, "rolled back");
  assert.equal(doc.pendingCount, 0);
  assert.deepEqual(reported, [error], "the document's error event has the same error");
});

test("an invalid write fails with InvalidError (pointer and schema error), never re-run", async () => {
  const { error, runs, reported, doc } = await refused({ reason: "invalid", pointer: "/settings/theme", message: "expected one of light, system" });
  assert.ok(error instanceof InvalidError, String(error));
  assert.equal(error.pointer, "/settings/theme");
  assert.equal(error.detail, "expected one of light, system");
  assert.equal(runs, 1);
  assert.deepEqual(doc.value, {});
  assert.deepEqual(reported, [error]);
});

test("a vetoed write fails with VetoedError (the guard's reason), never re-run", async () => {
  const { error, runs, reported } = await refused({ reason: "vetoed", message: "the board is archived" });
  assert.ok(error instanceof VetoedError, String(error));
  assert.equal(error.detail, "the board is archived");
  assert.match(error.message, /vetoed: the board is archived/);
  assert.equal(runs, 1);
  assert.deepEqual(reported, [error]);
});

test("a retryable rejection is still re-run and not reported as an error", async () => {
  const { doc, sockets } = await liveDocumentOnFakeSocket(clients, DOC);
  const socket = sockets[0] as FakeSocket;
  const reported: unknown[] = [];
  doc.on("error", (e) => reported.push(e));
  const result = doc.transact((tx) => tx.set("/n", (tx.getNumber("/n") ?? 0) + 1));
  const [first] = socket.commits();
  assert.ok(first);
  socket.receive({ type: "change", doc: DOC, version: 1, tx_id: "x-1", patch: [{ op: "add", path: "/n", value: 5 }] });
  socket.receive({ type: "rejected", doc: DOC, tx_id: first.tx.tx_id, rejection: { reason: "conflict", conflicts: [{ pointer: "/n", version: 1, tx_id: "x-1" }], conflicts_total: 1 } });
  const rerun = await waitFor(() => socket.commits()[1], "the re-run");
  socket.receive({ type: "committed", doc: DOC, tx_id: rerun.tx.tx_id, version: 2 });
  await result;
  assert.deepEqual(doc.value, { n: 6 });
  assert.deepEqual(reported, []);
});

test("an open the token does not allow rejects whenReady() and open() with AccessDeniedError, and reports it on the document", async () => {
  const { WebSocket, sockets } = fakeSockets();
  const client = new Client("ws://fake/ws", { WebSocket, clientId: "c", reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  clients.push(client);
  const socket = sockets[0] as FakeSocket;
  socket.accept("s1", { sub: "viewer" });
  const opening = client.open("board:secret").then(() => null, (e: unknown) => e);
  const doc = client.document("board:secret");
  const reported: unknown[] = [];
  doc.on("error", (e) => reported.push(e));
  const waiting = doc.transact((tx) => tx.set("/x", 1)).then(() => null, (e: unknown) => e);
  socket.receive({ type: "error", code: "forbidden", message: "the token may not read board:secret", doc: "board:secret" });
  const error = await opening;
  assert.ok(error instanceof AccessDeniedError, String(error));
  assert.ok(error instanceof ServerError);
  assert.equal(error.code, "forbidden");
  assert.equal(error.doc, "board:secret");
  assert.match(error.message, /may not read board:secret/);
  await assert.rejects(doc.whenReady(), (e: unknown) => e === error);
  assert.equal(await waiting, error, "a transaction waiting for the first copy fails too");
  assert.deepEqual(reported, [error]);
  // The handle is over; asking again opens afresh (a new token may allow it).
  const again = client.document("board:secret");
  assert.notEqual(again, doc);
  assert.deepEqual(socket.sent.filter((m) => m.type === "open").length, 2);
});

test("a forbidden error on a live document (not an open) leaves it open", async () => {
  const { doc, sockets } = await liveDocumentOnFakeSocket(clients, DOC);
  const reported: unknown[] = [];
  doc.on("error", (e) => reported.push(e));
  (sockets[0] as FakeSocket).receive({ type: "error", code: "forbidden", message: "presence is not allowed here", doc: DOC });
  assert.equal(reported.length, 1);
  assert.ok(reported[0] instanceof AccessDeniedError);
  assert.ok(doc.live);
  await doc.whenReady();
});

test("a subscribe, a register and an acknowledged publish the token does not allow reject with AccessDeniedError", async () => {
  const { WebSocket, sockets } = fakeSockets();
  const client = new Client("ws://fake/ws", { WebSocket, clientId: "c", reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  clients.push(client);
  const socket = sockets[0] as FakeSocket;
  socket.accept("s1", { sub: "viewer" });
  const allowed = client.subscribe("board.*", () => {});
  const subscribing = client.subscribe("board.1.cursor.>", () => {}).then(() => null, (e: unknown) => e);
  const registering = client.register("bot.move", () => 1).then(() => null, (e: unknown) => e);
  const publishing = client.publish("chat.room", { hi: 1 }, { ack: true }).then(() => null, (e: unknown) => e);
  // Answered in another order than asked: each refusal names what it refuses.
  socket.receive({ type: "error", code: "forbidden", message: "no grant of this session allows publishing to chat.room" });
  socket.receive({ type: "error", code: "forbidden", message: "no grant of this session allows registering bot.move" });
  socket.receive({ type: "error", code: "forbidden", message: "no grant of this session allows subscribing to board.1.cursor.>" });
  socket.receive({ type: "subscribed", topic: "board.*" });
  for (const [what, result] of [["subscribe", subscribing], ["register", registering], ["publish", publishing]] as const) {
    const error = await result;
    assert.ok(error instanceof AccessDeniedError, `${what}: ${String(error)}`);
    assert.equal(error.code, "forbidden");
  }
  assert.match(String(((await subscribing) as Error).message), /subscribing to board\.1\.cursor\.>/);
  assert.equal(typeof (await allowed), "function", "the allowed subscription is acknowledged");
});

test("an error that names its topic or method answers exactly that request, whatever its message says", async () => {
  const { WebSocket, sockets } = fakeSockets();
  const client = new Client("ws://fake/ws", { WebSocket, clientId: "c", reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  clients.push(client);
  const socket = sockets[0] as FakeSocket;
  socket.accept("s1", { sub: "viewer" });
  const first = client.subscribe("a.*", () => {}).then(() => null, (e: unknown) => e);
  const second = client.subscribe("b.*", () => {}).then(() => null, (e: unknown) => e);
  const one = client.register("m.one", () => 1).then(() => null, (e: unknown) => e);
  const two = client.register("m.two", () => 2).then(() => null, (e: unknown) => e);
  // Messages that name nothing the client could match: only the fields say.
  socket.receive({ type: "error", code: "limit_reached", message: "too many", topic: "b.*" });
  socket.receive({ type: "error", code: "forbidden", message: "no", method: "m.two" });
  socket.receive({ type: "subscribed", topic: "a.*" });
  socket.receive({ type: "registered", method: "m.one" });
  assert.equal(await first, null);
  assert.equal(await one, null);
  const refusedTopic = await second;
  assert.ok(refusedTopic instanceof ServerError && refusedTopic.code === "limit_reached", String(refusedTopic));
  const refusedMethod = await two;
  assert.ok(refusedMethod instanceof AccessDeniedError, String(refusedMethod));
});

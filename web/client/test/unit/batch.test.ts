// Batched frames at the client, with a scripted socket playing the server:
// the client opts in on every socket it opens (`batch=1`), and a frame that
// holds an array of messages is handled as those messages sent one frame
// each, never past the end of the session that received it. A frame that is
// not a message or an array of messages is dropped whole.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, type ChangeEvent, type ServerMessage } from "../../src/index.js";
import { closedAfterEachTest, fakeSockets, liveDocumentOnFakeSocket, type FakeSocket, type LiveDocument } from "../support/fake-socket.js";
import { waitFor } from "../support/wait.js";

const DOC = "doc";
/** Every client a test makes, closed after it. */
const clients = closedAfterEachTest();
/** A client on a fake socket, with `DOC` open and live at version 0. */
const setUp = (): Promise<LiveDocument> => liveDocumentOnFakeSocket(clients, DOC);

/** Another session's commit at `version`, setting `/other`. */
function otherChange(version: number, value: number): ServerMessage {
  return { type: "change", doc: DOC, version, tx_id: `other-${version}`, patch: [{ op: "add", path: "/other", value }] };
}

type Settled = { value: unknown } | { error: unknown };

/**
 * Whether the promise has settled, and how, without waiting for anything
 * but the microtasks already queued: `setImmediate` runs after all of them,
 * so a promise settled by what was handled so far has told its reactions.
 */
async function settledNow(promise: Promise<Settled>): Promise<Settled | "pending"> {
  let settled: Settled | "pending" = "pending";
  void promise.then((value) => (settled = value));
  await new Promise<void>((resolve) => setImmediate(resolve));
  return settled;
}

/**
 * A pending transaction, then another session's change and the transaction's
 * `committed`, handed to `deliver`. What the document and the transaction
 * show afterwards.
 */
async function changeThenCommitted(deliver: (socket: FakeSocket, messages: ServerMessage[]) => void) {
  const { doc, sockets } = await setUp();
  const socket = sockets[0] as FakeSocket;
  const events: ChangeEvent[] = [];
  doc.on("change", (e) => events.push(e));
  const result: Promise<Settled> = doc
    .transact((tx) => {
      tx.increment("/hits", 1);
      return "done";
    })
    .then((value) => ({ value }), (error: unknown) => ({ error }));
  const [sent] = socket.commits();
  assert.ok(sent, "sent while live");
  deliver(socket, [otherChange(1, 5), { type: "committed", doc: DOC, tx_id: sent.tx.tx_id, version: 2 }]);
  // Read before any wait: everything in a frame is handled when it arrives.
  const state = { value: doc.value, version: doc.version, pending: doc.pendingCount, events: [...events] };
  return { ...state, settled: await settledNow(result), sockets: sockets.length };
}

test("an array frame is handled exactly as its messages sent one frame each", async () => {
  const oneByOne = await changeThenCommitted((socket, messages) => {
    for (const message of messages) socket.receive(message);
  });
  const batched = await changeThenCommitted((socket, messages) => socket.receiveBatch(messages));
  assert.deepEqual(batched, oneByOne);
  assert.deepEqual(batched.value, { hits: 1, other: 5 }, "the other session's change applied, ours confirmed on top");
  assert.equal(batched.version, 2);
  assert.equal(batched.pending, 0);
  assert.deepEqual(batched.settled, { value: "done" }, "the transaction resolved with its value");
  assert.deepEqual(
    batched.events.map((e) => [e.origin, e.version]),
    [
      ["local", 0],
      ["remote", 1],
    ],
  );
  assert.equal(batched.sockets, 1, "no reconnect");
});

test("every socket opens the given URL with batch=1; client.url stays as given", async () => {
  const { WebSocket, sockets } = fakeSockets();
  // A `batch` of the caller's is replaced; everything else is kept as written.
  const given = "ws://fake:7700/app/ws?token=a%20b+c&flag&batch=0";
  const client = new Client(given, { WebSocket, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  clients.push(client);
  assert.equal(client.url, given);
  const first = sockets[0] as FakeSocket;
  assert.equal(first.url, "ws://fake:7700/app/ws?token=a%20b+c&flag&batch=1");
  first.accept("s1");
  first.drop();
  const second = await waitFor(() => sockets[1], "the client's next socket");
  assert.equal(second.url, first.url, "a reconnect opts in too");

  const plain = fakeSockets();
  const http = new Client("http://fake/ws", { WebSocket: plain.WebSocket });
  clients.push(http);
  assert.equal(http.url, "ws://fake/ws");
  assert.equal((plain.sockets[0] as FakeSocket).url, "ws://fake/ws?batch=1");
});

test("the rest of a batch is not handled once a message in it has ended the session", async () => {
  const { client, doc, sockets } = await setUp();
  const first = sockets[0] as FakeSocket;
  const result: Promise<Settled> = doc
    .transact((tx) => tx.increment("/hits", 1))
    .then((value) => ({ value }), (error: unknown) => ({ error }));
  const [sent] = first.commits();
  assert.ok(sent);
  const off = doc.on("change", (e) => {
    if (e.origin === "remote") client.dropConnection();
  });
  first.receiveBatch([otherChange(1, 5), { type: "committed", doc: DOC, tx_id: sent.tx.tx_id, version: 2 }]);
  off();
  assert.equal(doc.version, 1, "the change before the drop applied, the committed after it not");
  assert.equal(doc.pendingCount, 1);
  assert.equal(await settledNow(result), "pending");
  // The next session resumes from what was applied; the resubmission settles it.
  const second = await waitFor(() => sockets[1], "the client's next socket");
  second.accept("s2");
  second.receive({ type: "opened", doc: DOC, version: 1 });
  assert.deepEqual(second.commits().map((m) => m.tx.tx_id), [sent.tx.tx_id], "resubmitted under its id");
  second.receive({ type: "committed", doc: DOC, tx_id: sent.tx.tx_id, version: 2 });
  assert.deepEqual(await result, { value: undefined });
  assert.deepEqual(doc.value, { other: 5, hits: 1 });
  assert.equal(doc.version, 2);
});

test("a frame that is not a message or an array of messages is dropped whole, and the session goes on", async () => {
  const { doc, sockets } = await setUp();
  const socket = sockets[0] as FakeSocket;
  const frames = [
    JSON.stringify([otherChange(1, 5), null]),
    JSON.stringify([otherChange(1, 5), 7]),
    JSON.stringify([[otherChange(1, 5)]]),
    JSON.stringify([otherChange(1, 5), [otherChange(2, 6)]]),
    "null",
    "7",
    '"change"',
    "[1, 2",
  ];
  for (const frame of frames) {
    assert.doesNotThrow(() => socket.receiveText(frame), frame);
    assert.equal(doc.version, 0, `nothing of ${frame} applied`);
  }
  socket.receiveBatch([otherChange(1, 5), otherChange(2, 6)]);
  assert.equal(doc.version, 2);
  assert.deepEqual(doc.value, { other: 6 });
  assert.ok(doc.live);
});

test("a message whose handling throws does not cost the rest of its batch theirs; the error still surfaces", async () => {
  const { client, sockets } = await setUp();
  const socket = sockets[0] as FakeSocket;
  // An application that wants its listeners' errors thrown, not logged.
  client.onListenerError = (error) => {
    throw error;
  };
  const got: unknown[] = [];
  const subscribed = client.subscribe("t", (data) => {
    got.push(data);
    if (data === 1) throw new Error("listener failed on 1");
  });
  socket.receive({ type: "subscribed", topic: "t" });
  await subscribed;
  assert.throws(
    () =>
      socket.receiveBatch([
        { type: "message", topic: "t", data: 1 },
        { type: "message", topic: "t", data: 2 },
      ]),
    /listener failed on 1/,
  );
  assert.deepEqual(got, [1, 2]);
});

// `outcome_unknown` at the client, with a scripted socket playing the server:
// the answer depends on whether the transaction was sent before. A first
// submission cannot be a forgotten commit of its own and is re-run (as for
// `stale`); a resubmission may have committed with its acknowledgement lost
// and fails with `TransactionOutcomeUnknown`, never re-run.

import assert from "node:assert/strict";
import { test } from "node:test";

import { TransactionOutcomeUnknown, TransactionRejected, type ChangeEvent } from "../../src/index.js";
import { closedAfterEachTest, liveDocumentOnFakeSocket, type FakeSocket, type LiveDocument } from "../support/fake-socket.js";
import { waitFor } from "../support/wait.js";

const DOC = "doc";
/** Every client a test makes, closed after it. */
const clients = closedAfterEachTest();
/** A client on a fake socket, with `DOC` open and live at version 0. */
const setUp = (): Promise<LiveDocument> => liveDocumentOnFakeSocket(clients, DOC);

/** Drops the current socket and brings up the next one (the client reconnects on its own). */
async function reconnect(sockets: FakeSocket[], session: string): Promise<FakeSocket> {
  const count = sockets.length;
  (sockets[count - 1] as FakeSocket).drop();
  const next = await waitFor(() => sockets[count], "the client's next socket");
  next.accept(session);
  return next;
}

test("a transaction sent, then resubmitted after a reconnect, fails with outcome unknown and is not re-run", async () => {
  const { client, doc, sockets } = await setUp();
  let runs = 0;
  const result = doc
    .transact((tx) => {
      runs++;
      tx.increment("/hits", 1);
    })
    .then(() => null, (e: unknown) => e);
  const [sent] = (sockets[0] as FakeSocket).commits();
  assert.ok(sent, "sent while live");
  const second = await reconnect(sockets, "s2");
  // The server had committed it (its acknowledgement lost) and forgot its id.
  second.receive({ type: "snapshot", doc: DOC, version: 6, value: { hits: 1, other: 5 } });
  second.receive({ type: "opened", doc: DOC, version: 6 });
  assert.deepEqual(second.commits().map((m) => m.tx.tx_id), [sent.tx.tx_id], "resubmitted under its id");
  const changes: ChangeEvent[] = [];
  doc.on("change", (e) => {
    changes.push(e);
    // A re-run would wait for an answer this script never sends: end it.
    if (e.origin === "local") client.close();
  });
  second.receive({
    type: "rejected",
    doc: DOC,
    tx_id: sent.tx.tx_id,
    rejection: { reason: "outcome_unknown", base: 0, floor: 4 },
  });
  const error = await result;
  assert.ok(error instanceof TransactionOutcomeUnknown, String(error));
  assert.ok(!(error instanceof TransactionRejected));
  assert.equal(error.name, "TransactionOutcomeUnknown");
  assert.equal(error.txId, sent.tx.tx_id);
  assert.deepEqual(error.rejection, { reason: "outcome_unknown", base: 0, floor: 4 });
  assert.equal(runs, 1, "not re-run");
  assert.equal(second.commits().length, 1, "nothing sent again");
  assert.deepEqual(doc.value, { hits: 1, other: 5 }, "the pending write left the view: the server's state shows");
  assert.equal(doc.pendingCount, 0);
  assert.deepEqual(changes.map((e) => e.origin), ["rollback"]);
});

test("a transaction made offline and first sent by the resubmission is re-run on outcome_unknown", async () => {
  const { doc, sockets } = await setUp();
  (sockets[0] as FakeSocket).drop();
  assert.ok(!doc.live);
  let runs = 0;
  const result = doc.transact((tx) => {
    runs++;
    tx.increment("/hits", 1);
  });
  assert.equal((sockets[0] as FakeSocket).commits().length, 0, "not sent while offline");
  const next = await waitFor(() => sockets[1], "the client's next socket");
  next.accept("s2");
  next.receive({ type: "opened", doc: DOC, version: 0 });
  const [first] = next.commits();
  assert.ok(first, "first sent by the resubmission");
  // The changes up to the server's version come before the rejection.
  next.receive({ type: "change", doc: DOC, version: 1, tx_id: "other-1", patch: [{ op: "incr", path: "/other", value: 1 }] });
  next.receive({ type: "rejected", doc: DOC, tx_id: first.tx.tx_id, rejection: { reason: "outcome_unknown", base: 0, floor: 1 } });
  const rerun = await waitFor(() => next.commits()[1], "the re-run's commit");
  assert.notEqual(rerun.tx.tx_id, first.tx.tx_id, "a re-run is a new transaction");
  assert.equal(rerun.tx.base, 1, "re-run on the current replica");
  next.receive({ type: "committed", doc: DOC, tx_id: rerun.tx.tx_id, version: 2 });
  await result;
  assert.equal(runs, 2);
  assert.deepEqual(doc.value, { other: 1, hits: 1 });
  assert.equal(doc.version, 2);
});

test("a commit dropped by the rate limit is re-run under a new id, as a first submission", async () => {
  const { doc, sockets } = await setUp();
  const socket = sockets[0] as FakeSocket;
  let runs = 0;
  const result = doc.transact((tx) => {
    runs++;
    tx.increment("/hits", 1);
  });
  const [first] = socket.commits();
  assert.ok(first);
  // Dropped unread: it never reached the store. The machine withdraws it and
  // runs the function again (after the document's contention pause).
  socket.receive({ type: "error", code: "rate_limited", message: "slow down", doc: DOC, tx_id: first.tx.tx_id });
  assert.equal(doc.pendingCount, 0, "withdrawn");
  const second = await waitFor(() => socket.commits()[1], "the re-run after the pause");
  assert.notEqual(second.tx.tx_id, first.tx.tx_id);
  // Sent once: an outcome_unknown for it means it never committed, so it re-runs.
  socket.receive({ type: "rejected", doc: DOC, tx_id: second.tx.tx_id, rejection: { reason: "outcome_unknown", base: 0, floor: 1 } });
  const third = await waitFor(() => socket.commits()[2], "the re-run's commit");
  socket.receive({ type: "committed", doc: DOC, tx_id: third.tx.tx_id, version: 1 });
  await result;
  assert.equal(runs, 3);
  assert.deepEqual(doc.value, { hits: 1 });
});

// The replica: a port of engine/src/replica.rs's tests plus the cases the
// TypeScript client leans on (rebase, invisible pending patches, nested runs,
// snapshots that already hold a pending commit).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_LIMITS,
  encodedSizeEstimate,
  Replica,
  type Json,
  type JsonObject,
  type Limits,
  type RunOutcome,
  type Transaction,
  type Tx,
} from "../../src/index.js";

function replica(value: Json): Replica {
  return new Replica("d", value, 0);
}

function submit(r: Replica, id: string, fn: (tx: Tx) => unknown): Transaction {
  const outcome = r.run(id, fn);
  assert.equal(outcome.kind, "submit", `expected a submission, got ${outcome.kind}`);
  return (outcome as Extract<RunOutcome<unknown>, { kind: "submit" }>).tx;
}

test("reads are recorded unless the transaction wrote them first", () => {
  const r = replica({ a: 1, b: { c: 2 } });
  const tx = submit(r, "t1", (tx) => {
    const a = tx.getNumber("/a");
    tx.set("/b", { c: a });
    assert.equal(tx.getNumber("/b/c"), 1, "reads see own writes");
    tx.increment("/n", 5);
    assert.equal(tx.getNumber("/n"), 5);
  });
  assert.deepEqual(tx.reads, ["/a", "/n"], "/b/c was covered by the write to /b; /n was only incremented");
  assert.equal(tx.base, 0);
  assert.deepEqual(r.view, { a: 1, b: { c: 1 }, n: 5 }, "optimistic view");
  assert.deepEqual(r.confirmed(), { a: 1, b: { c: 2 } });
});

test("writes inside an array cover nothing; set on an array element is a replace", () => {
  const r = replica({ list: [1, 2] });
  const tx = submit(r, "t", (tx) => {
    tx.set("/list/0", 9);
    tx.get("/list/0");
    tx.push("/list", 3);
    tx.get("/list/2");
    tx.insert("/list/0", 0);
    tx.get("/list/1");
  });
  assert.deepEqual(tx.writes, [
    { op: "replace", path: "/list/0", value: 9 },
    { op: "add", path: "/list/-", value: 3 },
    { op: "add", path: "/list/0", value: 0 },
  ]);
  assert.deepEqual(tx.reads, ["/list/2", "/list/1"], "a replace covers its element; an add inside an array covers nothing");
});

test("read-only runs return locally and retry reports its reads", () => {
  const r = replica({ a: 1 });
  const read = r.run("t", (tx) => tx.getNumber("/a"));
  assert.deepEqual(read, { kind: "read_only", value: 1, afterCommit: [] });
  const retried = r.run("t", (tx) => {
    tx.set("/x", 1);
    if ((tx.getNumber("/a") ?? 0) < 5) tx.retry();
  });
  assert.equal(retried.kind, "retry");
  assert.deepEqual((retried as { reads: unknown[] }).reads.map(String), ["/a"]);
  assert.deepEqual(r.view, { a: 1 }, "a retried run leaves no trace");
});

test("orElse undoes the first branch", () => {
  const r = replica({ stock: 0, backorders: 0 });
  const tx = submit(r, "t", (tx) =>
    tx.orElse(
      (tx) => {
        tx.set("/touched", true);
        const n = tx.getNumber("/stock") ?? 0;
        if (n > 0) tx.set("/stock", n - 1);
        else tx.retry();
      },
      (tx) => tx.increment("/backorders", 1),
    ),
  );
  assert.deepEqual(r.view, { stock: 0, backorders: 1 });
  assert.deepEqual(tx.reads, ["/stock"]);
  assert.equal(tx.writes.length, 1);
});

test("a nested run merges on success and is undone on failure, keeping its reads", () => {
  const r = replica({ a: 1, b: 2 });
  const effects: string[] = [];
  const outcome = r.run("t", (tx) => {
    tx.nested((tx) => {
      tx.set("/x", tx.getNumber("/a"));
      tx.afterCommit(() => effects.push("kept"));
    });
    try {
      tx.nested((tx) => {
        tx.set("/y", tx.getNumber("/b"));
        tx.afterCommit(() => effects.push("dropped"));
        throw new Error("no");
      });
    } catch {
      // The parent carries on.
    }
    return "done";
  });
  assert.equal(outcome.kind, "submit");
  if (outcome.kind !== "submit") return;
  assert.equal(outcome.value, "done");
  assert.deepEqual(outcome.tx.reads, ["/a", "/b"]);
  assert.deepEqual(outcome.tx.writes, [{ op: "add", path: "/x", value: 1 }]);
  assert.deepEqual(r.view, { a: 1, b: 2, x: 1 });
  for (const effect of outcome.afterCommit) effect();
  assert.deepEqual(effects, ["kept"]);
});

test("a failing write or a throwing function leaves no trace", () => {
  const r = replica({ a: 1 });
  const patch = r.run("t", (tx) => {
    tx.set("/b", 2);
    tx.remove("/missing");
  });
  assert.equal(patch.kind, "patch");
  if (patch.kind === "patch") assert.deepEqual(patch.error.toJSON(), { op_index: 1, error: { reason: "path_not_found", path: "/missing" } });
  const failed = r.run("t", (tx) => {
    tx.set("/b", 2);
    throw new RangeError("mine");
  });
  assert.equal(failed.kind, "failed");
  assert.ok(failed.kind === "failed" && failed.error instanceof RangeError);
  assert.deepEqual(r.view, { a: 1 });
  assert.ok(!r.hasPending);
});

test("a run that reads pending writes is blocked", () => {
  const r = replica({ a: 1, b: 1 });
  submit(r, "t1", (tx) => tx.set("/a", 2));
  const blocked = r.run("t2", (tx) => tx.set("/c", tx.get("/a")));
  assert.deepEqual(blocked, { kind: "blocked", pendingTxIds: ["t1"] });
  assert.deepEqual(r.view, { a: 2, b: 1 }, "the blocked run left no trace");
  // Reading something independent is fine while t1 is pending.
  submit(r, "t3", (tx) => tx.set("/b", (tx.getNumber("/b") ?? 0) + 1));
  assert.equal(r.pending().length, 2);
  // A read-only run may read pending writes: that is the optimistic view.
  assert.equal(r.run("t4", (tx) => tx.get("/a")).kind, "read_only");
});

test("remote changes rebase pending writes and own commits confirm them", () => {
  const mine = replica({ list: [] });
  const theirs = replica({ list: [] });
  const own = submit(mine, "mine-1", (tx) => tx.push("/list", "m"));
  const other = submit(theirs, "theirs-1", (tx) => tx.push("/list", "t"));
  // The server commits theirs at 1, then mine (a blind append) at 2.
  theirs.onCommitted(other.tx_id, 1);
  assert.deepEqual(mine.view, { list: ["m"] });
  mine.applyChange({ doc: "d", version: 1, tx_id: other.tx_id, patch: other.writes });
  assert.deepEqual(mine.view, { list: ["t", "m"] }, "rebased: the pending append stays on top");
  assert.deepEqual(mine.confirmed(), { list: ["t"] });
  const effect = mine.onCommitted(own.tx_id, 2);
  assert.equal(effect.committed, own.tx_id);
  assert.ok(!mine.hasPending);
  assert.equal(mine.version, 2);
  theirs.applyChange({ doc: "d", version: 2, tx_id: own.tx_id, patch: own.writes });
  assert.deepEqual(theirs.view, mine.view);
});

test("own commit arriving as a change pops the oldest pending without touching the view", () => {
  const r = replica({ n: 0 });
  const tx = submit(r, "t1", (tx) => tx.increment("/n", 1));
  const effect = r.applyChange({ doc: "d", version: 1, tx_id: "t1", patch: tx.writes });
  assert.deepEqual(effect.writes.map(String), ["/n"]);
  assert.equal(effect.committed, "t1");
  assert.equal(effect.viewUnchanged, true);
  assert.deepEqual(r.view, { n: 1 });
  assert.equal(r.version, 1);
});

test("a pending patch that no longer applies stays pending but invisible", () => {
  const r = replica({ shape: { x: 1 } });
  submit(r, "t1", (tx) => tx.set("/shape/x", 5));
  r.applyChange({ doc: "d", version: 1, tx_id: "other", patch: [{ op: "remove", path: "/shape" }] });
  assert.deepEqual(r.view, {});
  assert.ok(r.isPending("t1") && !r.isVisible("t1"));
  r.onRejected("t1");
  assert.deepEqual(r.view, {});
});

test("rejection drops the pending write and a gap is an error", () => {
  const r = replica({ x: 1 });
  submit(r, "t1", (tx) => tx.set("/x", 9));
  assert.ok(r.onRejected("t1", { reason: "stale", base: 0, horizon: 1 }));
  assert.deepEqual(r.view, { x: 1 });
  assert.equal(r.onRejected("t1"), undefined, "a second answer is ignored");
  assert.throws(() => r.applyChange({ doc: "d", version: 2, tx_id: "z", patch: [] }), /does not follow/);
  assert.throws(() => r.applyChange({ doc: "other", version: 1, tx_id: "z", patch: [] }), /delivered to the replica/);
  assert.deepEqual(r.applyChange({ doc: "d", version: 0, tx_id: "z", patch: [] }), { writes: [] }, "duplicates are ignored");
});

test("a change that does not apply is divergence", () => {
  const r = replica({});
  assert.throws(() => r.applyChange({ doc: "d", version: 1, tx_id: "z", patch: [{ op: "remove", path: "/nothing" }] }), /does not apply/);
  assert.equal(r.version, 0);
});

test("our own change arriving again, below the version held, settles the pending transaction it commits (as replica.rs)", () => {
  const r = replica({ n: 0 });
  submit(r, "t1", (tx) => tx.increment("/n", 1));
  // A snapshot taken after t1 committed at 1 came first (a resume), then the
  // change stream replays t1's change.
  r.reset({ n: 1 }, 1);
  assert.deepEqual(r.view, { n: 2 }, "until settled, the pending incr shows on top");
  const effect = r.applyChange({ doc: "d", version: 1, tx_id: "t1", patch: [{ op: "incr", path: "/n", value: 1 }] });
  assert.equal(effect.committed, "t1");
  assert.ok(!r.hasPending, "settled, not left pending");
  assert.deepEqual(r.view, { n: 1 }, "applied once");
  assert.equal(r.version, 1);
});

test("reset keeps pending writes on top of the snapshot", () => {
  const r = replica({ a: 1 });
  submit(r, "t1", (tx) => tx.set("/b", 2));
  r.reset({ a: 5 }, 7);
  assert.deepEqual(r.view, { a: 5, b: 2 });
  assert.equal(r.version, 7);
});

test("a commit the snapshot already holds is dropped, not applied twice", () => {
  const r = replica({ n: 0 });
  submit(r, "t1", (tx) => tx.increment("/n", 1));
  // The server committed t1 at 1, then the session resynced with a snapshot at 3.
  r.reset({ n: 11 }, 3);
  assert.deepEqual(r.view, { n: 12 }, "until confirmed, the pending incr shows on top");
  const effect = r.onCommitted("t1", 1);
  assert.equal(effect.committed, "t1");
  assert.ok(!r.hasPending);
  assert.deepEqual(r.view, { n: 11 });
  assert.equal(r.version, 3);
});

test("a commit of only test ops confirms without a new version", () => {
  const r = replica({ a: 1 });
  submit(r, "t1", (tx) => tx.write({ op: "test", path: "/a", value: 1 }));
  assert.deepEqual(r.onCommitted("t1", 0), { writes: [] });
  assert.ok(!r.hasPending);
  assert.throws(() => r.onCommitted("nobody", 5), /unknown transaction/);
});

test("prototype-named keys stay data through transactions", () => {
  const r = replica(JSON.parse('{"__proto__": {"x": 1}}'));
  const tx = submit(r, "t", (tx) => {
    assert.deepEqual(tx.get("/__proto__"), { x: 1 });
    assert.equal(tx.get("/constructor"), undefined);
    tx.set("/constructor", { polluted: true });
    tx.set(["__proto__", "polluted"], true);
  });
  assert.deepEqual(tx.reads, ["/__proto__", "/constructor"]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  assert.equal(JSON.stringify(r.view), '{"__proto__":{"x":1,"polluted":true},"constructor":{"polluted":true}}');
});

test("values given to set are copied and checked for JSON", () => {
  const r = replica({});
  const shape = { x: 1 };
  submit(r, "t", (tx) => tx.set("/s", shape));
  shape.x = 99;
  assert.deepEqual(r.view, { s: { x: 1 } });
  const bad = r.run("t2", (tx) => tx.set("/n", Number.NaN));
  assert.equal(bad.kind, "failed");
  const cls = r.run("t3", (tx) => tx.set("/d", new Date()));
  assert.equal(cls.kind, "failed");
  const fromGet = r.run("t4", (tx) => {
    const s = tx.get<{ x: number }>("/s");
    if (s) s.x = 5; // a copy: the view is untouched
    return s;
  });
  assert.equal(fromGet.kind, "read_only");
  assert.deepEqual(r.view, { s: { x: 1 } });
});

// The size estimate behind the document-size limit is measured lazily: a
// snapshot is walked only when a local write first needs the limit.

function board(shapes: number): JsonObject {
  const out: JsonObject = {};
  for (let i = 0; i < shapes; i++) out[`s${i}`] = { x: i, y: i };
  return { shapes: out };
}

/** A server change at `version` from another client. */
function remote(r: Replica, version: number, patch: Transaction["writes"]): void {
  r.applyChange({ doc: "d", version, tx_id: `other-${version}`, patch });
}

/**
 * The replica's size estimate as a refused write reports it: a string too
 * large for any document is refused with the size it would have made, which
 * is the estimate plus the string and its key.
 */
function sizeEstimateOf(r: Replica, limits: Limits): number {
  const probe = "p".repeat(limits.docSizeBytesMax);
  const outcome = r.run("probe", (tx) => tx.set("/probe", probe));
  assert.equal(outcome.kind, "patch");
  const error = (outcome as Extract<RunOutcome<unknown>, { kind: "patch" }>).error.error;
  assert.equal(error.reason, "size_exceeded");
  const probeBytes = probe.length + 2 + "probe".length + 4;
  return (error as { size_bytes: number }).size_bytes - probeBytes;
}

test("a snapshot is not measured until a local write needs the size limit", () => {
  // Measuring lists the members of every object; a Proxy counts the listings.
  let listed = 0;
  const shapes = new Proxy(board(100).shapes as JsonObject, {
    ownKeys(target) {
      listed++;
      return Reflect.ownKeys(target);
    },
  });
  const r = new Replica("d", { shapes }, 1);
  remote(r, 2, [
    { op: "add", path: "/shapes/s0/x", value: 5 },
    { op: "add", path: "/shapes/s100", value: { x: 0, y: 0 } },
  ]);
  assert.equal(listed, 0, "neither the snapshot nor a server change measured the document");
  submit(r, "t1", (tx) => tx.set("/shapes/s1/x", 7));
  assert.ok(listed > 0, "the first local write measured it");
});

test("a local write over the size limit is refused after a snapshot and server changes, with no local write before", () => {
  const snapshot = board(10);
  // Room for the server's new shape (35 bytes), not for that and a label (15 more).
  const limits = { ...DEFAULT_LIMITS, docSizeBytesMax: encodedSizeEstimate(snapshot, Infinity) + 40 };
  const r = new Replica("d", snapshot, 1, limits);
  remote(r, 2, [{ op: "add", path: "/shapes/s10", value: { x: 1, y: 1 } }]);
  const before = structuredClone(r.view);
  const outcome = r.run("t1", (tx) => tx.set("/shapes/s0/label", "abcd"));
  assert.equal(outcome.kind, "patch", "the label would take the document over the limit");
  assert.deepEqual((outcome as Extract<RunOutcome<unknown>, { kind: "patch" }>).error.error, {
    reason: "size_exceeded",
    size_bytes: encodedSizeEstimate(before, Infinity) + 15,
    max_bytes: limits.docSizeBytesMax,
  });
  assert.deepEqual(r.view, before);
  assert.ok(!r.hasPending);
});

test("the size estimate equals a fresh measurement after server changes, local writes and resyncs", () => {
  const limits = { ...DEFAULT_LIMITS, docSizeBytesMax: 100_000 };
  const fresh = (r: Replica) => encodedSizeEstimate(r.view, Infinity);
  const r = new Replica("d", board(20), 1, limits);
  remote(r, 2, [
    { op: "remove", path: "/shapes/s3" },
    { op: "add", path: "/shapes/s20", value: { x: 1, y: 1, text: "héllo" } },
  ]);
  submit(r, "t1", (tx) => tx.set("/shapes/s0/label", "a longer label"));
  remote(r, 3, [{ op: "replace", path: "/shapes/s1", value: { x: 2 } }]);
  assert.equal(sizeEstimateOf(r, limits), fresh(r), "measured at the local write, then kept up to date");

  // A resync while t1 is pending: the snapshot is measured to re-apply t1.
  r.reset(board(5), 10);
  assert.equal(sizeEstimateOf(r, limits), fresh(r), "with a pending write re-applied on the snapshot");
  r.onCommitted("t1", 11);
  remote(r, 12, [{ op: "add", path: "/shapes/s9", value: { x: 0, y: 0 } }]);
  assert.equal(sizeEstimateOf(r, limits), fresh(r), "after the pending write was confirmed");

  // A resync with nothing pending: unmeasured until the next local write.
  r.reset(board(30), 20);
  remote(r, 21, [{ op: "remove", path: "/shapes/s0" }]);
  submit(r, "t2", (tx) => tx.remove("/shapes/s1"));
  remote(r, 22, [{ op: "add", path: "/shapes/s1", value: [1, 2, 3] }]);
  assert.equal(sizeEstimateOf(r, limits), fresh(r), "measured again after the resync");
});

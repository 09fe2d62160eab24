// The shared conflict vectors (engine/tests/vectors/conflicts.json), read
// from the engine's tree at test time so the Rust and TypeScript suites run
// one file. Each case is decided by a brute-force validator (a read conflicts
// when it overlaps any location `earlier` wrote, under the array rule that
// this client's patch code reports) and by this client's patch application;
// the same case is also played through a Replica, which must end on `after`.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  applyPatch,
  DEFAULT_LIMITS,
  encodedSizeEstimate,
  parsePatch,
  PatchError,
  Pointer,
  Replica,
  type Json,
  type Patch,
  type Rejection,
} from "../../src/index.js";
import { repoPath } from "../support/paths.js";

interface Case {
  name: string;
  doc: Json;
  earlier: Patch;
  tx: { reads: string[]; writes: Patch };
  expect: "commit" | "conflict" | "patch";
  conflicts?: string[];
  patch_reason?: string;
  op_index?: number;
  after: Json;
}

const cases = (JSON.parse(readFileSync(repoPath("engine", "tests", "vectors", "conflicts.json"), "utf8")) as { cases: Case[] }).cases;

/** What a server would decide: the outcome, and the document once both are through. */
function decide(c: Case): { rejection?: Rejection; after: Json; earlierWrites: Pointer[] } {
  const box = { value: structuredClone(c.doc) };
  const earlier = applyPatch(box, encodedSizeEstimate(box.value, Infinity), parsePatch(c.earlier), DEFAULT_LIMITS);
  const reads = c.tx.reads.map((r) => Pointer.parse(r));
  const conflicts = reads.filter((r) => earlier.writes.some((w) => w.overlaps(r)));
  if (conflicts.length > 0) {
    return {
      rejection: {
        reason: "conflict",
        conflicts: conflicts.map((p) => ({ pointer: String(p), version: 1, tx_id: "earlier" })),
        conflicts_total: conflicts.length,
      },
      after: box.value,
      earlierWrites: earlier.writes,
    };
  }
  try {
    applyPatch(box, encodedSizeEstimate(box.value, Infinity), parsePatch(c.tx.writes), DEFAULT_LIMITS);
    return { after: box.value, earlierWrites: earlier.writes };
  } catch (error) {
    assert.ok(error instanceof PatchError, `${c.name}: ${String(error)}`);
    return { rejection: { reason: "patch", op_index: error.opIndex, error: error.error }, after: box.value, earlierWrites: earlier.writes };
  }
}

test("the shared conflict vectors hold", () => {
  assert.ok(cases.length >= 20, `the vector file lost cases: ${cases.length}`);
  for (const c of cases) {
    const { rejection, after } = decide(c);
    const got = rejection?.reason ?? "commit";
    assert.equal(got, c.expect, `${c.name}: outcome`);
    if (rejection?.reason === "conflict") {
      assert.deepEqual(rejection.conflicts.map((x) => x.pointer), c.conflicts, `${c.name}: conflicting pointers`);
    }
    if (rejection?.reason === "patch") {
      assert.equal(rejection.error.reason, c.patch_reason, `${c.name}: patch failure reason`);
      assert.equal(rejection.op_index, c.op_index, `${c.name}: failing op`);
    }
    assert.deepEqual(after, c.after, `${c.name}: document after`);
  }
});

test("the vectors played through a replica end on the same document", () => {
  for (const c of cases) {
    const { rejection, after } = decide(c);
    const replica = new Replica("vectors", structuredClone(c.doc), 0);
    // The transaction as a client would run it: its reads, then its writes.
    const outcome = replica.run("tx", (tx) => {
      for (const read of c.tx.reads) tx.get(read);
      for (const op of c.tx.writes) tx.write(op);
    });
    if (outcome.kind === "patch") {
      // The writes already fail on the state at the base: the client never sends it.
      assert.equal(c.expect, "patch", `${c.name}: a local patch failure must be a patch rejection`);
      assert.equal(outcome.error.error.reason, c.patch_reason, c.name);
      replica.applyChange({ doc: "vectors", version: 1, tx_id: "earlier", patch: c.earlier });
      assert.deepEqual(replica.view, after, `${c.name}: view after`);
      continue;
    }
    assert.equal(outcome.kind, "submit", c.name);
    if (outcome.kind !== "submit") continue;
    assert.deepEqual(outcome.tx.reads, c.tx.reads, `${c.name}: recorded reads`);
    assert.deepEqual(outcome.tx.writes, c.tx.writes, `${c.name}: recorded writes`);
    assert.equal(outcome.tx.base, 0);
    // The earlier commit arrives while the transaction is pending: rebase.
    replica.applyChange({ doc: "vectors", version: 1, tx_id: "earlier", patch: c.earlier });
    if (rejection) {
      assert.ok(replica.onRejected("tx", rejection), c.name);
    } else {
      const effect = replica.onCommitted("tx", 2);
      assert.equal(effect.committed, "tx", c.name);
      assert.equal(replica.version, 2);
    }
    assert.ok(!replica.hasPending, c.name);
    assert.deepEqual(replica.view, after, `${c.name}: view after`);
    assert.deepEqual(replica.confirmed(), after, `${c.name}: confirmed after`);
  }
});

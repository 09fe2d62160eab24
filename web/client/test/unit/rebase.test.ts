// Remote changes against pending transactions: the replica may apply a change
// over its pending patches instead of undoing and re-applying them, and must
// then end with exactly the view a rebase gives. Checked against a model that
// keeps the confirmed document and the pending patches and recomputes the
// view from scratch, over seeded random histories.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyPatch,
  cloneJson,
  DEFAULT_LIMITS,
  encodedSizeEstimate,
  PatchError,
  Pointer,
  Replica,
  type ChangeEffect,
  type Json,
  type PatchOp,
  type Transaction,
} from "../../src/index.js";

/** mulberry32: a small seeded generator, so a failing seed replays. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rng = () => number;
const pick = <T>(rng: Rng, items: readonly T[]): T => items[Math.floor(rng() * items.length)] as T;

function randomValue(rng: Rng): Json {
  switch (Math.floor(rng() * 4)) {
    case 0:
      return { x: Math.floor(rng() * 10) };
    case 1:
      return [Math.floor(rng() * 10)];
    default:
      return Math.floor(rng() * 10);
  }
}

/** Every location in `doc` (the root included), as pointer strings. */
function locations(doc: Json, at = ""): string[] {
  const out = [at];
  if (Array.isArray(doc)) doc.forEach((v, i) => out.push(...locations(v, `${at}/${i}`)));
  else if (doc !== null && typeof doc === "object") {
    for (const [k, v] of Object.entries(doc)) out.push(...locations(v, `${at}/${k}`));
  }
  return out;
}

/** Containers in `doc`, for new members and elements. */
function containers(doc: Json, at = ""): { path: string; value: Json }[] {
  const out: { path: string; value: Json }[] = [];
  if (doc !== null && typeof doc === "object") {
    out.push({ path: at, value: doc });
    const entries = Array.isArray(doc) ? doc.map((v, i) => [String(i), v] as const) : Object.entries(doc);
    for (const [k, v] of entries) out.push(...containers(v, `${at}/${k}`));
  }
  return out;
}

/** A random op, usually applicable to `doc`: existing locations and new children of its containers. */
function randomOp(rng: Rng, doc: Json): PatchOp {
  const all = locations(doc);
  // The root rarely: an op on it overlaps everything.
  const existing = all.length > 1 && rng() < 0.95 ? all.slice(1) : all;
  const fresh = containers(doc).map(({ path, value }) => {
    if (Array.isArray(value)) {
      const at = Math.floor(rng() * (value.length + 1));
      return rng() < 0.3 ? `${path}/-` : `${path}/${at}`;
    }
    return `${path}/${pick(rng, ["a", "b", "c", "d"])}`;
  });
  const target = () => (fresh.length > 0 && rng() < 0.5 ? pick(rng, fresh) : pick(rng, existing));
  const path = target();
  switch (pick(rng, ["add", "add", "replace", "replace", "remove", "incr", "move", "copy", "test"] as const)) {
    case "add":
      return { op: "add", path, value: randomValue(rng) };
    case "replace":
      return { op: "replace", path, value: randomValue(rng) };
    case "remove":
      return { op: "remove", path };
    case "incr":
      return { op: "incr", path, value: 1 + Math.floor(rng() * 3) };
    case "move":
      return { op: "move", from: pick(rng, existing), path };
    case "copy":
      return { op: "copy", from: pick(rng, existing), path };
    case "test":
      return { op: "test", path, value: randomValue(rng) };
  }
}

/** A patch of 1–3 ops that applies to `doc`, as a committed change must; `undefined` if none was found. */
function committablePatch(rng: Rng, doc: Json): PatchOp[] | undefined {
  const box = { value: cloneJson(doc) };
  const patch: PatchOp[] = [];
  const length = 1 + Math.floor(rng() * 3);
  for (let attempt = 0; attempt < 12 && patch.length < length; attempt++) {
    const op = randomOp(rng, box.value);
    try {
      applyPatch(box, 0, [op], { ...DEFAULT_LIMITS, docSizeBytesMax: Infinity });
      patch.push(op);
    } catch (error) {
      if (!(error instanceof PatchError)) throw error;
    }
  }
  return patch.length > 0 ? patch : undefined;
}

/** `patch` applied to a copy of `doc`, or `undefined` when it does not apply. */
function applied(doc: Json, patch: readonly PatchOp[]): Json | undefined {
  const box = { value: cloneJson(doc) };
  try {
    applyPatch(box, 0, patch, { ...DEFAULT_LIMITS, docSizeBytesMax: Infinity });
  } catch (error) {
    if (error instanceof PatchError) return undefined;
    throw error;
  }
  return box.value;
}

/** The model: the confirmed document and the pending patches; the view is recomputed whole. */
class Model {
  pending: Transaction[] = [];
  constructor(public confirmed: Json) {}

  view(): { value: Json; visible: Map<string, boolean> } {
    let value = cloneJson(this.confirmed);
    const visible = new Map<string, boolean>();
    for (const tx of this.pending) {
      const next = applied(value, tx.writes);
      visible.set(tx.tx_id, next !== undefined);
      if (next !== undefined) value = next;
    }
    return { value, visible };
  }
}

/** Locations where `a` and `b` differ, as deep as the difference goes (arrays element by element). */
function differences(a: Json | undefined, b: Json | undefined, at: Pointer = Pointer.root): Pointer[] {
  const bothObjects =
    a !== null && b !== null && typeof a === "object" && typeof b === "object" && Array.isArray(a) === Array.isArray(b);
  if (!bothObjects) return JSON.stringify(a) === JSON.stringify(b) ? [] : [at];
  const keys = Array.isArray(a)
    ? Array.from({ length: Math.max(a.length, (b as Json[]).length) }, (_, i) => String(i))
    : [...new Set([...Object.keys(a), ...Object.keys(b as object)])];
  const member = (v: Json, k: string): Json | undefined =>
    Array.isArray(v) ? v[Number(k)] : Object.hasOwn(v as object, k) ? (v as Record<string, Json>)[k] : undefined;
  return keys.flatMap((k) => differences(member(a, k), member(b as Json, k), at.child(k)));
}

/** What the client reports as changed for `effect` (DocumentHandle's `#viewWrites`). */
function reported(effect: ChangeEffect): Pointer[] {
  return effect.rebased ? [...effect.writes, ...effect.rebased] : effect.writes;
}

function checkStep(trace: string[], r: Replica, model: Model, before: Json, effect?: ChangeEffect): void {
  const where = `after\n  ${trace.join("\n  ")}\n`;
  const { value, visible } = model.view();
  assert.deepEqual(r.view, value, `${where}: the view is the one a rebase gives`);
  assert.deepEqual(r.confirmed(), model.confirmed, `${where}: confirmed state`);
  for (const [txId, shown] of visible) assert.equal(r.isVisible(txId), shown, `${where}: visibility of ${txId}`);
  if (effect) {
    const writes = reported(effect);
    for (const changed of differences(before, r.view)) {
      assert.ok(
        writes.some((w) => w.isPrefixOf(changed)),
        `${where}: the view changed at ${changed.toString()}, not among the reported writes ${writes.join(", ")}`,
      );
    }
  }
}

function history(seed: number, steps: number): void {
  const rng = random(seed);
  const start: Json = { a: { x: 1, y: 2 }, b: [1, { x: 3 }], c: 5 };
  const r = new Replica("d", cloneJson(start), 0);
  const model = new Model(cloneJson(start));
  let version = 0;
  let txSeq = 0;
  const trace = [`seed ${seed}, from ${JSON.stringify(start)}:`];
  for (let step = 0; step < steps; step++) {
    const before = cloneJson(r.view);
    const action = rng();
    if (action < 0.35 && model.pending.length < 3) {
      // A local transaction of 1–2 ops on the view.
      const ops = [randomOp(rng, r.view), randomOp(rng, r.view)].slice(0, 1 + Math.floor(rng() * 2));
      const outcome = r.run(`t${++txSeq}`, (tx) => {
        for (const op of ops) {
          try {
            tx.write(op);
          } catch (error) {
            if (!(error instanceof PatchError)) throw error;
          }
        }
      });
      if (outcome.kind === "submit") model.pending.push(outcome.tx);
      trace.push(`run t${txSeq}: ${outcome.kind} ${outcome.kind === "submit" ? JSON.stringify(outcome.tx.writes) : ""}`);
      checkStep(trace, r, model, before);
    } else if (action < 0.8) {
      // Another client's change, committed on the confirmed state.
      const patch = committablePatch(rng, model.confirmed);
      if (!patch) continue;
      version++;
      trace.push(`change ${version} by another: ${JSON.stringify(patch)}`);
      const effect = r.applyChange({ doc: "d", version, tx_id: `other-${version}`, patch });
      model.confirmed = applied(model.confirmed, patch) as Json;
      checkStep(trace, r, model, before, effect);
    } else if (action < 0.9 && model.pending.length > 0) {
      // The oldest pending transaction commits, if it applies to the confirmed state.
      const tx = model.pending[0] as Transaction;
      const next = applied(model.confirmed, tx.writes);
      if (next === undefined) continue;
      version++;
      trace.push(`change ${version} commits ${tx.tx_id}`);
      const effect = r.applyChange({ doc: "d", version, tx_id: tx.tx_id, patch: tx.writes });
      model.confirmed = next;
      model.pending.shift();
      checkStep(trace, r, model, before, effect);
    } else if (model.pending.length > 0) {
      const tx = pick(rng, model.pending);
      trace.push(`${tx.tx_id} rejected`);
      r.onRejected(tx.tx_id);
      model.pending = model.pending.filter((p) => p !== tx);
      checkStep(trace, r, model, before);
    }
  }
}

test("remote changes leave the view a rebase would leave, whether applied over or under the pending patches", () => {
  const seeds = Number(process.env.REBASE_SEEDS ?? 1500);
  for (let seed = 1; seed <= seeds; seed++) history(seed, 40);
});

test("a remote change away from the pending writes is applied over them, one that overlaps them is rebased", () => {
  const r = new Replica("d", { shapes: { s0: { x: 0 }, s1: { x: 0 } } }, 0);
  assert.equal(r.run("mine", (tx) => tx.set("/shapes/s0/x", 5)).kind, "submit");
  const away = r.applyChange({ doc: "d", version: 1, tx_id: "o1", patch: [{ op: "replace", path: "/shapes/s1/x", value: 7 }] });
  assert.deepEqual(away, { writes: [Pointer.parse("/shapes/s1/x")] }, "applied over the pending write: no rebase");
  const over = r.applyChange({ doc: "d", version: 2, tx_id: "o2", patch: [{ op: "replace", path: "/shapes/s0", value: { x: 1 } }] });
  assert.deepEqual(over.rebased?.map(String), ["/shapes/s0/x", "/shapes/s0/x"], "the change replaced the pending write's parent");
  assert.deepEqual(r.view, { shapes: { s0: { x: 5 }, s1: { x: 7 } } });
  assert.deepEqual(r.confirmed(), { shapes: { s0: { x: 1 }, s1: { x: 7 } } });
});

test("a remote change that leaves no room for a pending write hides it, as a rebase does", () => {
  const snapshot: Json = { shapes: { s0: { x: 0 } } };
  // Room for the pending label (4 + 2 + 5 + 4 = 15 bytes) or the new shape, not both.
  const limits = { ...DEFAULT_LIMITS, docSizeBytesMax: encodedSizeEstimate(snapshot, Infinity) + 30 };
  const r = new Replica("d", snapshot, 0, limits);
  assert.equal(r.run("mine", (tx) => tx.set("/shapes/s0/label", "abcd")).kind, "submit");
  r.applyChange({ doc: "d", version: 1, tx_id: "o1", patch: [{ op: "add", path: "/shapes/s1", value: { x: 12345 } }] });
  assert.deepEqual(r.view, { shapes: { s0: { x: 0 }, s1: { x: 12345 } } }, "the change is in, the label is not");
  assert.ok(r.isPending("mine") && !r.isVisible("mine"));
});

test("a malformed remote change over pending writes is divergence, with the view untouched", () => {
  const r = new Replica("d", { shapes: { s0: { x: 0 }, s1: { x: 0 } } }, 0);
  assert.equal(r.run("mine", (tx) => tx.set("/shapes/s0/x", 5)).kind, "submit");
  const before = structuredClone(r.view);
  const malformed = [
    { op: "replace", path: "/shapes/s1/x", value: 1 },
    { op: "replace", path: "shapes/s1/y", value: 1 },
  ] as PatchOp[];
  assert.throws(() => r.applyChange({ doc: "d", version: 1, tx_id: "o1", patch: malformed }), /does not apply/);
  assert.deepEqual(r.view, before);
  assert.equal(r.version, 0);
});

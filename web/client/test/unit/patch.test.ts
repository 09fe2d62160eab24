// The patch engine: the array rule, incr, limits, atomicity, prototype-safe
// keys, and the RFC 6902 test suite vendored at engine/tests/data.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  applyPatch,
  DEFAULT_LIMITS,
  encodedSizeEstimate,
  InvalidPointer,
  parsePatch,
  PatchError,
  type Json,
  type Limits,
  type Patch,
  type PatchOp,
} from "../../src/index.js";
import { repoPath } from "../support/paths.js";

function apply(doc: Json, ops: unknown, limits: Limits = DEFAULT_LIMITS) {
  const box = { value: doc };
  const applied = applyPatch(box, encodedSizeEstimate(doc, Infinity), parsePatch(ops), limits);
  return { doc: box.value, writes: applied.writes.map(String), applied, box };
}

function failure(doc: Json, ops: unknown, limits: Limits = DEFAULT_LIMITS): { error: PatchError; doc: Json } {
  const box = { value: doc };
  try {
    applyPatch(box, encodedSizeEstimate(doc, Infinity), parsePatch(ops), limits);
  } catch (error) {
    assert.ok(error instanceof PatchError, String(error));
    return { error, doc: box.value };
  }
  assert.fail("the patch applied");
}

test("array rule: appends and last removals write one index", () => {
  assert.deepEqual(apply({ a: [1, 2] }, [{ op: "add", path: "/a/-", value: 3 }]).writes, ["/a/2"]);
  assert.deepEqual(apply({ a: [1, 2] }, [{ op: "add", path: "/a/2", value: 3 }]).writes, ["/a/2"]);
  assert.deepEqual(apply({ a: [1, 2] }, [{ op: "remove", path: "/a/1" }]).writes, ["/a/1"]);
});

test("array rule: shifts write the whole array", () => {
  assert.deepEqual(apply({ a: [1, 2] }, [{ op: "add", path: "/a/0", value: 0 }]).writes, ["/a"]);
  assert.deepEqual(apply({ a: [1, 2] }, [{ op: "remove", path: "/a/0" }]).writes, ["/a"]);
  assert.deepEqual(apply({ a: [1, 2], b: {} }, [{ op: "move", from: "/a/0", path: "/b/x" }]).writes, ["/a", "/b/x"]);
});

test("incr creates, adds and refuses non-numbers", () => {
  const { doc } = apply({ n: 1, s: "x" }, [
    { op: "incr", path: "/n", value: 2 },
    { op: "incr", path: "/m", value: 1.5 },
  ]);
  assert.deepEqual(doc, { n: 3, s: "x", m: 1.5 });
  assert.equal(failure(doc, [{ op: "incr", path: "/s", value: 1 }]).error.error.reason, "not_a_number");
  assert.equal(failure({ n: Number.MAX_VALUE }, [{ op: "incr", path: "/n", value: Number.MAX_VALUE }]).error.error.reason, "number_overflow");
  assert.throws(() => parsePatch([{ op: "incr", path: "/n", value: "1" }]), /numeric/);
});

test("a failing op undoes everything before it", () => {
  const original = { a: { b: [1, 2, 3] }, c: "d" };
  const { error, doc } = failure(structuredClone(original), [
    { op: "remove", path: "/a/b/0" },
    { op: "move", from: "/c", path: "/a/e" },
    { op: "add", path: "/a/b/-", value: { x: 1 } },
    { op: "replace", path: "", value: 7 },
    { op: "test", path: "", value: 8 },
  ]);
  assert.equal(error.opIndex, 4);
  assert.deepEqual(doc, original);
});

test("undo restores exactly, and the document never shares objects with ops", () => {
  const op = { op: "add", path: "/a", value: { inner: { n: 1 } } } as const;
  const patch = parsePatch([op, { op: "replace", path: "/a/inner/n", value: 2 }]);
  const box = { value: { keep: [1] } as Json };
  const applied = applyPatch(box, 0, patch, DEFAULT_LIMITS);
  assert.deepEqual(box.value, { keep: [1], a: { inner: { n: 2 } } });
  assert.deepEqual((patch[0] as { value: Json }).value, { inner: { n: 1 } }, "the op's value was copied, not aliased");
  applied.undo(box);
  assert.deepEqual(box.value, { keep: [1] });
  // A moved value that later ops edit must come back unedited.
  const moved = { value: { a: { x: 1 }, b: {} } as Json };
  const undo = applyPatch(moved, 0, parsePatch([
    { op: "move", from: "/a", path: "/b/a" },
    { op: "replace", path: "/b/a/x", value: 9 },
  ]), DEFAULT_LIMITS);
  undo.undo(moved);
  assert.deepEqual(moved.value, { a: { x: 1 }, b: {} });
});

test("copy chains hit the size limit before allocating", () => {
  const limits = { ...DEFAULT_LIMITS, docSizeBytesMax: 10_000 };
  const ops = Array.from({ length: 20 }, (_, i) => ({ op: "copy", from: "", path: `/k${i}` }));
  const start = { a: "x".repeat(1000) };
  const { error, doc } = failure(structuredClone(start), ops, limits);
  assert.equal(error.error.reason, "size_exceeded");
  assert.deepEqual(doc, start);
});

test("depth limit counts path and value", () => {
  const limits = { ...DEFAULT_LIMITS, jsonDepthMax: 3 };
  const { error } = failure({ a: {} }, [{ op: "add", path: "/a/b", value: { c: { d: 1 } } }], limits);
  assert.deepEqual(error.error, { reason: "depth_exceeded", path: "/a/b", depth: 4, max: 3 });
  apply({ a: {} }, [{ op: "add", path: "/a/b", value: { c: 1 } }], limits);
});

test("size estimate counts UTF-8 bytes like the engine", () => {
  // {"é": "ab"} = object 2 + key (2 bytes + 4) + string (2 + 2)
  assert.equal(encodedSizeEstimate(JSON.parse('{"é": "ab"}'), Infinity), 12);
  assert.equal(encodedSizeEstimate([null, true, 1.5], Infinity), 2 + 3 + 5 + 5 + 8);
});

test("test compares numbers by value and objects regardless of order", () => {
  apply({ a: [1], o: { x: 1, y: 2 } }, [
    { op: "test", path: "/a", value: [1.0] },
    { op: "test", path: "/o", value: { y: 2, x: 1 } },
  ]);
  assert.equal(failure({ a: 1 }, [{ op: "test", path: "/a", value: "1" }]).error.error.reason, "test_failed");
});

test("keys that name prototype members are plain data", () => {
  const doc = JSON.parse('{"a": {}}') as Json;
  const { doc: after } = apply(doc, [
    { op: "add", path: "/__proto__", value: { polluted: true } },
    { op: "add", path: "/a/constructor", value: { prototype: { polluted: true } } },
    { op: "add", path: "/a/__proto__", value: 1 },
    { op: "incr", path: "/toString", value: 1 },
    { op: "copy", from: "/__proto__", path: "/hasOwnProperty" },
  ]);
  assert.equal(({} as Record<string, unknown>).polluted, undefined, "Object.prototype untouched");
  assert.equal(Object.getPrototypeOf(after), Object.prototype);
  assert.deepEqual(Object.keys(after as object).sort(), ["__proto__", "a", "hasOwnProperty", "toString"]);
  assert.equal(JSON.stringify(after), '{"a":{"constructor":{"prototype":{"polluted":true}},"__proto__":1},"__proto__":{"polluted":true},"toString":1,"hasOwnProperty":{"polluted":true}}');
  // Reading an absent prototype-named key finds nothing (not Object.prototype).
  assert.equal(failure({}, [{ op: "remove", path: "/constructor" }]).error.error.reason, "path_not_found");
  assert.equal(failure({}, [{ op: "test", path: "/__proto__", value: {} }]).error.error.reason, "path_not_found");
  assert.equal(failure({}, [{ op: "replace", path: "/valueOf", value: 1 }]).error.error.reason, "path_not_found");
  const removed = apply(after, [{ op: "remove", path: "/__proto__" }]).doc;
  assert.equal(Object.getPrototypeOf(removed), Object.prototype);
  assert.ok(!Object.prototype.hasOwnProperty.call(removed, "__proto__"));
});

// ---- RFC 6902: the vendored json-patch-tests suite ----

interface SuiteCase {
  comment?: string;
  doc?: Json;
  patch?: unknown;
  expected?: Json;
  error?: string;
  disabled?: boolean;
}

/** Enabled and disabled cases of json-patch-test-suite 1.1.0, as engine/tests/conformance.rs pins them. */
const CASES_RUN = 91;
const CASES_DISABLED = 4;
const CASES_PROBED = 10;
const PROBE_KEY = "concord conformance probe";

test("the RFC 6902 test suite (engine/tests/data/json-patch-tests) passes", () => {
  let run = 0;
  let disabled = 0;
  let probed = 0;
  const failures: string[] = [];
  for (const file of ["tests.json", "spec_tests.json"]) {
    const cases = JSON.parse(readFileSync(repoPath("engine", "tests", "data", "json-patch-tests", file), "utf8")) as SuiteCase[];
    cases.forEach((c, position) => {
      const name = `${file}[${position}] ${JSON.stringify(c.comment ?? c.error ?? "")}`;
      if (c.disabled === true) {
        disabled++;
        return;
      }
      if (!("doc" in c)) return; // a comment-only record
      run++;
      const original = JSON.stringify(c.doc);
      const outcome = runCase(c.doc as Json, c.patch);
      const hasExpected = "expected" in c;
      if (hasExpected && "error" in c) failures.push(`${name}: both expected and error`);
      else if (hasExpected) {
        if (!outcome.ok) failures.push(`${name}: failed: ${outcome.reason}`);
        else if (!strictJsonEqual(outcome.doc, c.expected as Json)) {
          failures.push(`${name}: got ${JSON.stringify(outcome.doc)}, expected ${JSON.stringify(c.expected)}`);
        }
      } else if ("error" in c) {
        if (outcome.ok) failures.push(`${name}: applied, expected an error`);
        else if (JSON.stringify(outcome.doc) !== original) failures.push(`${name}: failed but changed the document`);
        else {
          // Every error case fails at its first op; run it again behind an
          // `add` so the failure must also undo an op before it.
          const problem = probeAtomicity(c.doc as Json, c.patch);
          if (problem !== null) {
            probed++;
            if (problem) failures.push(`${name}: ${problem}`);
          }
        }
      } else if (!outcome.ok) {
        failures.push(`${name}: expected success: ${outcome.reason}`);
      } else if (JSON.stringify(outcome.doc) !== original) {
        failures.push(`${name}: test-only patch changed the document`);
      }
    });
  }
  assert.deepEqual(failures, []);
  assert.deepEqual({ run, disabled, probed }, { run: CASES_RUN, disabled: CASES_DISABLED, probed: CASES_PROBED });
});

function runCase(doc: Json, patchJson: unknown): { ok: true; doc: Json } | { ok: false; reason: string; doc: Json } {
  const box = { value: structuredClone(doc) };
  let patch: Patch;
  try {
    patch = parsePatch(patchJson);
  } catch (error) {
    return { ok: false, reason: `does not parse: ${(error as Error).message}`, doc: box.value };
  }
  try {
    applyPatch(box, encodedSizeEstimate(box.value, Infinity), patch, DEFAULT_LIMITS);
    return { ok: true, doc: box.value };
  } catch (error) {
    return { ok: false, reason: (error as Error).message, doc: box.value };
  }
}

/** `null` when the case cannot be probed, `""` when it passed, else the problem. */
function probeAtomicity(doc: Json, patchJson: unknown): string | null {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return null;
  let patch: Patch;
  try {
    patch = parsePatch(patchJson);
  } catch {
    return null;
  }
  const box = { value: structuredClone(doc) };
  try {
    applyPatch(box, 0, [{ op: "add", path: "/" + PROBE_KEY, value: "probe" }, ...patch], DEFAULT_LIMITS);
    return "behind a probe add, the patch applied";
  } catch (error) {
    if ((error as PatchError).opIndex === 0) return "the probe itself failed";
    if (JSON.stringify(box.value) !== JSON.stringify(doc)) return "behind a probe add, the failure left changes";
    return "";
  }
}

/** Equality that also compares member order-insensitively and numbers exactly. */
function strictJsonEqual(a: Json, b: Json): boolean {
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return Object.is(a, b) || a === b;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => strictJsonEqual(x, b[i] as Json));
  const ak = Object.keys(a);
  const bo = b as Record<string, Json>;
  return ak.length === Object.keys(bo).length && ak.every((k) => Object.prototype.hasOwnProperty.call(bo, k) && strictJsonEqual((a as Record<string, Json>)[k] as Json, bo[k] as Json));
}

test("an op that is not one (a bad pointer) throws with nothing applied", () => {
  const doc = { value: { a: 1, b: 2 } as Json };
  const patch = [
    { op: "replace", path: "/a", value: 9 },
    { op: "replace", path: "b", value: 9 },
  ] as PatchOp[];
  assert.throws(() => applyPatch(doc, 0, patch, DEFAULT_LIMITS), InvalidPointer);
  assert.deepEqual(doc.value, { a: 1, b: 2 });
});

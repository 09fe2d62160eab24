// The session trace vectors (engine/tests/vectors/session/*.json), replayed
// through the TypeScript port of `ClientSession`: every step's sends, events,
// timeout, documents and returned value must equal what the Rust machine
// recorded, so the two clients cannot drift apart. Also: vectors edited to
// expect the old TypeScript behaviour fail the replay (the check can fail),
// and the generator draws what the Rust one draws.

import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";

import { SessionRng } from "../../src/session/index.js";
import { repoPath } from "../support/paths.js";
import { replay, type Mismatch, type Vector } from "../support/trace.js";

const DIR = repoPath("engine", "tests", "vectors", "session");
const FILES = readdirSync(DIR)
  .filter((name) => name.endsWith(".json"))
  .sort();

function load(file: string): Vector {
  return JSON.parse(readFileSync(`${DIR}/${file}`, "utf8")) as Vector;
}

/** JSON values compared as values: object members in any order. */
const equal = (a: unknown, b: unknown): boolean => isDeepStrictEqual(a, b);

function describe(mismatch: Mismatch): string {
  return (
    `${mismatch.scenario}: step ${mismatch.step}, ${mismatch.field} differs\n` +
    `expected: ${JSON.stringify(mismatch.expected)}\n` +
    `actual:   ${JSON.stringify(mismatch.actual)}`
  );
}

test("there are session vectors to replay", () => {
  assert.ok(FILES.length >= 15, `found ${FILES.length} in ${DIR}`);
});

for (const file of FILES) {
  test(`session vector ${file} replays step for step`, () => {
    const vector = load(file);
    const result = replay(vector, equal);
    if ("mismatch" in result) assert.fail(describe(result.mismatch));
    assert.equal(result.steps, vector.steps.length);
    assert.ok(result.steps > 0);
  });
}

test("a vector edited to expect the old behaviour (a duplicated own change settling nothing) fails the replay", () => {
  const vector = load("duplicate-change.json");
  // The step where our own commit's change arrives settles the transaction;
  // the old client would have emitted the change and no settlement there.
  const index = vector.steps.findIndex((step) => step.events.some((event) => (event as { event?: string }).event === "settled"));
  assert.ok(index > 0, "the vector has a settling step");
  const step = vector.steps[index] as Vector["steps"][number];
  step.events = step.events.filter((event) => (event as { event?: string }).event !== "settled");
  const result = replay(vector, equal);
  assert.ok("mismatch" in result, "the edited vector must not replay");
  assert.equal(result.mismatch.step, index);
  assert.equal(result.mismatch.field, "events");
});

test("a vector edited to expect per-transaction backoff's immediate re-run fails the replay", () => {
  const vector = load("conflict-rerun.json");
  // The rejection's step: the machine pauses the re-run (no `run` event,
  // a timeout at the pause's end). Expect the re-run at once instead.
  const index = vector.steps.findIndex((step) => (step.input as { message?: { type?: string } }).message?.type === "rejected");
  assert.ok(index > 0, "the vector has a rejection");
  const step = vector.steps[index] as Vector["steps"][number];
  assert.ok(!step.events.some((event) => (event as { event?: string }).event === "run"), "recorded: paused");
  step.events = [...step.events, { event: "run", transaction: 1, tx_id: "c-2", report: "submit" }];
  const result = replay(vector, equal);
  assert.ok("mismatch" in result, "the edited vector must not replay");
  assert.equal(result.mismatch.step, index);
  assert.equal(result.mismatch.field, "events");
});

test("the generator's first draws for seed 1 are those of the Rust machine", () => {
  const rng = new SessionRng(1);
  assert.deepEqual([rng.nextU32(), rng.nextU32(), rng.nextU32(), rng.nextU32()], [2442144158, 3238099751, 3819917871, 2104621829]);
  const bounded = new SessionRng(1);
  for (let i = 0; i < 1000; i++) assert.ok(bounded.upTo(10) <= 10);
  assert.equal(bounded.upTo(0), 0);
});

// Rejections: which ones a re-run may cure (as the engine's
// `Rejection::is_retryable`) and the sentence each one reads as.

import assert from "node:assert/strict";
import { test } from "node:test";

import { describeRejection, isRetryable, type Rejection } from "../../src/index.js";

const every: Rejection[] = [
  { reason: "conflict", conflicts: [{ pointer: "/x", version: 2, tx_id: "t" }], conflicts_total: 1 },
  { reason: "stale", base: 1, horizon: 5 },
  { reason: "patch", op_index: 0, error: { reason: "path_not_found", path: "/a" } },
  { reason: "base_ahead", base: 9, current: 3 },
  { reason: "too_large", what: "patch", len: 10, max: 5 },
  { reason: "outcome_unknown", base: 0, floor: 4 },
  { reason: "forbidden", op_index: 1, pointer: "/settings", message: "read-only document" },
  { reason: "invalid", pointer: "/shapes/a", message: "missing field x" },
  { reason: "vetoed", message: "the board is archived" },
];

test("a rejection is retryable exactly as in the engine; outcome_unknown, forbidden, invalid, vetoed are not", () => {
  const retryable = every.filter(isRetryable).map((r) => r.reason);
  assert.deepEqual(retryable, ["conflict", "stale", "patch"]);
});

test("every rejection reads as a sentence; outcome_unknown names its base and floor", () => {
  for (const rejection of every) {
    const text = describeRejection(rejection);
    assert.equal(typeof text, "string", rejection.reason);
    assert.ok(text.length > 10, `${rejection.reason}: ${text}`);
  }
  const text = describeRejection({ reason: "outcome_unknown", base: 3, floor: 7 });
  assert.match(text, /base 3 is older than the dedup floor 7/);
});

test("the server's refusals read with what was refused and why", () => {
  assert.equal(
    describeRejection({ reason: "forbidden", op_index: 1, pointer: "/settings", message: "read-only document" }),
    "forbidden: op 1 writes /settings: read-only document",
  );
  assert.equal(describeRejection({ reason: "invalid", pointer: "/shapes/a", message: "missing field x" }), "invalid: /shapes/a: missing field x");
  assert.equal(describeRejection({ reason: "vetoed", message: "the board is archived" }), "vetoed: the board is archived");
});

test("a rejection reason this client does not know is not retryable and still reads as a sentence", () => {
  const unknown = { reason: "quota", used: 3 } as unknown as Rejection;
  assert.equal(isRetryable(unknown), false);
  assert.equal(describeRejection(unknown), "rejected: quota");
});

// The event emitter: listeners run in the order added, each event goes to
// the listeners there were when it was emitted, and one that throws does not
// stop the others.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Emitter } from "../../src/index.js";

interface Events {
  tick: number;
}

test("an event goes to the listeners there were when it was emitted, in the order added", () => {
  const emitter = new Emitter<Events>();
  const calls: string[] = [];
  const late = (n: number) => calls.push(`late ${n}`);
  const second = (n: number) => calls.push(`second ${n}`);
  emitter.on("tick", (n) => {
    calls.push(`first ${n}`);
    emitter.on("tick", late);
    emitter.off("tick", second);
  });
  emitter.on("tick", second);
  emitter.emit("tick", 1);
  assert.deepEqual(calls, ["first 1", "second 1"], "added during the emit: not called; removed during it: still called");
  calls.length = 0;
  emitter.emit("tick", 2);
  assert.deepEqual(calls, ["first 2", "late 2"]);
});

test("a listener added twice runs once, once() runs once, and off() stops a listener", () => {
  const emitter = new Emitter<Events>();
  const seen: number[] = [];
  const listener = (n: number) => seen.push(n);
  emitter.on("tick", listener);
  emitter.on("tick", listener);
  emitter.once("tick", (n) => seen.push(-n));
  emitter.emit("tick", 1);
  emitter.emit("tick", 2);
  emitter.off("tick", listener);
  emitter.emit("tick", 3);
  assert.deepEqual(seen, [1, -1, 2]);
});

test("a listener that throws does not stop the others", () => {
  const emitter = new Emitter<Events>();
  const errors: unknown[] = [];
  emitter.onListenerError = (error) => errors.push(error);
  const seen: number[] = [];
  emitter.on("tick", () => {
    throw new Error("boom");
  });
  emitter.on("tick", (n) => seen.push(n));
  emitter.emit("tick", 1);
  assert.deepEqual(seen, [1]);
  assert.equal(errors.length, 1);
});

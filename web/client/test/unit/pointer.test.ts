import assert from "node:assert/strict";
import { test } from "node:test";

import { InvalidPointer, parseArrayIndex, Pointer, POINTER_LEN_MAX } from "../../src/index.js";

test("parses the RFC 6901 examples and round-trips them", () => {
  const cases: [string, string[]][] = [
    ["", []],
    ["/foo", ["foo"]],
    ["/foo/0", ["foo", "0"]],
    ["/", [""]],
    ["/a~1b", ["a/b"]],
    ["/m~0n", ["m~n"]],
    ["/c%d", ["c%d"]],
    ["/ ", [" "]],
    ["/~01", ["~1"]],
  ];
  for (const [raw, tokens] of cases) {
    const pointer = Pointer.parse(raw);
    assert.deepEqual(pointer.tokens, tokens, raw);
    assert.equal(Pointer.fromTokens(tokens).toString(), raw, `round trip of ${raw}`);
  }
});

test("rejects malformed pointers", () => {
  assert.throws(() => Pointer.parse("foo"), InvalidPointer);
  assert.throws(() => Pointer.parse("/a~2"), InvalidPointer);
  assert.throws(() => Pointer.parse("/a~"), InvalidPointer);
  assert.throws(() => Pointer.parse("/a".repeat(POINTER_LEN_MAX)), InvalidPointer);
  assert.throws(() => Pointer.parse("/" + "é".repeat(POINTER_LEN_MAX / 2)), InvalidPointer, "the limit counts UTF-8 bytes");
});

test("prefix and overlap relations", () => {
  const a = Pointer.parse("/a");
  const ab = Pointer.parse("/a/b");
  const ac = Pointer.parse("/a/c");
  assert.ok(a.isPrefixOf(ab) && a.overlaps(ab) && ab.overlaps(a));
  assert.ok(!ab.overlaps(ac));
  assert.ok(Pointer.root.overlaps(ac));
  assert.ok(!Pointer.parse("/ab").overlaps(a), "token-wise, not string-wise");
});

test("parents drop the last token, and parsed pointers and their parents are shared, so frozen", () => {
  const x = Pointer.parse("/shapes/a~1b/x");
  assert.equal(x.parent()?.toString(), "/shapes/a~1b");
  assert.equal(x.parent()?.parent()?.toString(), "/shapes");
  assert.ok(x.parent()?.parent()?.parent()?.isRoot);
  assert.equal(Pointer.root.parent(), undefined);
  assert.ok(Object.isFrozen(x.tokens) && Object.isFrozen(x.parent()?.tokens));
  assert.deepEqual(Pointer.parse("/shapes/a~1b/x").parent()?.tokens, ["shapes", "a/b"], "the same again from the cache");
  assert.throws(() => Pointer.parse(7 as unknown as string), InvalidPointer, "a non-string is refused, cache or not");
});

test("array indices follow RFC 6901", () => {
  assert.equal(parseArrayIndex("0"), 0);
  assert.equal(parseArrayIndex("12"), 12);
  for (const bad of ["", "01", "-", "1e2", "-1", "+1", "99999999999999999999"]) {
    assert.equal(parseArrayIndex(bad), undefined, bad);
  }
});

test("paths may be given as token lists", () => {
  assert.equal(Pointer.from(["shapes", "a/b", 0]).toString(), "/shapes/a~1b/0");
  assert.equal(Pointer.from("/x").toString(), "/x");
});

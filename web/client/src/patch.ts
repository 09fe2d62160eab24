// RFC 6902 JSON Patch plus `incr`, applied atomically in place; a faithful
// port of engine/src/patch.rs, so that a replica in the browser computes
// exactly what the server does (including the written locations the version
// index stamps, the size estimate and the depth limit).
//
// ## Written locations (the array rule)
// - `add`/`replace`/`copy`/`incr` of an object member write that member;
// - appending to an array (index = length, or `-`) writes the new index only,
//   and removing its last element writes that index only: no other index moves;
// - inserting or removing anywhere else shifts later elements, so it counts
//   as a write to the *whole array*;
// - `move` is a `remove` then an `add`; `test` writes nothing.
//
// Values taken from ops are copied into the document, and a moved value is
// copied on its way: a pending patch is re-applied on every rebase, so no op
// may share an object with the document it edits, and no undo entry may share
// one with a later op.

import {
  cloneJson,
  deleteMember,
  getMember,
  hasMember,
  isObject,
  jsonEqual,
  setMember,
  toJson,
  utf8Length,
  type Json,
  type JsonObject,
} from "./json.js";
import { InvalidPointer, parseArrayIndex, Pointer } from "./pointer.js";

/** One patch operation: the six of RFC 6902 and Concord's `incr`, in wire form. */
export type PatchOp =
  | { op: "add"; path: string; value: Json }
  | { op: "remove"; path: string }
  | { op: "replace"; path: string; value: Json }
  | { op: "move"; from: string; path: string }
  | { op: "copy"; from: string; path: string }
  | { op: "test"; path: string; value: Json }
  | { op: "incr"; path: string; value: number };

/** A write set: ops applied in order, all or none. */
export type Patch = PatchOp[];

/** Bounds the engine enforces; the defaults are the engine's (engine/src/limits.rs). */
export interface Limits {
  /** Most ops in one transaction's write set. */
  patchOpsMax: number;
  /** Most pointers in one transaction's read set. */
  readSetPointersMax: number;
  /** Deepest nesting a document may reach (root members are depth 1). */
  jsonDepthMax: number;
  /** Largest a document may grow to after a patch, as approximate encoded bytes. */
  docSizeBytesMax: number;
}

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  patchOpsMax: 1_000,
  readSetPointersMax: 1_000,
  jsonDepthMax: 64,
  docSizeBytesMax: 16 * 1024 * 1024,
});

/** Why one patch op could not be applied; the wire form of the engine's `PatchOpError`. */
export type PatchOpError =
  | { reason: "path_not_found"; path: string }
  | { reason: "parent_not_container"; path: string }
  | { reason: "bad_array_index"; path: string }
  | { reason: "test_failed"; path: string }
  | { reason: "move_into_child"; from: string; path: string }
  | { reason: "remove_root" }
  | { reason: "not_a_number"; path: string }
  | { reason: "number_overflow"; path: string }
  | { reason: "depth_exceeded"; path: string; depth: number; max: number }
  | { reason: "size_exceeded"; size_bytes: number; max_bytes: number };

/** A patch that failed: which op and why. The document is unchanged. */
export class PatchError extends Error {
  override name = "PatchError";
  constructor(
    readonly opIndex: number,
    readonly error: PatchOpError,
  ) {
    super(`patch op ${opIndex} failed: ${describe(error)}`);
  }

  toJSON(): { op_index: number; error: PatchOpError } {
    return { op_index: this.opIndex, error: this.error };
  }
}

/** A value that is not a well-formed patch op (the engine would not deserialise it). */
export class InvalidPatch extends TypeError {
  override name = "InvalidPatch";
}

function describe(error: PatchOpError): string {
  switch (error.reason) {
    case "path_not_found":
      return `path ${error.path} does not exist`;
    case "parent_not_container":
      return `parent of ${error.path} is not an object or array`;
    case "bad_array_index":
      return `${error.path} is not a valid index into its array`;
    case "test_failed":
      return `test failed at ${error.path}`;
    case "move_into_child":
      return `cannot move ${error.from} into its own child ${error.path}`;
    case "remove_root":
      return "cannot remove the document root";
    case "not_a_number":
      return `incr at ${error.path}: the value there is not a number`;
    case "number_overflow":
      return `incr at ${error.path} overflows`;
    case "depth_exceeded":
      return `${error.path} would nest ${error.depth} levels deep, over the limit of ${error.max}`;
    case "size_exceeded":
      return `document would grow to about ${error.size_bytes} bytes, over the limit of ${error.max_bytes}`;
  }
}

/** A mutable holder for a document, so that an op on `""` can replace it whole. */
export interface DocBox {
  value: Json;
}

type Undo =
  /** Put the old value back at an existing location. */
  | { kind: "restore"; path: Pointer; old: Json }
  /** Remove what an `add` inserted. */
  | { kind: "remove"; path: Pointer }
  /** Re-insert what a `remove` took out. */
  | { kind: "insert"; path: Pointer; value: Json };

/** What a successful application leaves behind: how to undo it, where it wrote, and the size change. */
export class Applied {
  /** @internal */
  readonly undoLog: Undo[] = [];
  /** Locations written, under the array rule. */
  readonly writes: Pointer[] = [];
  /** Change in `encodedSizeEstimate` of the document. */
  sizeDeltaBytes = 0;

  /** Reverts the patch this came from. `doc` must be exactly as the patch left it. */
  undo(doc: DocBox): void {
    undoAll(doc, this.undoLog);
  }
}

/** Checks the shape of one op as the engine's deserialiser would, and returns it typed. */
export function parsePatchOp(raw: unknown): PatchOp {
  if (!isObject(raw as Json)) throw new InvalidPatch("a patch op must be an object");
  const op = raw as Record<string, unknown>;
  const pointer = (field: "path" | "from"): string => {
    const value = hasMember(op as JsonObject, field) ? op[field] : undefined;
    if (typeof value !== "string") throw new InvalidPatch(`patch op needs a string '${field}'`);
    try {
      Pointer.parse(value);
    } catch (error) {
      if (error instanceof InvalidPointer) throw new InvalidPatch(`'${field}': ${error.message}`);
      throw error;
    }
    return value;
  };
  const value = (): Json => {
    if (!hasMember(op as JsonObject, "value")) throw new InvalidPatch("patch op needs a 'value'");
    try {
      return toJson(op.value);
    } catch (error) {
      throw new InvalidPatch(`'value': ${(error as Error).message}`);
    }
  };
  const kind = hasMember(op as JsonObject, "op") ? op.op : undefined;
  switch (kind) {
    case "add":
    case "replace":
    case "test":
      return { op: kind, path: pointer("path"), value: value() };
    case "remove":
      return { op: kind, path: pointer("path") };
    case "move":
    case "copy":
      return { op: kind, from: pointer("from"), path: pointer("path") };
    case "incr": {
      const path = pointer("path");
      const delta = value();
      if (typeof delta !== "number") throw new InvalidPatch("incr needs a numeric 'value'");
      return { op: kind, path, value: delta };
    }
    default:
      throw new InvalidPatch(`unknown patch op ${JSON.stringify(kind)}`);
  }
}

/** Checks a whole patch; see `parsePatchOp`. */
export function parsePatch(raw: unknown): Patch {
  if (!Array.isArray(raw)) throw new InvalidPatch("a patch must be an array of ops");
  return raw.map(parsePatchOp);
}

/**
 * Applies `patch` to `doc`, whose size estimate is `docSizeBytes`. On success
 * the document holds the result; on failure it is unchanged and the thrown
 * `PatchError` names the failing op.
 */
export function applyPatch(doc: DocBox, docSizeBytes: number, patch: readonly PatchOp[], limits: Limits): Applied {
  const run = new Run(doc, docSizeBytes, limits);
  for (let opIndex = 0; opIndex < patch.length; opIndex++) {
    let error: PatchOpError | undefined;
    try {
      error = run.op(patch[opIndex] as PatchOp);
    } catch (thrown) {
      // Not an op at all (a bad pointer, a missing field): nothing stays applied either.
      undoAll(doc, run.applied.undoLog);
      throw thrown;
    }
    if (error !== undefined) {
      undoAll(doc, run.applied.undoLog);
      throw new PatchError(opIndex, error);
    }
  }
  run.applied.sizeDeltaBytes = run.sizeBytes - docSizeBytes;
  return run.applied;
}

class Run {
  readonly applied = new Applied();
  constructor(
    readonly doc: DocBox,
    public sizeBytes: number,
    readonly limits: Limits,
  ) {}

  op(op: PatchOp): PatchOpError | undefined {
    switch (op.op) {
      case "add":
        return this.add(Pointer.parse(op.path), cloneJson(op.value));
      case "remove": {
        const removed = this.remove(Pointer.parse(op.path));
        return "error" in removed ? removed.error : undefined;
      }
      case "replace":
        return this.replace(Pointer.parse(op.path), cloneJson(op.value));
      case "move": {
        const from = Pointer.parse(op.from);
        const path = Pointer.parse(op.path);
        if (from.equals(path)) {
          return resolve(this.doc.value, from) === undefined
            ? { reason: "path_not_found", path: from.toString() }
            : undefined;
        }
        if (from.isPrefixOf(path)) {
          return { reason: "move_into_child", from: from.toString(), path: path.toString() };
        }
        const removed = this.remove(from);
        if ("error" in removed) return removed.error;
        // The undo log keeps `removed` to re-insert; the document gets its own copy.
        return this.add(path, cloneJson(removed.value));
      }
      case "copy": {
        const from = Pointer.parse(op.from);
        const source = resolve(this.doc.value, from);
        if (source === undefined) return { reason: "path_not_found", path: from.toString() };
        // Measure before copying: the size check must come before the memory.
        const budget = Math.max(0, this.limits.docSizeBytesMax - this.sizeBytes);
        const sourceBytes = encodedSizeEstimate(source, budget);
        if (sourceBytes > budget) return this.sizeError(sourceBytes);
        return this.add(Pointer.parse(op.path), cloneJson(source));
      }
      case "test": {
        const path = Pointer.parse(op.path);
        const current = resolve(this.doc.value, path);
        if (current === undefined) return { reason: "path_not_found", path: path.toString() };
        return jsonEqual(current, op.value) ? undefined : { reason: "test_failed", path: path.toString() };
      }
      case "incr":
        return this.incr(Pointer.parse(op.path), op.value);
    }
  }

  sizeError(addedBytes: number): PatchOpError {
    return {
      reason: "size_exceeded",
      size_bytes: this.sizeBytes + addedBytes,
      max_bytes: this.limits.docSizeBytesMax,
    };
  }

  /** Checks depth and size of a value about to be placed at `path`, and books its size. */
  admit(path: Pointer, value: Json): PatchOpError | undefined {
    const depth = path.depth + valueDepth(value);
    if (depth > this.limits.jsonDepthMax) {
      return { reason: "depth_exceeded", path: path.toString(), depth, max: this.limits.jsonDepthMax };
    }
    const budget = Math.max(0, this.limits.docSizeBytesMax - this.sizeBytes);
    const last = path.last();
    const bytes = encodedSizeEstimate(value, budget) + (last === undefined ? 0 : utf8Length(last) + 4);
    if (bytes > budget) return this.sizeError(bytes);
    this.sizeBytes += bytes;
    return undefined;
  }

  release(path: Pointer, value: Json): void {
    const last = path.last();
    const bytes = encodedSizeEstimate(value, Infinity) + (last === undefined ? 0 : utf8Length(last) + 4);
    this.sizeBytes = Math.max(0, this.sizeBytes - bytes);
  }

  add(path: Pointer, value: Json): PatchOpError | undefined {
    const last = path.last();
    if (last === undefined) {
      const refused = this.admit(path, value);
      if (refused) return refused;
      const old = this.doc.value;
      this.doc.value = value;
      this.release(path, old);
      this.applied.undoLog.push({ kind: "restore", path, old });
      this.applied.writes.push(path);
      return undefined;
    }
    const parentPath = parentOf(path);
    const parent = resolve(this.doc.value, parentPath);
    if (parent === undefined) return { reason: "path_not_found", path: parentPath.toString() };
    if (Array.isArray(parent)) {
      const len = parent.length;
      const index = last === "-" ? len : parseArrayIndex(last);
      if (index === undefined || index > len) return { reason: "bad_array_index", path: path.toString() };
      const at = parentPath.child(index);
      const refused = this.admit(at, value);
      if (refused) return refused;
      parent.splice(index, 0, value);
      this.applied.writes.push(index === len ? at : parentPath);
      this.applied.undoLog.push({ kind: "remove", path: at });
      return undefined;
    }
    if (isObject(parent)) {
      const refused = this.admit(path, value);
      if (refused) return refused;
      const old = getMember(parent, last);
      setMember(parent, last, value);
      if (old !== undefined) {
        this.release(path, old);
        this.applied.undoLog.push({ kind: "restore", path, old });
      } else {
        this.applied.undoLog.push({ kind: "remove", path });
      }
      this.applied.writes.push(path);
      return undefined;
    }
    return { reason: "parent_not_container", path: path.toString() };
  }

  remove(path: Pointer): { value: Json } | { error: PatchOpError } {
    const last = path.last();
    if (last === undefined) return { error: { reason: "remove_root" } };
    const notFound = { error: { reason: "path_not_found", path: path.toString() } } as const;
    const parentPath = parentOf(path);
    const parent = resolve(this.doc.value, parentPath);
    if (parent === undefined) return { error: { reason: "path_not_found", path: parentPath.toString() } };
    let removed: Json;
    let at: Pointer;
    let write: Pointer;
    if (Array.isArray(parent)) {
      const len = parent.length;
      const index = parseArrayIndex(last);
      if (index === undefined || index >= len) return { error: { reason: "bad_array_index", path: path.toString() } };
      removed = parent.splice(index, 1)[0] as Json;
      at = parentPath.child(index);
      write = index + 1 === len ? at : parentPath;
    } else if (isObject(parent)) {
      const found = getMember(parent, last);
      if (found === undefined) return notFound;
      deleteMember(parent, last);
      removed = found;
      at = path;
      write = path;
    } else {
      return notFound;
    }
    this.release(at, removed);
    this.applied.undoLog.push({ kind: "insert", path: at, value: removed });
    this.applied.writes.push(write);
    return { value: removed };
  }

  replace(path: Pointer, value: Json): PatchOpError | undefined {
    const old = resolve(this.doc.value, path);
    if (old === undefined) return { reason: "path_not_found", path: path.toString() };
    const refused = this.admit(path, value);
    if (refused) return refused;
    setAt(this.doc, path, value);
    this.release(path, old);
    this.applied.undoLog.push({ kind: "restore", path, old });
    this.applied.writes.push(path);
    return undefined;
  }

  incr(path: Pointer, delta: number): PatchOpError | undefined {
    const current = resolve(this.doc.value, path);
    if (current === undefined) return this.add(path, delta);
    if (typeof current !== "number") return { reason: "not_a_number", path: path.toString() };
    // JS numbers are doubles: sums stay exact up to 2^53, where the engine's
    // stay exact up to 2^63. Counters past 2^53 are out of a browser's reach.
    const sum = current + delta;
    if (!Number.isFinite(sum)) return { reason: "number_overflow", path: path.toString() };
    return this.replace(path, sum);
  }
}

/** The value at `pointer`, or `undefined` when there is none. */
export function resolve(doc: Json, pointer: Pointer): Json | undefined {
  const tokens = pointer.tokens;
  let node: Json | undefined = doc;
  // An indexed loop: iterating a parsed pointer's frozen tokens with `for-of` is slower in V8.
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i] as string;
    if (Array.isArray(node)) {
      const index = parseArrayIndex(token);
      node = index === undefined ? undefined : node[index];
    } else if (isObject(node)) {
      node = getMember(node, token);
    } else {
      return undefined;
    }
    if (node === undefined) return undefined;
  }
  return node;
}

function parentOf(path: Pointer): Pointer {
  return path.parent() ?? Pointer.root;
}

/** Overwrites an existing location (the caller checked it exists). */
function setAt(doc: DocBox, path: Pointer, value: Json): void {
  const last = path.last();
  if (last === undefined) {
    doc.value = value;
    return;
  }
  const parent = resolve(doc.value, parentOf(path));
  if (Array.isArray(parent)) parent[parseArrayIndex(last) as number] = value;
  else if (isObject(parent)) setMember(parent, last, value);
  else throw new Error("bug: setAt on a missing location");
}

function undoAll(doc: DocBox, undo: readonly Undo[]): void {
  for (let i = undo.length - 1; i >= 0; i--) {
    const step = undo[i] as Undo;
    let done = false;
    if (step.kind === "restore") {
      if (step.path.isRoot) {
        doc.value = step.old;
        done = true;
      } else if (resolve(doc.value, step.path) !== undefined) {
        setAt(doc, step.path, step.old);
        done = true;
      }
    } else {
      const last = step.path.last() ?? "";
      const parent = resolve(doc.value, parentOf(step.path));
      if (Array.isArray(parent)) {
        const index = parseArrayIndex(last);
        if (step.kind === "remove" && index !== undefined && index < parent.length) {
          parent.splice(index, 1);
          done = true;
        } else if (step.kind === "insert" && index !== undefined && index <= parent.length) {
          parent.splice(index, 0, step.value);
          done = true;
        }
      } else if (isObject(parent)) {
        if (step.kind === "remove") {
          done = hasMember(parent, last);
          deleteMember(parent, last);
        } else {
          done = !hasMember(parent, last);
          setMember(parent, last, step.value);
        }
      }
    }
    // The undo log is ours: a step that cannot be replayed is a bug.
    if (!done) throw new Error("bug: undo log out of step with the document");
  }
}

/** Nesting depth of a value: 0 for a scalar, 1 for a flat array or object. */
export function valueDepth(value: Json): number {
  if (Array.isArray(value)) {
    let max = 0;
    for (const item of value) max = Math.max(max, valueDepth(item));
    return 1 + max;
  }
  if (isObject(value)) {
    let max = 0;
    for (const key of Object.keys(value)) max = Math.max(max, valueDepth(value[key] as Json));
    return 1 + max;
  }
  return 0;
}

/**
 * Approximate encoded size of `value` in bytes, walking at most until the
 * count passes `budgetBytes` (then any number over the budget is returned),
 * exactly as the engine counts it.
 */
export function encodedSizeEstimate(value: Json, budgetBytes: number): number {
  // Most writes replace a scalar: size it without allocating a stack.
  if (value === null || typeof value !== "object") return scalarSizeEstimate(value);
  let total = 0;
  const stack: Json[] = [value];
  while (stack.length > 0) {
    const node = stack.pop() as Json;
    if (node === null || typeof node !== "object") total += scalarSizeEstimate(node);
    else if (Array.isArray(node)) {
      for (const item of node) stack.push(item);
      total += 2 + node.length;
    } else {
      for (const key of Object.keys(node)) {
        total += utf8Length(key) + 4;
        stack.push(node[key] as Json);
      }
      total += 2;
    }
    if (total > budgetBytes) return total;
  }
  return total;
}

/** `encodedSizeEstimate` of a scalar. */
function scalarSizeEstimate(value: null | boolean | number | string): number {
  if (typeof value === "number") return 8;
  if (typeof value === "string") return utf8Length(value) + 2;
  return 5;
}

// The client-side replica: a copy of one document, the transactions this
// client has in flight, and the transaction runner. Sans-IO, and a faithful
// port of engine/src/replica.rs: the client feeds it server messages and
// sends what it hands back.
//
// ## The optimistic view
// The replica keeps one value, the *view*: the confirmed document at
// `version` with every pending transaction's patch applied on top, in
// submission order. Each pending transaction keeps the undo log of its local
// application, so the confirmed state is recovered by undoing the pending
// patches (newest first) — no second copy of the document is kept. A remote
// change is applied by undoing the pending patches, applying the change and
// re-applying the pending patches ("rebase"); a pending patch that no longer
// applies stays pending but invisible (the server will reject it). A change
// that touches nothing the pending patches touch is applied over them
// instead, which leaves the same view for less work (`#applyOverPending`).
//
// ## Running a transaction
// `Replica.run` executes a function against the view, recording the pointers
// it reads (except those inside locations it overwrote whole first) and the
// ops it writes; reads see the transaction's own earlier writes. Its base is
// the confirmed version. A transaction that read a location some pending
// transaction wrote would be validated against state the server has not
// committed, so it is not submitted: the run is undone and reported as
// `blocked`, to be re-run once the pending transactions resolve.

import { cloneJson, isObject, toJson, type Json } from "./json.js";
import {
  Applied,
  applyPatch,
  DEFAULT_LIMITS,
  encodedSizeEstimate,
  parsePatchOp,
  PatchError,
  resolve,
  type DocBox,
  type Limits,
  type Patch,
  type PatchOp,
} from "./patch.js";
import { Pointer, type Path } from "./pointer.js";
import type { Change, Rejection, Transaction } from "./protocol.js";

/** Why the replica cannot take a server message; the client then reopens the document for a snapshot. */
export type ReplicaErrorKind =
  | { kind: "gap"; held: number; got: number }
  | { kind: "wrong_document"; held: string; got: string }
  | { kind: "diverged"; version: number; error: unknown }
  | { kind: "unknown_commit"; txId: string; version: number };

export class ReplicaError extends Error {
  override name = "ReplicaError";
  constructor(readonly detail: ReplicaErrorKind) {
    super(describeReplicaError(detail));
  }
}

function describeReplicaError(detail: ReplicaErrorKind): string {
  switch (detail.kind) {
    case "gap":
      return `change ${detail.got} does not follow ${detail.held}: a change is missing`;
    case "wrong_document":
      return `change for ${detail.got} delivered to the replica of ${detail.held}`;
    case "diverged":
      return `change ${detail.version} does not apply to the replica: ${String((detail.error as Error)?.message ?? detail.error)}`;
    case "unknown_commit":
      return `committed ${detail.version} for unknown transaction ${detail.txId}`;
  }
}

/** Thrown by `tx.retry()`: abandon this run; run again once something read changes. */
export class RetrySignal extends Error {
  override name = "RetrySignal";
  constructor() {
    super("transaction called retry()");
  }
}

/** What became of one run of a transaction function. */
export type RunOutcome<T> =
  /** Nothing was written: the result stands locally, nothing to send. */
  | { kind: "read_only"; value: T; afterCommit: (() => void)[] }
  /** Writes were made and are now pending in the view: send `tx`. */
  | { kind: "submit"; value: T; tx: Transaction; afterCommit: (() => void)[] }
  /** `retry()` was called: run again after a change overlapping `reads`. */
  | { kind: "retry"; reads: Pointer[] }
  /** The run read what a pending transaction wrote: run again once those resolve. */
  | { kind: "blocked"; pendingTxIds: string[] }
  /** A write failed to apply to the view; nothing is pending. */
  | { kind: "patch"; error: PatchError }
  /** The function threw; nothing is pending. */
  | { kind: "failed"; error: unknown };

/** What a server message did to the replica. */
export interface ChangeEffect {
  /** Locations the confirmed state changed at (for STM retry wake-ups). */
  writes: Pointer[];
  /** One of this replica's pending transactions that the change committed. */
  committed?: string;
  /**
   * True when the view did not change: our own oldest transaction was
   * confirmed, and the view already held its writes. (TypeScript only: lets
   * the client skip a re-render.)
   */
  viewUnchanged?: boolean;
  /**
   * When the pending patches were undone and applied again on the new state:
   * their writes before and after, where the view may have changed too
   * (applied again, a pending patch may show, hide, or write elsewhere: an
   * insertion that shifted an array may now append to it). (TypeScript only.)
   */
  rebased?: Pointer[];
}

interface Pending {
  tx: Transaction;
  /** Undo logs of the local application, oldest first; empty when the patch no longer applies. */
  undo: Applied[];
  /** Locations the patch wrote locally. */
  writes: Pointer[];
  /** Whether the patch is in the view right now. */
  visible: boolean;
  /** Whether every op of the patch reads and writes only its own location (see `isLocalOp`). */
  localOnly: boolean;
}

/**
 * The document a replica holds, shared with the transaction running on it,
 * and its size estimate for the document-size limit. Measuring walks the
 * whole document (milliseconds for a board of thousands of shapes, most of a
 * late join), so a snapshot is measured only when a patch first needs the
 * limit, and the estimate is kept up to date from then on. (TypeScript only:
 * engine/src/replica.rs measures every snapshot.)
 */
class View {
  readonly box: DocBox;
  readonly limits: Limits;
  /** The same limits without a document-size limit, for server changes while unmeasured. */
  readonly #limitsUnsized: Limits;
  /** `encodedSizeEstimate` of the document; `undefined` until first needed. */
  #sizeBytes: number | undefined;
  /**
   * Counts changes to the value (TypeScript only): lets a document handle
   * keep its immutable copy of the view until the view changes, whatever
   * changed it.
   */
  revision = 0;

  constructor(value: Json, limits: Limits) {
    this.box = { value };
    this.limits = limits;
    this.#limitsUnsized = { ...limits, docSizeBytesMax: Infinity };
  }

  /** Replaces the document (a snapshot); it is measured again only when needed. */
  reset(value: Json): void {
    this.box.value = value;
    this.#sizeBytes = undefined;
    this.revision++;
  }

  /** Applies `patch` under every limit, measuring the document first if it never was. Throws `PatchError`. */
  apply(patch: readonly PatchOp[]): Applied {
    const sizeBytes = (this.#sizeBytes ??= encodedSizeEstimate(this.box.value, Infinity));
    const applied = applyPatch(this.box, sizeBytes, patch, this.limits);
    this.#sizeBytes = Math.max(0, sizeBytes + applied.sizeDeltaBytes);
    this.revision++;
    return applied;
  }

  /**
   * Applies a change the server committed. While the document is unmeasured,
   * its size limit is left to the server, which enforced it before
   * committing: measuring here would give up the laziness for every replica
   * that only watches, as it gets nothing but server changes. Once measured,
   * the change is checked like any patch. (Unmeasured, the result's
   * `sizeDeltaBytes` means nothing; a committed change is never undone.)
   */
  applyCommitted(patch: readonly PatchOp[]): Applied {
    if (this.#sizeBytes !== undefined) return this.apply(patch);
    const applied = applyPatch(this.box, 0, patch, this.#limitsUnsized);
    this.revision++;
    return applied;
  }

  /**
   * Applies a change the server committed on top of the pending patches
   * (see `Replica.#applyOverPending`). The size limit is checked against the
   * view, pending patches included, only once measured; `undefined`, with
   * nothing changed, when the patch fails or the view would outgrow it.
   */
  applyOverPending(patch: readonly PatchOp[]): Applied | undefined {
    const sizeBytes = this.#sizeBytes;
    let applied: Applied;
    try {
      applied = applyPatch(this.box, sizeBytes ?? 0, patch, this.#limitsUnsized);
    } catch (error) {
      if (error instanceof PatchError) return undefined;
      throw error;
    }
    this.revision++;
    if (sizeBytes === undefined) return applied;
    const grown = Math.max(0, sizeBytes + applied.sizeDeltaBytes);
    if (grown > this.limits.docSizeBytesMax) {
      applied.undo(this.box);
      return undefined;
    }
    this.#sizeBytes = grown;
    return applied;
  }

  /** Undoes applications made through `apply`, newest first. */
  undo(applied: readonly Applied[]): void {
    for (let i = applied.length - 1; i >= 0; i--) {
      const one = applied[i] as Applied;
      one.undo(this.box);
      this.revision++;
      if (this.#sizeBytes !== undefined) this.#sizeBytes = Math.max(0, this.#sizeBytes - one.sizeDeltaBytes);
    }
  }
}

/** A client's copy of one document. */
export class Replica {
  readonly doc: string;
  #version: number;
  readonly #view: View;
  readonly #pending: Pending[] = [];

  /** A replica holding `value` at `version` (from a snapshot). */
  constructor(doc: string, value: Json, version: number, limits: Limits = DEFAULT_LIMITS) {
    this.doc = doc;
    this.#version = version;
    this.#view = new View(value, limits);
  }

  /** The confirmed version: every change up to it has been applied. */
  get version(): number {
    return this.#version;
  }

  /** Changes whenever the view changes (TypeScript only; see `View.revision`). */
  get revision(): number {
    return this.#view.revision;
  }

  /** The optimistic view: confirmed state plus pending writes. Live: do not mutate it. */
  get view(): Json {
    return this.#view.box.value;
  }

  /** The confirmed state without pending writes (a copy; for tests and diagnostics). */
  confirmed(): Json {
    this.#hidePending();
    const confirmed = cloneJson(this.#view.box.value);
    this.#showPending();
    return confirmed;
  }

  /** Transactions sent and not yet resolved, oldest first. */
  pending(): Transaction[] {
    return this.#pending.map((p) => p.tx);
  }

  get hasPending(): boolean {
    return this.#pending.length > 0;
  }

  get pendingCount(): number {
    return this.#pending.length;
  }

  isPending(txId: string): boolean {
    return this.#pending.some((p) => p.tx.tx_id === txId);
  }

  /** Whether a pending transaction's patch is in the view (false once it no longer applies). */
  isVisible(txId: string): boolean {
    return this.#pending.some((p) => p.tx.tx_id === txId && p.visible);
  }

  /** Locations the pending transaction `txId` wrote in the view (under the array rule); empty when not pending. */
  pendingWrites(txId?: string): Pointer[] {
    const writes: Pointer[] = [];
    for (const pending of this.#pending) {
      if (txId === undefined || pending.tx.tx_id === txId) writes.push(...pending.writes);
    }
    return writes;
  }

  /** Runs `fn` as transaction `txId` against the view. */
  run<T>(txId: string, fn: (tx: Tx) => T): RunOutcome<T> {
    const pendingWrites = this.pendingWrites();
    const tx = new Tx(this.#view);
    let result: { ok: true; value: T } | { ok: false; error: unknown };
    try {
      result = { ok: true, value: fn(tx) };
    } catch (error) {
      result = { ok: false, error };
    }
    const { reads, writes, undo, afterCommit } = tx.finish();
    let outcome: RunOutcome<T>;
    if (!result.ok) {
      const error = result.error;
      if (error instanceof RetrySignal) outcome = { kind: "retry", reads };
      else if (error instanceof PatchError) outcome = { kind: "patch", error };
      else outcome = { kind: "failed", error };
    } else if (writes.length === 0) {
      // A read-only run may read pending writes: that is the optimistic view.
      return { kind: "read_only", value: result.value, afterCommit };
    } else if (reads.some((r) => pendingWrites.some((w) => w.overlaps(r)))) {
      const pendingTxIds = this.#pending.map((p) => p.tx.tx_id);
      outcome = { kind: "blocked", pendingTxIds };
    } else {
      const localWrites: Pointer[] = [];
      for (const applied of undo) localWrites.push(...applied.writes);
      const transaction: Transaction = {
        doc: this.doc,
        tx_id: txId,
        base: this.#version,
        reads: reads.map(String),
        writes,
      };
      this.#pending.push({ tx: transaction, undo, writes: localWrites, visible: true, localOnly: writes.every(isLocalOp) });
      return { kind: "submit", value: result.value, tx: transaction, afterCommit };
    }
    this.#view.undo(undo);
    return outcome;
  }

  /** Applies a change from the server's stream. Changes at or below the held version are duplicates and ignored. */
  applyChange(change: Change): ChangeEffect {
    if (change.doc !== this.doc) {
      throw new ReplicaError({ kind: "wrong_document", held: this.doc, got: change.doc });
    }
    if (change.version <= this.#version) {
      // A duplicate; but if it is one of ours still pending, the state we
      // hold already contains it, so it is settled (as replica.rs does).
      const index = this.#pending.findIndex((p) => p.tx.tx_id === change.tx_id);
      if (index < 0) return { writes: [] };
      return withRebase({ writes: [], committed: change.tx_id }, this.#drop(index));
    }
    if (change.version !== this.#version + 1) {
      throw new ReplicaError({ kind: "gap", held: this.#version, got: change.version });
    }
    const own = this.#pending.findIndex((p) => p.tx.tx_id === change.tx_id);
    if (own === 0 && (this.#pending[0] as Pending).visible) {
      // Our own oldest transaction: the server applied the same patch to the
      // same state, so the view already holds it in the right place.
      const done = this.#pending.shift() as Pending;
      this.#version = change.version;
      return { writes: done.writes, committed: change.tx_id, viewUnchanged: true };
    }
    if (own < 0 && this.#pending.length > 0) {
      let applied: Applied | undefined;
      try {
        applied = this.#applyOverPending(change.patch);
      } catch {
        // A malformed change (a bad pointer, an op that is not one): the
        // checks throw before anything is applied, and the rebase below
        // reports the change as diverged, as for any change that fails.
        applied = undefined;
      }
      if (applied !== undefined) {
        this.#version = change.version;
        return { writes: applied.writes };
      }
    }
    const pendingBefore = this.pendingWrites();
    this.#hidePending();
    if (own >= 0) this.#pending.splice(own, 1);
    let effect: ChangeEffect | undefined;
    let failure: unknown;
    try {
      const applied = this.#view.applyCommitted(change.patch);
      this.#version = change.version;
      effect = { writes: applied.writes };
      if (own >= 0) effect.committed = change.tx_id;
    } catch (error) {
      failure = error;
    }
    this.#showPending();
    if (effect === undefined) throw new ReplicaError({ kind: "diverged", version: change.version, error: failure });
    const rebased = [...pendingBefore, ...this.pendingWrites()];
    if (rebased.length > 0) effect.rebased = rebased;
    return effect;
  }

  /** The server committed our transaction `txId` at `version`, sent instead of the change itself. */
  onCommitted(txId: string, version: number): ChangeEffect {
    const index = this.#pending.findIndex((p) => p.tx.tx_id === txId);
    if (index < 0) {
      // Already applied through the change stream (a resubmission after a
      // reconnect), or a write-less commit we no longer hold.
      if (version <= this.#version) return { writes: [] };
      throw new ReplicaError({ kind: "unknown_commit", txId, version });
    }
    const pending = this.#pending[index] as Pending;
    if (version === this.#version && pending.writes.length === 0) {
      // Only `test` ops: committed without a new version.
      return withRebase({ writes: [] }, this.#drop(index));
    }
    if (version <= this.#version) {
      // A snapshot taken at or after `version` (a resync, a reconnect) already
      // holds this commit: drop it from the pending set without applying it
      // again. (engine/src/replica.rs hands this to `apply_change`, which
      // ignores a change at or below the held version and so leaves the
      // transaction pending and its writes shown twice.)
      return withRebase({ writes: pending.writes, committed: txId }, this.#drop(index));
    }
    const tx = pending.tx;
    return this.applyChange({ doc: tx.doc, version, tx_id: txId, patch: tx.writes });
  }

  /**
   * The server rejected `txId`: drop it from the view and hand it back so the
   * caller can re-run its function (for a conflict, the changes that caused
   * it have already been applied). `undefined` when it is not pending.
   */
  onRejected(txId: string, rejection?: Rejection): Transaction | undefined {
    return this.reject(txId, rejection)?.tx;
  }

  /**
   * Takes a pending transaction out of the view without applying it: one the
   * server never accepted (refused before validation, or never sent).
   */
  withdraw(txId: string): Transaction | undefined {
    return this.reject(txId)?.tx;
  }

  /**
   * `onRejected`, also returning where the view may have changed: the
   * pending writes before and after (the others are rebased, which may show,
   * hide or move them). (TypeScript only: for the client's change events.)
   */
  reject(txId: string, _rejection?: Rejection): { tx: Transaction; writes: Pointer[] } | undefined {
    const index = this.#pending.findIndex((p) => p.tx.tx_id === txId);
    if (index < 0) return undefined;
    const { tx } = this.#pending[index] as Pending;
    return { tx, writes: this.#drop(index) };
  }

  /**
   * Takes pending transaction `index` out of the view and the pending set,
   * rebasing the others; returns the pending writes before and after.
   */
  #drop(index: number): Pointer[] {
    const before = this.pendingWrites();
    this.#hidePending();
    this.#pending.splice(index, 1);
    this.#showPending();
    return [...before, ...this.pendingWrites()];
  }

  /** Replaces the confirmed state with a snapshot; pending transactions stay pending, re-applied on top. */
  reset(value: Json, version: number): void {
    this.#hidePending();
    this.#view.reset(value);
    this.#version = version;
    this.#showPending();
  }

  /**
   * Applies a remote change on top of the pending patches instead of under
   * them, when that gives the view a rebase would give: every pending patch
   * is in the view and made only of `add`, `remove`, `replace` and `incr`,
   * and every op of the change is one of those on a member of an object,
   * at a location no pending write overlaps (neither is a prefix of the
   * other). The change then neither reads nor moves what the pending patches
   * wrote, nor they what it writes. (An op whose parent is an array is left
   * to the rebase: an append lands at the array's length, which a pending
   * append has moved.) Returns `undefined`, having changed nothing, when
   * that does not hold, when the change fails (the rebase then reports it),
   * or when the view would outgrow the document-size limit (the rebase then
   * hides a pending patch instead). (TypeScript only: a rebase costs every
   * remote change an undo and a re-application of each pending patch, which
   * a browser dragging a shape pays for everyone else's moves.)
   */
  #applyOverPending(patch: readonly PatchOp[]): Applied | undefined {
    for (const pending of this.#pending) {
      if (!pending.visible || !pending.localOnly) return undefined;
    }
    const root = this.#view.box.value;
    for (const op of patch) {
      if (!isLocalOp(op)) return undefined;
      const path = Pointer.parse(op.path);
      const parent = path.parent();
      if (parent === undefined || !isObject(resolve(root, parent))) return undefined;
      for (const pending of this.#pending) {
        for (const written of pending.writes) if (written.overlaps(path)) return undefined;
      }
    }
    return this.#view.applyOverPending(patch);
  }

  /** Undoes every visible pending patch, newest first: the view becomes the confirmed state. */
  #hidePending(): void {
    for (let i = this.#pending.length - 1; i >= 0; i--) {
      const pending = this.#pending[i] as Pending;
      this.#view.undo(pending.undo);
      pending.undo = [];
      pending.visible = false;
    }
  }

  /** Re-applies every pending patch, oldest first, on the confirmed state. */
  #showPending(): void {
    for (const pending of this.#pending) {
      try {
        const applied = this.#view.apply(pending.tx.writes);
        pending.writes = applied.writes.slice();
        pending.undo = [applied];
        pending.visible = true;
      } catch (error) {
        if (!(error instanceof PatchError)) throw error;
        pending.visible = false;
      }
    }
  }
}

function withRebase(effect: ChangeEffect, rebased: Pointer[]): ChangeEffect {
  if (rebased.length > 0) effect.rebased = rebased;
  return effect;
}

/** Ops that read and write only their own location (`replace` and `incr` read it too). */
function isLocalOp(op: PatchOp): boolean {
  return op.op === "add" || op.op === "remove" || op.op === "replace" || op.op === "incr";
}

/** A running transaction: reads and writes go through it. */
export class Tx {
  readonly #view: View;
  readonly #reads: Pointer[] = [];
  readonly #writes: PatchOp[] = [];
  readonly #undo: Applied[] = [];
  /** Locations this transaction overwrote whole: reads inside them see only its own writes and are not recorded. */
  readonly #covered: Pointer[] = [];
  readonly #afterCommit: (() => void)[] = [];
  #finished = false;

  /** @internal */
  constructor(view: View) {
    this.#view = view;
  }

  /** @internal Ends the run and hands its records to the replica. */
  finish(): { reads: Pointer[]; writes: Patch; undo: Applied[]; afterCommit: (() => void)[] } {
    this.#finished = true;
    return { reads: this.#reads, writes: this.#writes, undo: this.#undo, afterCommit: this.#afterCommit };
  }

  #live(): void {
    if (this.#finished) throw new Error("this transaction has finished: use the tx only inside its function");
  }

  /** Reads the value at `path` (a copy; `undefined` when absent), recording the read. */
  get<T extends Json = Json>(path: Path): T | undefined {
    this.#live();
    const pointer = Pointer.from(path);
    this.#recordRead(pointer);
    const value = resolve(this.#view.box.value, pointer);
    return value === undefined ? undefined : (cloneJson(value) as T);
  }

  /** Whether something exists at `path` (a recorded read, like `get`). */
  has(path: Path): boolean {
    return this.get(path) !== undefined;
  }

  /** Reads the number at `path`, if it is one. */
  getNumber(path: Path): number | undefined {
    const value = this.get(path);
    return typeof value === "number" ? value : undefined;
  }

  #recordRead(pointer: Pointer): void {
    const own = this.#covered.some((c) => c.isPrefixOf(pointer));
    if (!own && !this.#reads.some((r) => r.equals(pointer))) this.#reads.push(pointer);
  }

  /** Sets the value at `path`: an object member is added or replaced, an existing array element replaced. Reads nothing. */
  set(path: Path, value: unknown): void {
    const pointer = Pointer.from(path);
    const op = this.#parentIsArray(pointer) ? "replace" : "add";
    this.write({ op, path: pointer.toString(), value: toJson(value) });
  }

  /** Removes the value at `path`. */
  remove(path: Path): void {
    this.write({ op: "remove", path: Pointer.from(path).toString() });
  }

  /** Inserts into an array at `path` (shifting later elements). */
  insert(path: Path, value: unknown): void {
    this.write({ op: "add", path: Pointer.from(path).toString(), value: toJson(value) });
  }

  /** Appends to the array at `array`. Reads nothing, so concurrent appends never conflict. */
  push(array: Path, value: unknown): void {
    this.write({ op: "add", path: Pointer.from(array).child("-").toString(), value: toJson(value) });
  }

  /** Adds `delta` to the number at `path` (0 when absent). Reads nothing, so concurrent increments never conflict. */
  increment(path: Path, delta = 1): void {
    this.write({ op: "incr", path: Pointer.from(path).toString(), value: delta });
  }

  /** STM retry: abandon this run until something it read changes. */
  retry(): never {
    throw new RetrySignal();
  }

  /**
   * Runs `first`; if it calls `retry`, undoes its writes and runs `second`
   * instead. Reads of both stay recorded, so a retry of the whole waits for a
   * change to either.
   */
  orElse<T>(first: (tx: Tx) => T, second: (tx: Tx) => T): T {
    try {
      return this.nested(first);
    } catch (error) {
      if (error instanceof RetrySignal) return this.nested(second);
      throw error;
    }
  }

  /**
   * Runs `fn` as a nested transaction: on success its reads and writes merge
   * into this one; on failure its writes are undone (its reads stay) and the
   * error goes on to the parent.
   */
  nested<T>(fn: (tx: Tx) => T): T {
    this.#live();
    const marks = [this.#writes.length, this.#undo.length, this.#covered.length, this.#afterCommit.length] as const;
    try {
      return fn(this);
    } catch (error) {
      this.#view.undo(this.#undo.splice(marks[1]));
      this.#writes.length = marks[0];
      this.#covered.length = marks[2];
      this.#afterCommit.length = marks[3];
      throw error;
    }
  }

  /** Registers a side effect that runs exactly once, after this transaction commits (or at once for a read-only one). */
  afterCommit(effect: () => void): void {
    this.#live();
    this.#afterCommit.push(effect);
  }

  /**
   * Applies any patch op as part of this transaction. A `test` op is not
   * recorded as a read: the server checks it against the value current at
   * commit time, which is what it asserts.
   */
  write(raw: PatchOp): void {
    this.#live();
    const op = parsePatchOp(raw);
    let covers: Pointer | undefined;
    if (op.op === "replace") covers = Pointer.parse(op.path);
    else if (op.op === "add" || op.op === "remove") {
      const path = Pointer.parse(op.path);
      if (!this.#parentIsArray(path)) covers = path;
    }
    let applied: Applied;
    try {
      applied = this.#view.apply([op]);
    } catch (error) {
      if (error instanceof PatchError) throw new PatchError(this.#writes.length, error.error);
      throw error;
    }
    this.#undo.push(applied);
    this.#writes.push(op);
    if (covers) this.#covered.push(covers);
  }

  #parentIsArray(pointer: Pointer): boolean {
    const parent = pointer.parent();
    return parent !== undefined && Array.isArray(resolve(this.#view.box.value, parent));
  }
}


// One open document at the client: `DocumentHandle`, the application's view
// of a replica the machine keeps. The machine decides when a transaction
// function runs (its `run` event); the handle runs it on the replica
// (`beginRun`/`endRun`) and resolves the `transact` promise when the machine
// settles the transaction, mapping each settlement to the client's errors.
// Re-runs after a rejection wait out the document's contention pause, shared
// by all of this client's transactions on it (session/pacing.ts), not a
// backoff of each transaction's own.

import type { Client } from "./client.js";
import type { Shell } from "./connection.js";
import { ConnectionError, rejectionError, ServerError, TransactionOutcomeUnknown, type TransactionRejected } from "./errors.js";
import { Emitter } from "./events.js";
import { cloneJson, deepFreeze, toJson, type Json } from "./json.js";
import { resolve } from "./patch.js";
import { Pointer, type Path } from "./pointer.js";
import type { PresenceEvent, Rejection, Transaction } from "./protocol.js";
import type { RunOutcome, Tx } from "./replica.js";
import type { RunReport, SessionEvent, Settlement } from "./session/index.js";

export interface TransactOptions {
  /** Most runs that may be rejected before giving up (default 10). */
  attempts?: number;
  /** Abandons a transaction waiting to run: in `retry()`, for pending transactions, for the document's first copy or its contention pause. */
  signal?: AbortSignal;
}

/** Default of `TransactOptions.attempts`. */
export const TRANSACT_ATTEMPTS_DEFAULT = 10;

export interface ChangeEvent {
  /** `local`: this client's own optimistic write; `remote`: a change from the server; `snapshot`: a fresh copy; `rollback`: a pending write dropped. */
  origin: "local" | "remote" | "snapshot" | "rollback";
  version: number;
  /** Locations that changed (root for a snapshot). */
  writes: string[];
}

export interface PresenceChange {
  session: string;
  event: PresenceEvent;
  state: Json;
}

export interface DocumentEvents {
  /** The view changed. */
  change: ChangeEvent;
  /** The number of unconfirmed transactions changed. */
  pending: number;
  /** Another session's presence on this document. */
  presence: PresenceChange;
  /** Whether the document is live on the current session. */
  ready: boolean;
  /**
   * An error the server reported for this document (an `AccessDeniedError`
   * when it refused to open it), or a transaction on it refused by the
   * server's rules (`ForbiddenError`, `InvalidError`, `VetoedError`; their
   * `transact` promises reject with the same error).
   */
  error: ServerError | TransactionRejected;
}

/** What the handle needs of its client besides the shell. */
export interface DocumentShell extends Shell {
  /** The current session's id (its own presence is not reported). */
  readonly sessionId: string | undefined;
  /** The handle is over: a new `document()` call makes a new one. */
  forget(doc: string): void;
}

/** One `transact` call the machine runs. */
interface Transaction_ {
  fn: (tx: Tx) => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  /** The last run's outcome: its value and `afterCommit` effects stand if it commits. */
  last: RunOutcome<unknown> | undefined;
  /** The promise was settled early (its signal aborted): the next run reports `failed`. */
  abandoned: boolean;
}

/** Whether a rejection is a refusal of the server's rules (access, schema, guard), which the document's `error` event reports too. */
function isRefusal(rejection: Rejection): boolean {
  return rejection.reason === "forbidden" || rejection.reason === "invalid" || rejection.reason === "vetoed";
}

/** One open document: its replica, transactions and presence. */
export class DocumentHandle extends Emitter<DocumentEvents> {
  readonly id: string;
  readonly client: Client;
  readonly #shell: DocumentShell;
  /** Live on the current session, as last reported (`ready`). */
  #live = false;
  #closed: Error | undefined;
  #firstReady: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void };
  /** The view's immutable copy, and the replica revision it is a copy of. */
  #snapshot: Json | undefined;
  #snapshotRevision = -1;
  /** The replica revision the last change event reported. */
  #reportedRevision = -1;
  #lastPending = 0;
  readonly #transactions = new Map<number, Transaction_>();
  #presenceState: Json = null;
  readonly #others = new Map<string, Json>();

  /** @internal */
  constructor(client: Client, shell: DocumentShell, id: string) {
    super();
    this.client = client;
    this.#shell = shell;
    this.id = id;
    let resolveReady!: () => void;
    let rejectReady!: (e: Error) => void;
    const promise = new Promise<void>((res, rej) => {
      resolveReady = res;
      rejectReady = rej;
    });
    promise.catch(() => {});
    this.#firstReady = { promise, resolve: resolveReady, reject: rejectReady };
  }

  get #replica() {
    return this.#shell.machine.replica(this.id);
  }

  /** Resolves once the document is first live (its first copy has arrived and the server has it open for us). */
  whenReady(): Promise<void> {
    return this.#firstReady.promise;
  }

  /** Whether the document is live on the current session (false while offline or resyncing). */
  get live(): boolean {
    return this.#live;
  }

  /** The confirmed version held. */
  get version(): number {
    return this.#replica?.version ?? 0;
  }

  /** The optimistic view (confirmed state plus pending writes), as an immutable snapshot. */
  get value(): Json {
    const replica = this.#replica;
    const revision = replica?.revision ?? -1;
    if (this.#snapshot === undefined || revision !== this.#snapshotRevision) {
      this.#snapshot = deepFreeze(cloneJson(replica?.view ?? {}));
      this.#snapshotRevision = revision;
    }
    return this.#snapshot;
  }

  /** The value at `path` in the optimistic view (a copy), `undefined` when absent. Records nothing. */
  get<T extends Json = Json>(path: Path): T | undefined {
    const replica = this.#replica;
    if (!replica) return undefined;
    const value = resolve(replica.view, Pointer.from(path));
    return value === undefined ? undefined : (cloneJson(value) as T);
  }

  /** Transactions sent and not yet confirmed or rejected. */
  get pendingCount(): number {
    return this.#replica?.pendingCount ?? 0;
  }

  /** The pending transactions, oldest first. */
  pending(): Transaction[] {
    return this.#replica?.pending() ?? [];
  }

  /** The confirmed state without pending writes (a copy). */
  confirmed(): Json {
    return this.#replica?.confirmed() ?? {};
  }

  /** Other sessions' presence states on this document. */
  get presence(): ReadonlyMap<string, Json> {
    return this.#others;
  }

  /** This session's presence state (null when none). */
  get myPresence(): Json {
    return this.#presenceState;
  }

  /** Sets (or with null, clears) this session's presence; re-sent after reconnects. */
  setPresence(state: unknown): void {
    if (this.#closed) return;
    this.#presenceState = state === undefined ? null : toJson(state);
    this.#shell.machine.setPresence(this.id, this.#presenceState);
    this.#shell.pump();
  }

  /**
   * Runs `fn` as a transaction on the optimistic view, submits its writes and
   * resolves with its result once committed (at once if it wrote nothing).
   * On a rejection that re-running may cure it re-runs `fn` on the updated
   * replica, up to `attempts` times, each re-run after the document's
   * contention pause (shared by this client's transactions on the document:
   * it grows with rejections and shrinks with commits). `tx.retry()` waits
   * for a change to what the run read; a run that read another pending
   * transaction's writes waits for it to resolve. `fn` must be synchronous
   * and free of side effects: put them in `tx.afterCommit`. A transaction
   * resubmitted after a reconnect or reload whose id the server no longer
   * remembers fails with `TransactionOutcomeUnknown` instead of being re-run
   * (it may have committed), which the application can tell apart from
   * `TransactionRejected` (a rejection re-running cannot cure, or the last of
   * `attempts`).
   */
  transact<T>(fn: (tx: Tx) => T, options: TransactOptions = {}): Promise<T> {
    if (this.#closed) return Promise.reject(this.#closed);
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const attempts = Math.max(1, options.attempts ?? TRANSACT_ATTEMPTS_DEFAULT);
    return new Promise<T>((resolvePromise, rejectPromise) => {
      const entry: Transaction_ = { fn, resolve: resolvePromise as (value: unknown) => void, reject: rejectPromise, last: undefined, abandoned: false };
      const key = this.#shell.machine.transact(this.id, attempts, this.#shell.now());
      this.#transactions.set(key, entry);
      this.client._ownTransaction(key, this);
      if (signal) {
        const onAbort = () => {
          // Only a transaction waiting to run is abandoned: one awaiting the
          // server's answer may commit, and is left to end as it will.
          if (!this.#transactions.has(key) || this.#shell.machine.isSubmitted(key)) return;
          entry.abandoned = true;
          this.#transactions.delete(key);
          rejectPromise(signal.reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
        const done = () => signal.removeEventListener("abort", onAbort);
        entry.resolve = (value) => (done(), resolvePromise(value as T));
        entry.reject = (error) => (done(), rejectPromise(error));
      }
      this.#shell.pump();
    });
  }

  /** Stops receiving the document; pending transactions are abandoned. */
  close(): void {
    if (this.#closed) return;
    this.#closed = new ConnectionError(`document ${this.id} closed`);
    this.#shell.forget(this.id);
    this.#shell.machine.close(this.id);
    this.#shell.pump();
    this._closed(this.#closed);
  }

  // ---- called by the client ----

  /** @internal A machine event about this document. */
  _onEvent(event: SessionEvent): void {
    switch (event.kind) {
      case "opened":
        this.#firstReady.resolve();
        this._sweep();
        return;
      case "open_refused": {
        // The session may not read this document: the handle ends with the
        // error (`whenReady()` and waiting transactions reject with it);
        // opening it again asks again.
        const error = this.#shell.errorFor(event.code, event.message, this.id);
        this.#closed ??= error;
        this.#shell.forget(this.id);
        this.emit("error", error);
        this._closed(error);
        return;
      }
      case "changed":
        if (!event.viewUnchanged) this.#changed("remote", event.viewWrites.map(String));
        else this.#reportedRevision = this.#replica?.revision ?? -1;
        return;
      case "reset":
        this.#changed("snapshot", [""]);
        return;
      case "presence": {
        if (event.session === this.#shell.sessionId) return;
        if (event.event === "leave" || event.state === null) this.#others.delete(event.session);
        else this.#others.set(event.session, event.state);
        this.emit("presence", { session: event.session, event: event.event, state: event.state });
        return;
      }
      default:
        return;
    }
  }

  /** @internal The machine asks for a run of transaction `key`. */
  _run(key: number): void {
    const machine = this.#shell.machine;
    const begun = machine.beginRun(key);
    if (!begun) return;
    const now = this.#shell.now();
    const entry = this.#transactions.get(key);
    if (!entry || entry.abandoned) {
      machine.endRun(key, { kind: "failed" }, now);
      return;
    }
    const outcome = begun.replica.run(begun.txId, entry.fn);
    entry.last = outcome;
    machine.endRun(key, reportOf(outcome), now);
    if (outcome.kind === "submit" && begun.replica.isPending(begun.txId)) {
      this.#changed("local", begun.replica.pendingWrites(begun.txId).map(String));
    } else {
      // Nothing to report: the run's writes were undone (or refused).
      this.#reportedRevision = begun.replica.revision;
    }
  }

  /** @internal The machine settled transaction `key`. */
  _settled(key: number, settlement: Settlement): void {
    const entry = this.#transactions.get(key);
    if (!entry) return;
    this.#transactions.delete(key);
    const last = entry.last;
    switch (settlement.kind) {
      case "read_only":
      case "committed":
        if (last && (last.kind === "read_only" || last.kind === "submit")) {
          runEffects(last.afterCommit, this);
          entry.resolve(last.value);
        } else entry.resolve(undefined);
        return;
      case "aborted":
        entry.reject(last && (last.kind === "failed" || last.kind === "patch") ? last.error : new Error("the transaction was abandoned"));
        return;
      case "rejected": {
        const error = rejectionError(settlement.rejection, settlement.attempts);
        error.doc = this.id;
        error.txId = settlement.txId;
        if (isRefusal(settlement.rejection)) {
          // The server's rules refused it: never re-run; the application
          // hears of it on the document too, awaited or not.
          this.emit("error", error);
        }
        entry.reject(error);
        return;
      }
      case "rate_limited":
        entry.reject(new ServerError("rate_limited", `the server's rate limit dropped the transaction ${settlement.attempts} time(s)`, this.id));
        return;
      case "outcome_unknown":
        entry.reject(new TransactionOutcomeUnknown(settlement.txId, settlement.rejection));
        return;
      case "refused":
        entry.reject(this.#closed ?? this.#shell.errorFor(settlement.code, settlement.message, this.id));
        return;
      case "panicked":
      case "closed":
        entry.reject(this.#closed ?? new ConnectionError(`document ${this.id} closed`));
        return;
    }
  }

  /**
   * @internal After each step of the machine: reports what changed without
   * an event of its own: liveness (`ready`), the pending count, and a view
   * changed by something no change event reported (the first snapshot, a
   * pending write dropped, a commit a snapshot already held).
   */
  _sweep(origin: ChangeEvent["origin"] = "rollback"): void {
    if (this.#closed) return;
    // This runs after every message: one lookup of the replica serves it.
    const replica = this.#replica;
    if (replica && replica.revision !== this.#reportedRevision) {
      const first = this.#reportedRevision === -1;
      this.#changed(first ? "snapshot" : origin, first ? [""] : [], replica);
    }
    const live = this.#shell.machine.isOpen(this.id);
    if (live !== this.#live) {
      this.#live = live;
      this.emit("ready", live);
    }
    const pending = replica?.pendingCount ?? 0;
    if (pending !== this.#lastPending) {
      this.#lastPending = pending;
      this.emit("pending", pending);
    }
  }

  /**
   * @internal A pending write left the view, `writes` being where it may have
   * changed it (the pending writes before and after): reported at once, so
   * it comes before the re-run's own change.
   */
  _rolledBack(origin: ChangeEvent["origin"], writes: string[]): void {
    const replica = this.#replica;
    if (!replica || replica.revision === this.#reportedRevision) return;
    this.#changed(origin, writes);
  }

  /** @internal The session ended: presence belongs to sessions; the next one hears it again. */
  _disconnected(): void {
    for (const [session, state] of [...this.#others]) {
      this.#others.delete(session);
      this.emit("presence", { session, event: "leave", state });
    }
    this._sweep();
  }

  /** @internal The handle is over (closed, refused, or its client closed). */
  _closed(error: Error): void {
    this.#closed ??= error;
    if (this.#live) {
      this.#live = false;
      this.emit("ready", false);
    }
    this.#firstReady.reject(error);
    for (const [key, entry] of this.#transactions) {
      this.#transactions.delete(key);
      entry.reject(this.#closed);
    }
  }

  #changed(origin: ChangeEvent["origin"], writes: string[], replica = this.#replica): void {
    this.#reportedRevision = replica?.revision ?? -1;
    this.emit("change", { origin, version: replica?.version ?? 0, writes });
  }
}

/** What the machine needs to know of a run's outcome (Rust's `RunReport::of`). */
export function reportOf(outcome: RunOutcome<unknown>): RunReport {
  switch (outcome.kind) {
    case "read_only":
      return { kind: "read_only" };
    case "submit":
      return { kind: "submit", tx: outcome.tx };
    case "retry":
      return { kind: "retry", reads: outcome.reads };
    case "blocked":
      return { kind: "blocked" };
    case "patch":
    case "failed":
      return { kind: "failed" };
  }
}

function runEffects(effects: (() => void)[], emitter: Emitter<DocumentEvents>): void {
  for (const effect of effects) {
    try {
      effect();
    } catch (error) {
      emitter.onListenerError(error);
    }
  }
}

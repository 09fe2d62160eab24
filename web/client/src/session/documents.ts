// The replicas inside a `ClientSession` (engine/src/session/documents.rs):
// opening documents, running transactions, applying the server's changes and
// outcomes, and bringing a replica back in step after a reconnect, a resync
// or an error.
//
// Every transaction still pending in a replica is (re)sent after each
// `opened`; its outcome arrives as `committed`, `rejected`, a change in the
// stream carrying its id, or an `error` naming it, and each settles the
// waiting transaction at most once (it leaves `waiting` when answered).

import type { Json } from "../json.js";
import type { Patch } from "../patch.js";
import { Pointer } from "../pointer.js";
import { isRetryable, type Change, type ClientMessage, type ErrorCode, type Rejection, type Transaction } from "../protocol.js";
import { Replica, type ChangeEffect } from "../replica.js";
import { sortedKeys, type SessionState } from "./core.js";
import { Contention, NS_PER_US } from "./pacing.js";
import type { RunReport, Settlement } from "./types.js";

export type DocStatus =
  /** No session; `open` goes out on connect. */
  | "disconnected"
  /** `open` sent; taking the snapshot or missing changes until `opened`. */
  | "opening"
  /** Live: changes stream in, commits go out. */
  | "open"
  /** The replica was found inconsistent and `close` + `open` for a snapshot were sent: whatever arrives before the snapshot is stale. */
  | "reopening";

export class DocState {
  /** `undefined` until the first snapshot. */
  replica: Replica | undefined;
  status: DocStatus = "disconnected";
  /** The replica cannot be trusted (a gap, a divergence, a panicking transaction function): the next `open` asks for a snapshot. */
  needsSnapshot = false;
  /** The server dropped an `open` (rate limit): send it again at the next heartbeat unless `opened` came meanwhile. */
  openDropped = false;
  /** Shared by this client's transactions on the document. */
  readonly contention = new Contention();
  /** This session's presence, re-sent after every reopen; `undefined` when cleared. */
  presence: Json | undefined;

  /** The `open` that resumes this replica: from the version it holds, or from a snapshot when it holds none it can trust. */
  openMessage(doc: string): ClientMessage {
    if (this.replica && !this.needsSnapshot) return { type: "open", doc, version: this.replica.version };
    return { type: "open", doc };
  }
}

export type Phase =
  /** The document has no replica yet: runs once the first snapshot is in. */
  | { kind: "awaiting_replica" }
  /** Contention pause: runs at this time. */
  | { kind: "paused"; at: number }
  /** `run` was emitted; the shell runs it next. */
  | { kind: "runnable" }
  /** Its run is pending in the replica, awaiting the server's outcome. */
  | { kind: "submitted"; txId: string; started: number; sends: number }
  /** STM `retry`: runs again after a change overlapping one of these. */
  | { kind: "retrying"; reads: Pointer[] }
  /** Read another pending transaction's writes: runs again when one resolves. */
  | { kind: "blocked" };

/** One `transact` call, from its first run to its settlement. */
export interface Transact {
  doc: string;
  attemptsMax: number;
  /** Rejections (and rate-limit drops) so far. */
  refusals: number;
  runs: number;
  phase: Phase;
}

export function pausedUntil(transact: Transact): number | undefined {
  return transact.phase.kind === "paused" ? transact.phase.at : undefined;
}

/** What a waiting transaction learns of its submission. */
type Resolution =
  | { kind: "committed"; version: number }
  | { kind: "rejected"; rejection: Rejection }
  /** The server dropped the commit unread (rate limit). */
  | { kind: "dropped" }
  | { kind: "refused"; code: ErrorCode | string; message: string };

// ----- the application's commands -----

/** Opens `doc` (again): `opened` follows once it is live, at once if it already is. */
export function open(s: SessionState, doc: string): void {
  const up = s.isConnected();
  const existing = s.docs.get(doc);
  if (existing) {
    if (existing.status === "open") s.events.push({ kind: "opened", doc });
    return;
  }
  const state = new DocState();
  if (up) state.status = "opening";
  s.docs.set(doc, state);
  if (up) s.send({ type: "open", doc });
}

/** Forgets `doc`: its transactions settle as `closed`. */
export function close(s: SessionState, doc: string): void {
  if (!s.docs.delete(doc)) return;
  s.send({ type: "close", doc });
  settleAll(s, doc, () => ({ kind: "closed" }));
}

export function replica(s: SessionState, doc: string): Replica | undefined {
  return s.docs.get(doc)?.replica;
}

export function isOpen(s: SessionState, doc: string): boolean {
  return s.docs.get(doc)?.status === "open";
}

/** Sets (or, with `null`, clears) this session's presence on `doc`; it is re-sent after every reopen. */
export function setPresence(s: SessionState, doc: string, state: Json): void {
  const docState = s.docs.get(doc);
  if (!docState) return;
  docState.presence = state === null ? undefined : state;
  if (docState.status === "open") s.send({ type: "presence", doc, state });
}

/** Starts a transaction on `doc`, re-run after up to `attemptsMax` rejections: `run` asks for its runs, `settled` ends it. */
export function transact(s: SessionState, doc: string, attemptsMax: number, now: number): number {
  s.nextTransaction += 1;
  const key = s.nextTransaction;
  if (!s.docs.has(doc)) {
    s.events.push({ kind: "settled", transaction: key, settlement: { kind: "refused", code: "not_open", message: `${doc} is not open` } });
    return key;
  }
  s.transactions.set(key, { doc, attemptsMax: Math.max(1, attemptsMax), refusals: 0, runs: 0, phase: { kind: "awaiting_replica" } });
  scheduleRun(s, key, false, now);
  return key;
}

/** The replica and tx id for the run `run` asked for; `undefined` if the transaction is not waiting to run (the shell then does nothing). */
export function beginRun(s: SessionState, key: number): { replica: Replica; txId: string } | undefined {
  const transact = s.transactions.get(key);
  if (!transact || transact.phase.kind !== "runnable") return undefined;
  s.txSeq += 1;
  const txId = `${s.clientId}-${s.txSeq}`;
  const held = s.docs.get(transact.doc)?.replica;
  if (!held) return undefined;
  return { replica: held, txId };
}

/** What the run `beginRun` started did. */
export function endRun(s: SessionState, key: number, report: RunReport, now: number): void {
  const transact = s.transactions.get(key);
  if (!transact || transact.phase.kind !== "runnable") return;
  transact.runs += 1;
  const runs = transact.runs;
  const doc = transact.doc;
  switch (report.kind) {
    case "read_only": {
      s.stats.readOnly += 1;
      const version = replica(s, doc)?.version ?? 0;
      settle(s, key, { kind: "read_only", version, runs });
      return;
    }
    case "failed":
      settle(s, key, { kind: "aborted", runs });
      return;
    case "panicked":
      settle(s, key, { kind: "panicked" });
      reopen(s, doc);
      return;
    case "retry":
      s.stats.stmWaits += 1;
      transact.phase = { kind: "retrying", reads: report.reads };
      return;
    case "blocked": {
      s.stats.blockedWaits += 1;
      const hasPending = replica(s, doc)?.hasPending ?? false;
      if (hasPending) setPhase(s, key, { kind: "blocked" });
      else makeRunnable(s, key);
      return;
    }
    case "submit":
      submit(s, key, doc, report.tx, now);
      return;
  }
}

function submit(s: SessionState, key: number, doc: string, tx: Transaction, now: number): void {
  const txId = tx.tx_id;
  const written = touched(tx.writes);
  // Checked now, connected or not: resubmissions after a reconnect must not
  // meet a refusal nobody waits for.
  const text = s.encode({ type: "commit", tx });
  if (typeof text !== "string") {
    s.docs.get(doc)?.replica?.withdraw(txId);
    const settlement: Settlement =
      text.kind === "refused"
        ? { kind: "refused", code: text.code, message: text.message }
        : { kind: "refused", code: "bad_message", message: JSON.stringify(text) };
    settle(s, key, settlement);
    return;
  }
  const live = isOpen(s, doc);
  setPhase(s, key, { kind: "submitted", txId, started: now, sends: live ? 1 : 0 });
  s.waiting.set(txId, key);
  if (live && s.isConnected()) s.transmits.push({ kind: "text", text });
  // Its writes are in the view now: waiters that read them re-run.
  wakeOverlapping(s, doc, written);
}

// ----- scheduling runs -----

/** Moves a transaction towards its next run: after the contention pause if `pause` (a re-run after a rejection), at once otherwise. */
function scheduleRun(s: SessionState, key: number, pause: boolean, now: number): void {
  const transact = s.transactions.get(key);
  if (!transact) return;
  const state = s.docs.get(transact.doc);
  if (!state) return;
  if (!state.replica) {
    setPhase(s, key, { kind: "awaiting_replica" });
    return;
  }
  const config = s.config;
  const delayUs = pause
    ? state.contention.pause(now, config.transactBackoffInitialUs * NS_PER_US, config.transactBackoffMaxUs * NS_PER_US, s.rng)
    : undefined;
  if (delayUs !== undefined && delayUs !== 0) setPhase(s, key, { kind: "paused", at: now + delayUs });
  else makeRunnable(s, key);
}

function makeRunnable(s: SessionState, key: number): void {
  setPhase(s, key, { kind: "runnable" });
  s.events.push({ kind: "run", transaction: key });
}

function setPhase(s: SessionState, key: number, phase: Phase): void {
  const transact = s.transactions.get(key);
  if (transact) transact.phase = phase;
}

/** Paused transactions whose pause is over run now. */
export function releasePaused(s: SessionState, now: number): void {
  const due: number[] = [];
  for (const [key, transact] of s.transactions) {
    const at = pausedUntil(transact);
    if (at !== undefined && at <= now) due.push(key);
  }
  for (const key of due) makeRunnable(s, key);
}

/** Runs the transactions that waited for `doc`'s first replica. */
function releaseAwaitingReplica(s: SessionState, doc: string, now: number): void {
  const awaiting: number[] = [];
  for (const [key, t] of s.transactions) if (t.doc === doc && t.phase.kind === "awaiting_replica") awaiting.push(key);
  for (const key of awaiting) scheduleRun(s, key, false, now);
}

function settle(s: SessionState, key: number, settlement: Settlement): void {
  const transact = s.transactions.get(key);
  if (!transact) return;
  s.transactions.delete(key);
  if (transact.phase.kind === "submitted") s.waiting.delete(transact.phase.txId);
  if (settlement.kind === "committed") s.stats.committed += 1;
  s.events.push({ kind: "settled", transaction: key, settlement });
}

/** Settles every transaction on `doc` (it was closed or refused). */
function settleAll(s: SessionState, doc: string, settlement: () => Settlement): void {
  const keys: number[] = [];
  for (const [key, t] of s.transactions) if (t.doc === doc) keys.push(key);
  for (const key of keys) settle(s, key, settlement());
}

/** Wakes the STM waiters on `doc` that read something overlapping `written`. */
function wakeOverlapping(s: SessionState, doc: string, written: readonly Pointer[]): void {
  if (written.length === 0) return;
  const wake: number[] = [];
  for (const [key, t] of s.transactions) {
    if (t.doc !== doc || t.phase.kind !== "retrying") continue;
    if (t.phase.reads.some((read) => written.some((write) => write.overlaps(read)))) wake.push(key);
  }
  for (const key of wake) {
    s.stats.stmWakeups += 1;
    makeRunnable(s, key);
  }
}

/** Every STM waiter on `doc` re-runs (its replica was replaced). */
function wakeAllRetries(s: SessionState, doc: string): void {
  const wake: number[] = [];
  for (const [key, t] of s.transactions) if (t.doc === doc && t.phase.kind === "retrying") wake.push(key);
  for (const key of wake) {
    s.stats.stmWakeups += 1;
    makeRunnable(s, key);
  }
}

/** Runs blocked behind `doc`'s pending transactions re-run. */
function wakeBlocked(s: SessionState, doc: string): void {
  const wake: number[] = [];
  for (const [key, t] of s.transactions) if (t.doc === doc && t.phase.kind === "blocked") wake.push(key);
  for (const key of wake) makeRunnable(s, key);
}

/** What the transaction waiting on `txId` learns; it settles, or runs again. */
function resolve(s: SessionState, doc: string, txId: string, resolution: Resolution, now: number): void {
  const key = s.waiting.get(txId);
  if (key !== undefined) {
    s.waiting.delete(txId);
    resolveTransaction(s, key, resolution, now);
  }
  wakeBlocked(s, doc);
}

function resolveTransaction(s: SessionState, key: number, resolution: Resolution, now: number): void {
  const transact = s.transactions.get(key);
  if (!transact || transact.phase.kind !== "submitted") return;
  const { txId, started, sends } = transact.phase;
  const roundTrip = Math.max(0, now - started);
  const runs = transact.runs;
  const contention = s.docs.get(transact.doc)?.contention;
  switch (resolution.kind) {
    case "committed":
      contention?.onCommitted(now, roundTrip);
      settle(s, key, { kind: "committed", txId, version: resolution.version, runs });
      return;
    case "rejected": {
      const rejection = resolution.rejection;
      // A resubmission after a lost acknowledgement: the first send may have committed.
      if (rejection.reason === "outcome_unknown" && sends > 1) {
        settle(s, key, { kind: "outcome_unknown", txId, rejection });
        return;
      }
      s.stats.rejections += 1;
      contention?.onRejected(now, roundTrip);
      transact.refusals += 1;
      const attempts = transact.refusals;
      // A first submission's `outcome_unknown` cannot have committed: it is
      // stale, and re-runs.
      const retryable = isRetryable(rejection) || rejection.reason === "outcome_unknown";
      if (!retryable || attempts >= transact.attemptsMax) {
        settle(s, key, { kind: "rejected", rejection, attempts, txId });
        return;
      }
      s.stats.reruns += 1;
      scheduleRun(s, key, true, now);
      return;
    }
    case "dropped": {
      contention?.onRejected(now, roundTrip);
      transact.refusals += 1;
      const attempts = transact.refusals;
      if (attempts >= transact.attemptsMax) {
        settle(s, key, { kind: "rate_limited", attempts });
        return;
      }
      s.stats.reruns += 1;
      scheduleRun(s, key, true, now);
      return;
    }
    case "refused":
      settle(s, key, { kind: "refused", code: resolution.code, message: resolution.message });
      return;
  }
}

// ----- the session's documents -----

/** Sends `open` for every document at the start of a session. */
export function reopenDocuments(s: SessionState): void {
  const opens: ClientMessage[] = [];
  for (const doc of sortedKeys(s.docs)) {
    const state = s.docs.get(doc) as DocState;
    state.status = "opening";
    opens.push(state.openMessage(doc));
  }
  for (const message of opens) s.send(message);
}

/** Sends `open` again for documents whose `open` the server dropped. */
export function resendDroppedOpens(s: SessionState): void {
  const opens: ClientMessage[] = [];
  for (const doc of sortedKeys(s.docs)) {
    const state = s.docs.get(doc) as DocState;
    if (state.openDropped && state.status !== "open") {
      state.openDropped = false;
      opens.push(state.openMessage(doc));
    }
  }
  for (const message of opens) s.send(message);
}

/**
 * Throws the replica's state away at the server's next snapshot: after a
 * gap, a divergence or a panicking function. Pending transactions stay
 * pending and are resubmitted after the snapshot.
 */
function reopen(s: SessionState, doc: string): void {
  const state = s.docs.get(doc);
  if (!state) return;
  state.needsSnapshot = true;
  if (state.status === "disconnected") return;
  state.status = "reopening";
  s.send({ type: "close", doc });
  s.send({ type: "open", doc });
}

function reload(s: SessionState, doc: string, reason: string): void {
  s.events.push({ kind: "reloading", doc, reason });
  reopen(s, doc);
}

export function onSnapshot(s: SessionState, doc: string, version: number, value: Json, now: number): void {
  const state = s.docs.get(doc);
  if (!state || state.status === "disconnected") return;
  state.status = "opening";
  state.needsSnapshot = false;
  if (!state.replica) {
    state.replica = new Replica(doc, value, version, s.config.limits);
    releaseAwaitingReplica(s, doc, now);
  } else {
    state.replica.reset(value, version);
    s.stats.resyncs += 1;
    s.events.push({ kind: "reset", doc, version });
    // Anything may have changed: every STM waiter re-runs.
    wakeAllRetries(s, doc);
  }
}

export function onOpened(s: SessionState, doc: string, version: number): void {
  const state = s.docs.get(doc);
  if (!state || state.status !== "opening") return;
  const held = state.replica;
  if (!held) {
    reload(s, doc, "opened without a snapshot");
    return;
  }
  if (held.version !== version) {
    reload(s, doc, `opened at ${version}, a version the replica (at ${held.version}) does not hold`);
    return;
  }
  state.status = "open";
  state.openDropped = false;
  const messages: ClientMessage[] = [];
  for (const tx of held.pending()) {
    const key = s.waiting.get(tx.tx_id);
    const phase = key === undefined ? undefined : s.transactions.get(key)?.phase;
    if (phase?.kind === "submitted") phase.sends += 1;
    messages.push({ type: "commit", tx });
  }
  if (state.presence !== undefined) messages.push({ type: "presence", doc, state: state.presence });
  for (const message of messages) s.send(message);
  s.events.push({ kind: "opened", doc });
}

export function onChange(s: SessionState, change: Change, now: number): void {
  const state = s.docs.get(change.doc);
  if (!state || state.status === "reopening" || state.status === "disconnected") return;
  const held = state.replica;
  if (!held) return;
  const version = held.version;
  let effect: ChangeEffect;
  try {
    effect = held.applyChange(change);
  } catch (error) {
    reload(s, change.doc, `the replica cannot take a change: ${describe(error)}`);
    return;
  }
  if (held.version === version) {
    // A duplicate of a change the replica holds; if it is one of our
    // pending transactions (the replica held it through a snapshot), the
    // replica just dropped it as settled, and so is its transaction.
    if (effect.committed !== undefined) {
      wakeOverlapping(s, change.doc, effect.writes);
      resolve(s, change.doc, effect.committed, { kind: "committed", version: change.version }, now);
    }
    return;
  }
  const doc = change.doc;
  wakeOverlapping(s, doc, effect.writes);
  s.events.push({ kind: "changed", doc, change, viewWrites: viewWrites(effect), viewUnchanged: effect.viewUnchanged ?? false });
  if (effect.committed !== undefined) resolve(s, doc, effect.committed, { kind: "committed", version: change.version }, now);
}

export function onCommitted(s: SessionState, doc: string, txId: string, version: number, now: number): void {
  const state = s.docs.get(doc);
  if (!state || state.status === "reopening" || state.status === "disconnected") return;
  const held = state.replica;
  if (!held) return;
  const heldVersion = held.version;
  const pending = held.pending().find((tx) => tx.tx_id === txId);
  if (pending && version <= heldVersion) {
    // The confirmed state already includes this commit (it came in a
    // snapshot taken after it), so its patch must leave the view without
    // being applied again.
    held.withdraw(txId);
    wakeOverlapping(s, doc, touched(pending.writes));
    resolve(s, doc, txId, { kind: "committed", version }, now);
    return;
  }
  let effect: ChangeEffect;
  try {
    effect = held.onCommitted(txId, version);
  } catch (error) {
    reload(s, doc, `the replica cannot take a commit: ${describe(error)}`);
    return;
  }
  if (held.version > heldVersion && pending) {
    const change: Change = { doc, version, tx_id: txId, patch: pending.writes };
    s.events.push({ kind: "changed", doc, change, viewWrites: viewWrites(effect), viewUnchanged: effect.viewUnchanged ?? false });
  }
  wakeOverlapping(s, doc, effect.writes);
  resolve(s, doc, txId, { kind: "committed", version }, now);
}

export function onRejected(s: SessionState, doc: string, txId: string, rejection: Rejection, now: number): void {
  const state = s.docs.get(doc);
  if (!state || state.status === "reopening") return;
  const dropped = state.replica?.onRejected(txId, rejection);
  // Its writes just left the optimistic view.
  if (dropped) wakeOverlapping(s, doc, touched(dropped.writes));
  resolve(s, doc, txId, { kind: "rejected", rejection }, now);
}

/** An error about a document that is not about a commit. */
export function onDocError(s: SessionState, doc: string, code: ErrorCode | string, message: string): void {
  const state = s.docs.get(doc);
  if (!state) return;
  const opening = state.status === "opening" || state.status === "reopening";
  if (code === "resynced") {
    // A fresh snapshot and `opened` follow; the dropped backlog may have
    // held outcomes, which resubmission after `opened` recovers.
    if (state.status !== "reopening") state.status = "opening";
  } else if (code === "not_open") {
    reopen(s, doc);
  } else if (code === "rate_limited") {
    // Only an `open` leaves us waiting; presence is ephemeral.
    if (opening) state.openDropped = true;
  } else if (opening && (code === "forbidden" || !state.replica)) {
    // The open itself was refused: the first open, or a reopen after a
    // reconnect with a token that lost the grant. The document is forgotten
    // and its transactions refused.
    s.docs.delete(doc);
    settleAll(s, doc, () => ({ kind: "refused", code, message }));
    s.events.push({ kind: "open_refused", doc, code, message });
  } else {
    s.events.push({ kind: "server_error", code, message });
  }
}

/** A `commit` the server refused before it reached the store. */
export function onCommitRefused(s: SessionState, doc: string, txId: string, code: ErrorCode | string, message: string, now: number): void {
  if (code === "not_open") {
    // The transaction stays pending and goes out again after `opened`.
    reopen(s, doc);
    return;
  }
  const state = s.docs.get(doc);
  if (!state) return;
  const dropped = state.replica?.withdraw(txId);
  if (dropped) wakeOverlapping(s, doc, touched(dropped.writes));
  const resolution: Resolution = code === "rate_limited" ? { kind: "dropped" } : { kind: "refused", code, message };
  resolve(s, doc, txId, resolution, now);
}

/** Where a change may have changed the view: its writes, and the pending writes it rebased. */
function viewWrites(effect: ChangeEffect): Pointer[] {
  return effect.rebased ? [...effect.writes, ...effect.rebased] : effect.writes;
}

function describe(error: unknown): string {
  return String((error as Error)?.message ?? error);
}

/**
 * Locations a patch may change, for waking STM waiters on local writes. An
 * insertion or removal in an array shifts its later elements, so for ops
 * whose last token looks like an array index the parent counts too (a
 * spurious wake only costs a re-run).
 */
export function touched(writes: Patch): Pointer[] {
  const out: Pointer[] = [];
  for (const op of writes) {
    const path = Pointer.parse(op.path);
    out.push(path);
    if (op.op === "move") {
      const from = Pointer.parse(op.from);
      out.push(from);
      const parent = from.parent();
      if (parent) out.push(parent);
    }
    const last = path.last();
    // As Rust's `bytes().all(is_ascii_digit)`, an empty token counts as an index.
    const indexed = last !== undefined && (last === "-" || /^[0-9]*$/.test(last));
    if (indexed && (op.op === "add" || op.op === "remove" || op.op === "move")) {
      const parent = path.parent();
      if (parent) out.push(parent);
    }
  }
  return out;
}

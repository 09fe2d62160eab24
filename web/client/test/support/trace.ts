// Drives a TypeScript `ClientSession` the way a client shell does, one input
// at a time, and records what each input made it do, in the JSON form of
// the trace vectors (engine/tests/vectors/session/README.md). A line-for-line
// mirror of engine/tests/support/trace.rs: the same step recording, the same
// event JSON, the same interpreter of transaction programs, and the same
// handling of `run` events (the program runs at once when the event is
// polled, and the record gains the run's `tx_id` and `report`).

import {
  ClientSession,
  TRANSACT_ATTEMPTS_MAX,
  type SendRefusal,
  type SessionEvent,
  type Settlement,
  type Transmit,
} from "../../src/session/index.js";
import type { Json } from "../../src/json.js";
import type { ServerMessage } from "../../src/protocol.js";
import { reportOf } from "../../src/document.js";
import type { Tx } from "../../src/replica.js";

/** One input of a trace, as the vectors hold it. */
export type Input =
  | { kind: "connected" }
  | { kind: "connect_failed"; unauthorized?: boolean; message: string }
  | { kind: "disconnected"; code?: number; reason?: string }
  | { kind: "timeout" }
  | { kind: "heard" }
  | { kind: "message"; message: Json }
  | { kind: "open"; doc: string }
  | { kind: "close"; doc: string }
  | { kind: "transact"; doc: string; program: Op[]; attempts_max?: number }
  | { kind: "set_presence"; doc: string; state: Json }
  | { kind: "subscribe"; pattern: string }
  | { kind: "unsubscribe"; pattern: string }
  | { kind: "publish"; topic: string; data: Json; echo?: boolean; confirm?: boolean }
  | { kind: "call"; call: number; method: string; params: Json }
  | { kind: "cancel_call"; call: number }
  | { kind: "notify"; method: string; params: Json }
  | { kind: "reply"; epoch: number; message: Json }
  | { kind: "register"; method: string }
  | { kind: "unregister"; method: string };

/** One step of a transaction program, the interpreter both clients share. */
export type Op =
  | { op: "get"; path: string }
  | { op: "set"; path: string; value: Json }
  | { op: "add_one"; path: string }
  | { op: "incr"; path: string; by: number }
  | { op: "retry_unless"; path: string }
  | { op: "remove"; path: string }
  | { op: "fail" }
  | { op: "or_else"; first: Op[]; second: Op[] };

/** A recorded step, as in the vectors. */
export interface Step {
  at_us: number;
  input: Input;
  sends: Json[];
  events: Json[];
  timeout_us: number | null;
  docs: Json;
  returned?: Json;
}

export interface Vector {
  name: string;
  description: string;
  client_id: string;
  seed: number;
  steps: Step[];
}

/** Runs `program` against a transaction. */
function interpret(program: readonly Op[], tx: Tx): void {
  for (const op of program) {
    switch (op.op) {
      case "get":
        tx.get(op.path);
        break;
      case "set":
        tx.set(op.path, op.value);
        break;
      case "add_one": {
        const value = tx.get(op.path);
        // As Rust's `as_i64`: an integer, else 0.
        const n = typeof value === "number" && Number.isInteger(value) ? value : 0;
        tx.set(op.path, n + 1);
        break;
      }
      case "incr":
        tx.increment(op.path, op.by);
        break;
      case "retry_unless": {
        const value = tx.get(op.path);
        if (value === undefined || value === null) tx.retry();
        break;
      }
      case "remove":
        tx.remove(op.path);
        break;
      case "fail":
        throw new Error("the program failed");
      case "or_else":
        tx.orElse(
          (inner) => interpret(op.first, inner),
          (inner) => interpret(op.second, inner),
        );
        break;
    }
  }
}

/** A `ClientSession` and the programs of its transactions. */
export class Driver {
  readonly session: ClientSession;
  readonly #programs = new Map<number, Op[]>();

  constructor(clientId: string, seed: number) {
    this.session = new ClientSession({}, clientId, seed);
  }

  /** Feeds one input at `now` and returns what it made the machine do, as the vectors record it (without `at_us` and `input`). */
  step(now: number, input: Input): Omit<Step, "at_us" | "input"> {
    const returned = this.#apply(now, input);
    const sends: Json[] = [];
    const events: Json[] = [];
    for (;;) {
      let progressed = false;
      for (let transmit = this.session.pollSend(); transmit; transmit = this.session.pollSend()) {
        progressed = true;
        sends.push(transmitJson(transmit));
      }
      for (let event = this.session.pollEvent(); event; event = this.session.pollEvent()) {
        progressed = true;
        const record = eventJson(event) as Record<string, Json>;
        if (event.kind === "run") this.#run(event.transaction, now, record);
        events.push(record);
      }
      if (!progressed) break;
    }
    const record: Omit<Step, "at_us" | "input"> = {
      sends,
      events,
      timeout_us: this.session.pollTimeout() ?? null,
      docs: this.#docsJson(),
    };
    if (returned !== undefined) record.returned = returned;
    return record;
  }

  /** Runs a transaction's program as the shell does when asked to. */
  #run(key: number, now: number, record: Record<string, Json>): void {
    const program = this.#programs.get(key) ?? [];
    const begun = this.session.beginRun(key);
    if (!begun) return;
    record.tx_id = begun.txId;
    const outcome = begun.replica.run(begun.txId, (tx) => interpret(program, tx));
    const report = reportOf(outcome);
    record.report = report.kind;
    this.session.endRun(key, report, now);
  }

  #apply(now: number, input: Input): Json | undefined {
    const session = this.session;
    switch (input.kind) {
      case "connected":
        session.handleConnected(now);
        break;
      case "connect_failed":
        session.handleConnectFailed(input.unauthorized ? { kind: "unauthorized", message: input.message } : { kind: "failed", reason: input.message }, now);
        break;
      case "disconnected":
        session.handleDisconnected(input.code === undefined || input.code === null ? undefined : { code: input.code, reason: input.reason ?? "" }, now);
        break;
      case "timeout":
        session.handleTimeout(now);
        break;
      case "heard":
        session.handleHeard(now);
        break;
      case "message":
        session.handleMessage(input.message as unknown as ServerMessage, now);
        break;
      case "open":
        session.open(input.doc);
        break;
      case "close":
        session.close(input.doc);
        break;
      case "transact": {
        const key = session.transact(input.doc, input.attempts_max ?? TRANSACT_ATTEMPTS_MAX, now);
        this.#programs.set(key, input.program);
        return { transaction: key };
      }
      case "set_presence":
        session.setPresence(input.doc, input.state);
        break;
      case "subscribe":
        session.subscribe(input.pattern);
        break;
      case "unsubscribe":
        session.unsubscribe(input.pattern);
        break;
      case "publish": {
        const result = session.publish(input.topic, input.data, input.echo ?? false, input.confirm ?? false);
        return "refused" in result ? { refused: refusalJson(result.refused) } : { ack: result.ack ?? null };
      }
      case "call": {
        const refusal = session.call(input.call, input.method, input.params);
        return refusal ? { refused: refusalJson(refusal) } : { ok: true };
      }
      case "cancel_call":
        session.cancelCall(input.call);
        break;
      case "notify": {
        const refusal = session.notify(input.method, input.params);
        return refusal ? { refused: refusalJson(refusal) } : { ok: true };
      }
      case "reply":
        session.reply(input.epoch, input.message);
        break;
      case "register":
        session.register(input.method);
        break;
      case "unregister":
        session.unregister(input.method);
        break;
    }
    return undefined;
  }

  #docsJson(): Json {
    const docs: Record<string, Json> = {};
    for (const doc of this.session.documents()) {
      const replica = this.session.replica(doc);
      docs[doc] = replica
        ? { open: this.session.isOpen(doc), version: replica.version, view: clone(replica.view), pending: replica.pending().map((tx) => tx.tx_id) }
        : { open: false };
    }
    return docs;
  }
}

export function transmitJson(transmit: Transmit): Json {
  switch (transmit.kind) {
    case "text":
      return { text: JSON.parse(transmit.text) as Json };
    case "ping":
      return "ping";
    case "connect":
      return "connect";
    case "disconnect":
      return "disconnect";
  }
}

function refusalJson(refusal: SendRefusal): Json {
  switch (refusal.kind) {
    case "not_connected":
      return { kind: "not_connected" };
    case "too_many_calls":
      return { kind: "too_many_calls" };
    // The message names sizes, which encoders may count differently.
    case "refused":
      return { kind: "refused", code: refusal.code };
  }
}

function settlementJson(settlement: Settlement): Json {
  switch (settlement.kind) {
    case "read_only":
      return { kind: "read_only", version: settlement.version, runs: settlement.runs };
    case "committed":
      return { kind: "committed", tx_id: settlement.txId, version: settlement.version, runs: settlement.runs };
    case "aborted":
      return { kind: "aborted", runs: settlement.runs };
    case "rejected":
      return { kind: "rejected", rejection: clone(settlement.rejection as unknown as Json), attempts: settlement.attempts };
    case "rate_limited":
      return { kind: "rate_limited", attempts: settlement.attempts };
    case "outcome_unknown":
      return { kind: "outcome_unknown", tx_id: settlement.txId };
    case "refused":
      return { kind: "refused", code: settlement.code };
    case "panicked":
      return { kind: "panicked" };
    case "closed":
      return { kind: "closed" };
  }
}

/** An event as the vectors record it: an object tagged by `event`. */
export function eventJson(event: SessionEvent): Json {
  switch (event.kind) {
    case "link": {
      const link = event.link;
      switch (link.state) {
        case "connected":
          return { event: "link", state: "connected", session: link.session, sub: link.sub ?? null, name: link.name ?? null };
        case "disconnected":
          return { event: "link", state: "disconnected", reason: link.reason };
        case "unauthorized":
          return { event: "link", state: "unauthorized", message: link.message };
      }
      break;
    }
    case "opened":
      return { event: "opened", doc: event.doc };
    case "open_refused":
      return { event: "open_refused", doc: event.doc, code: event.code, message: event.message };
    case "changed":
      return { event: "changed", doc: event.doc, change: clone(event.change as unknown as Json) };
    case "reset":
      return { event: "reset", doc: event.doc, version: event.version };
    // The reason quotes the replica's error, worded by each client.
    case "reloading":
      return { event: "reloading", doc: event.doc };
    case "presence":
      return { event: "presence", doc: event.doc, session: event.session, presence: event.event, state: event.state };
    case "run":
      return { event: "run", transaction: event.transaction };
    case "settled":
      return { event: "settled", transaction: event.transaction, settlement: settlementJson(event.settlement) };
    case "message":
      return { event: "message", topic: event.topic, data: event.data };
    case "subscribed":
      return { event: "subscribed", pattern: event.pattern };
    case "subscribe_refused":
      return { event: "subscribe_refused", pattern: event.pattern, code: event.code, message: event.message };
    case "published":
      return { event: "published", ack: event.ack };
    case "publish_refused":
      return { event: "publish_refused", ack: event.ack, refusal: refusalJson(event.refusal) };
    case "call_answered":
      return event.result.ok
        ? { event: "call_answered", call: event.call, result: event.result.value }
        : { event: "call_answered", call: event.call, error: event.result.error };
    case "call_lost":
      return { event: "call_lost", call: event.call };
    case "rpc":
      return { event: "rpc", epoch: event.epoch, message: event.message };
    case "registered":
      return { event: "registered", method: event.method };
    case "register_refused":
      return { event: "register_refused", method: event.method, code: event.code, message: event.message };
    case "server_error":
      return { event: "server_error", code: event.code, message: event.message };
  }
}

/** A JSON copy (drops `undefined` members, as the Rust encoder never writes them). */
function clone(value: Json): Json {
  return JSON.parse(JSON.stringify(value)) as Json;
}

/** Where a replay first differs from its vector. */
export interface Mismatch {
  scenario: string;
  step: number;
  field: "sends" | "events" | "timeout_us" | "docs" | "returned";
  expected: unknown;
  actual: unknown;
}

/** Replays `vector` through a fresh machine; the first step that differs, or the number of steps replayed. */
export function replay(vector: Vector, equal: (a: unknown, b: unknown) => boolean): { steps: number } | { mismatch: Mismatch } {
  const driver = new Driver(vector.client_id, vector.seed);
  for (const [index, step] of vector.steps.entries()) {
    const actual = driver.step(step.at_us, step.input) as Record<string, unknown>;
    for (const field of ["sends", "events", "timeout_us", "docs", "returned"] as const) {
      const expected = (step as unknown as Record<string, unknown>)[field];
      if (!equal(expected, actual[field])) {
        return { mismatch: { scenario: vector.name, step: index, field, expected, actual: actual[field] } };
      }
    }
  }
  return { steps: vector.steps.length };
}

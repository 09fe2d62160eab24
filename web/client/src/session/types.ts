// The inputs and outputs of `ClientSession` (engine/src/session/mod.rs): its
// configuration, what it asks of the network (`Transmit`), what the
// application learns (`SessionEvent`), how a transaction ends
// (`Settlement`) and what a run of a transaction function did
// (`RunReport`). Discriminated unions tagged by `kind`; names as in Rust, in
// camelCase.

import type { Json } from "../json.js";
import { DEFAULT_LIMITS, type Limits } from "../patch.js";
import type { Pointer } from "../pointer.js";
import type { Change, ErrorCode, PresenceEvent, Rejection, Transaction } from "../protocol.js";

/**
 * Most bytes of one message the client sends, unless configured: what the
 * server accepts by default. A larger message is refused here, naming it,
 * rather than sent to be refused without a name.
 */
export const OUTGOING_MESSAGE_BYTES_MAX = 1024 * 1024;
/** Most calls awaiting their answers at once. */
export const CALLS_IN_FLIGHT_MAX = 1_024;
/** Most re-runs of one transaction after rejections, unless the application says otherwise. */
export const TRANSACT_ATTEMPTS_MAX = 64;

/** How a session behaves (durations in microseconds); every default is fit for the public internet. */
export interface SessionConfig {
  /** How often an idle session pings the server. */
  pingIntervalUs: number;
  /** How long without a word from the server before it counts as dead and the session is dropped. */
  silenceTimeoutUs: number;
  /** The reconnect backoff's first and largest delay. */
  reconnectBackoffInitialUs: number;
  reconnectBackoffMaxUs: number;
  /** The contention pause's smallest window and its largest. */
  transactBackoffInitialUs: number;
  transactBackoffMaxUs: number;
  outgoingMessageBytesMax: number;
  callsInFlightMax: number;
  /** Bounds of the replicas (the server's, by default). */
  limits: Limits;
}

export const DEFAULT_SESSION_CONFIG: Readonly<SessionConfig> = Object.freeze({
  pingIntervalUs: 5_000_000,
  silenceTimeoutUs: 20_000_000,
  reconnectBackoffInitialUs: 100_000,
  reconnectBackoffMaxUs: 5_000_000,
  transactBackoffInitialUs: 10_000,
  transactBackoffMaxUs: 1_000_000,
  outgoingMessageBytesMax: OUTGOING_MESSAGE_BYTES_MAX,
  callsInFlightMax: CALLS_IN_FLIGHT_MAX,
  limits: DEFAULT_LIMITS,
});

/** The link as the application sees it. */
export type LinkState =
  /** A live session; `sub` and `name` are the identity the server authenticated (absent on a server without authentication). */
  | { state: "connected"; session: string; sub?: string; name?: string }
  /** No session; the machine reconnects by itself. */
  | { state: "disconnected"; reason: string }
  /** The server refused the credentials (HTTP 401, `unauthorized`, or close 4003); the machine keeps retrying with backoff. */
  | { state: "unauthorized"; message: string };

/** What the shell must do on the network, in order. */
export type Transmit =
  /** Send this text frame. */
  | { kind: "text"; text: string }
  /** Send a ping (browsers cannot send WebSocket pings: the shell sends a `ping` message). */
  | { kind: "ping" }
  /** Open a new connection now (with a fresh token), then report `handleConnected` or `handleConnectFailed`. */
  | { kind: "connect" }
  /** Drop the connection now; do not report `handleDisconnected` for it. */
  | { kind: "disconnect" };

/** Why a connection attempt failed. */
export type ConnectFailure =
  /** The credentials were refused (HTTP 401 or close 4003 before welcome). */
  | { kind: "unauthorized"; message: string }
  /** Anything else: unreachable, timed out, a bad handshake. */
  | { kind: "failed"; reason: string };

/** How a transaction ended. */
export type Settlement =
  /** The function wrote nothing; its result stands locally. */
  | { kind: "read_only"; version: number; runs: number }
  /** The writes committed as `version`. */
  | { kind: "committed"; txId: string; version: number; runs: number }
  /** The function threw, or a write did not apply to the replica (the shell knows which). */
  | { kind: "aborted"; runs: number }
  /**
   * Rejected for good: not retryable (the server's rules among them), or
   * `attempts` rejections reached the transaction's limit. (`txId`, the last
   * run's id, is TypeScript's addition, for the error it becomes.)
   */
  | { kind: "rejected"; rejection: Rejection; attempts: number; txId: string }
  /** The server's rate limit dropped it `attempts` times. */
  | { kind: "rate_limited"; attempts: number }
  /**
   * A resubmission after a lost acknowledgement found the server no longer
   * knows whether the first submission committed. (`txId` and `rejection`
   * are TypeScript's additions, for the error it becomes.)
   */
  | { kind: "outcome_unknown"; txId: string; rejection: Extract<Rejection, { reason: "outcome_unknown" }> }
  /** Refused before it reached the store (e.g. too large, or the document was refused to this client). */
  | { kind: "refused"; code: ErrorCode | string; message: string }
  /** The function panicked; the replica is being reloaded (Rust's; a TypeScript function that throws is `aborted`). */
  | { kind: "panicked" }
  /** The document was closed first. */
  | { kind: "closed" };

/** What one run of a transaction function did, as the shell reports it. */
export type RunReport =
  /** Nothing written. */
  | { kind: "read_only" }
  /** Writes are pending in the replica: submit this. */
  | { kind: "submit"; tx: Transaction }
  /** STM `retry`: run again after a change overlapping these reads. */
  | { kind: "retry"; reads: Pointer[] }
  /** Read another pending transaction's writes: run again when one resolves. */
  | { kind: "blocked" }
  /** The function's own error or a write that did not apply. */
  | { kind: "failed" }
  /** The function panicked (its half-done writes are in the replica, which is reloaded). */
  | { kind: "panicked" };

/** Why a request could not go out. */
export type SendRefusal =
  /** No session: the request would be lost. */
  | { kind: "not_connected" }
  /** Too many calls await answers (`callsInFlightMax`). */
  | { kind: "too_many_calls" }
  /** Refused here as the server would refuse it (e.g. too large). */
  | { kind: "refused"; code: ErrorCode | string; message: string };

/** What the application learns, in order. */
export type SessionEvent =
  /** The link changed. */
  | { kind: "link"; link: LinkState }
  /** The document is live: its replica is current and commits go out. Emitted on every (re)open, and at once when `open` finds it live. */
  | { kind: "opened"; doc: string }
  /** The server refused opening the document (e.g. `forbidden`); the machine forgot it and settled its transactions. */
  | { kind: "open_refused"; doc: string; code: ErrorCode | string; message: string }
  /**
   * A committed change entered the replica (the application's own commits
   * included). `viewWrites` and `viewUnchanged` are TypeScript's additions
   * for the shell's change events: where the view may have changed (the
   * change's writes and the pending writes it rebased), and whether it did
   * not change at all (our own oldest transaction confirmed).
   */
  | { kind: "changed"; doc: string; change: Change; viewWrites: Pointer[]; viewUnchanged: boolean }
  /** The replica was replaced by a snapshot. */
  | { kind: "reset"; doc: string; version: number }
  /** The replica could not take a server message and is being reloaded. */
  | { kind: "reloading"; doc: string; reason: string }
  | { kind: "presence"; doc: string; session: string; event: PresenceEvent; state: Json }
  /** Run this transaction's function now (`beginRun`, then `endRun`). */
  | { kind: "run"; transaction: number }
  | { kind: "settled"; transaction: number; settlement: Settlement }
  /** A message on a topic this client subscribed to (any of its patterns matching it). */
  | { kind: "message"; topic: string; data: Json }
  /** The server confirmed a subscription; emitted on every (re)subscribe. */
  | { kind: "subscribed"; pattern: string }
  | { kind: "subscribe_refused"; pattern: string; code: ErrorCode | string; message: string }
  | { kind: "published"; ack: number }
  | { kind: "publish_refused"; ack: number; refusal: SendRefusal }
  /** A call's answer: the JSON-RPC `result`, or its `error` object. */
  | { kind: "call_answered"; call: number; result: { ok: true; value: Json } | { ok: false; error: Json } }
  /** The session ended before the call was answered. */
  | { kind: "call_lost"; call: number }
  /**
   * A JSON-RPC message that answers no call of ours (a request for one of
   * our procedures, or a notification): the shell dispatches it and answers
   * through `reply` with this `epoch`.
   */
  | { kind: "rpc"; epoch: number; message: Json }
  | { kind: "registered"; method: string }
  | { kind: "register_refused"; method: string; code: ErrorCode | string; message: string }
  /** An error the server reported that concerns nothing the machine tracks (for logs). */
  | { kind: "server_error"; code: ErrorCode | string; message: string };

/** Counters of what the session did, for tests, dashboards and tuning. */
export interface SessionStats {
  committed: number;
  readOnly: number;
  rejections: number;
  reruns: number;
  stmWaits: number;
  stmWakeups: number;
  blockedWaits: number;
  connects: number;
  disconnects: number;
  resyncs: number;
  serverErrors: number;
}

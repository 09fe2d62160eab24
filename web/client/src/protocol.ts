// Protocol v1 wire types: the messages that cross a Concord WebSocket
// session. Mirrors engine/src/protocol/ and engine/src/store.rs (the one
// definition); each message is a JSON object whose `type` names it. The
// engine writes an example of every message, code and default limit to
// engine/tests/vectors/protocol.json, and test/unit/protocol-vectors.test.ts
// checks these types and constants against it. A client
// frame holds one message. A server frame holds one message too, unless the
// session opted into batched frames (`batch=1` on the WebSocket URL, as this
// client always does): then a frame may also hold an array of two or more
// messages, in the order sent (see `ServerFrame`).

import type { Json } from "./json.js";
import type { Patch, PatchOpError } from "./patch.js";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** A transaction as submitted: reads taken at `base`, writes as a patch. */
export interface Transaction {
  doc: string;
  tx_id: string;
  base: number;
  reads: string[];
  writes: Patch;
}

/** A committed change, as broadcast. */
export interface Change {
  doc: string;
  version: number;
  tx_id: string;
  patch: Patch;
}

/** One read that a later commit invalidated. */
export interface Conflict {
  pointer: string;
  version: number;
  tx_id?: string;
}

/** Why a transaction did not commit. Every variant explains itself. */
export type Rejection =
  | { reason: "conflict"; conflicts: Conflict[]; conflicts_total: number }
  | { reason: "stale"; base: number; horizon: number }
  | { reason: "base_ahead"; base: number; current: number }
  | { reason: "patch"; op_index: number; error: PatchOpError }
  | { reason: "too_large"; what: "read_set" | "patch"; len: number; max: number }
  /**
   * The id is not in the server's dedup window and `base` is older than the
   * document's dedup floor (the newest version whose committing id may have
   * been forgotten): this may be a resubmission of a commit whose id was
   * forgotten, so it is not decided. Nothing changed. A first submission
   * cannot have committed and is re-run (as `stale`); a resubmission's
   * outcome is unknown (`TransactionOutcomeUnknown`).
   */
  | { reason: "outcome_unknown"; base: number; floor: number }
  /**
   * The session may not write what op `op_index` writes (`pointer`): the
   * document is read-only for it, the location is outside its token's write
   * scopes, or it is a server-only path. Nothing changed; re-running will
   * not help.
   */
  | { reason: "forbidden"; op_index: number; pointer: string; message: string }
  /** The document after the patch breaks the server's schema at `pointer`. Nothing changed. */
  | { reason: "invalid"; pointer: string; message: string }
  /** A guard of the server's application refused the commit. Nothing changed. */
  | { reason: "vetoed"; message: string };

/**
 * True when re-running the transaction on a fresh replica may succeed (as
 * `Rejection::is_retryable`). False for `outcome_unknown`: whether re-running
 * is safe depends on whether the transaction was sent before, which only the
 * client knows (it re-runs a first submission's). False for the server's
 * refusals `forbidden`, `invalid` and `vetoed`, and for any reason this
 * client does not know: those are never re-run.
 */
export function isRetryable(rejection: Rejection): boolean {
  return rejection.reason === "conflict" || rejection.reason === "stale" || rejection.reason === "patch";
}

/** A readable sentence for a rejection. */
export function describeRejection(rejection: Rejection): string {
  switch (rejection.reason) {
    case "conflict": {
      const list = rejection.conflicts
        .map((c) => `${c.pointer || "(root)"} at v${c.version}${c.tx_id ? ` by ${c.tx_id}` : ""}`)
        .join(", ");
      return `read conflict on ${rejection.conflicts_total} pointer(s): ${list}`;
    }
    case "stale":
      return `base ${rejection.base} is older than the validation horizon ${rejection.horizon}`;
    case "base_ahead":
      return `base ${rejection.base} is ahead of the document at ${rejection.current}`;
    case "patch":
      return `patch op ${rejection.op_index} failed: ${rejection.error.reason}`;
    case "too_large":
      return `${rejection.what === "read_set" ? "read set" : "patch"} is ${rejection.len}, over the limit of ${rejection.max}`;
    case "outcome_unknown":
      return `transaction id not remembered and base ${rejection.base} is older than the dedup floor ${rejection.floor}`;
    case "forbidden":
      return `forbidden: op ${rejection.op_index} writes ${rejection.pointer || "(root)"}: ${rejection.message}`;
    case "invalid":
      return `invalid: ${rejection.pointer || "(root)"}: ${rejection.message}`;
    case "vetoed":
      return `vetoed: ${rejection.message}`;
    default:
      // A reason this client does not know (a newer server): say what it is.
      return `rejected: ${(rejection as { reason: string }).reason}`;
  }
}

/** Stable error codes for everything a client can cause. */
export type ErrorCode =
  | "malformed_json"
  | "bad_message"
  | "bad_id"
  | "message_too_large"
  | "too_deep"
  | "too_large"
  | "rate_limited"
  | "resynced"
  /** An operation the session's token does not allow (an `open` of an unreadable document carries `doc`). */
  | "forbidden"
  /** No token where one is required, a bad one, or `auth` out of place; the server then closes with 4003. */
  | "unauthorized"
  /** The session's token expired; the server closes with 4004 after a grace period. */
  | "token_expired"
  | "not_open"
  | "shutting_down"
  | "limit_reached"
  | "already_registered";

/** Every error code, in the engine's order (`ErrorCode::ALL`). */
export const ERROR_CODES = [
  "malformed_json",
  "bad_message",
  "bad_id",
  "message_too_large",
  "too_deep",
  "too_large",
  "rate_limited",
  "resynced",
  "forbidden",
  "unauthorized",
  "token_expired",
  "not_open",
  "shutting_down",
  "limit_reached",
  "already_registered",
] as const satisfies readonly ErrorCode[];

export type PresenceEvent = "join" | "update" | "leave";

/** Messages from a client to the server. */
export type ClientMessage =
  /**
   * Authenticates the session with a bearer token: only as the first
   * message, and only on a server that requires authentication (browsers
   * cannot set an `Authorization` header on a WebSocket).
   */
  | { type: "auth"; token: string }
  | { type: "open"; doc: string; version?: number }
  | { type: "close"; doc: string }
  | { type: "commit"; tx: Transaction }
  | { type: "subscribe"; topic: string }
  | { type: "unsubscribe"; topic: string }
  | { type: "publish"; topic: string; data: Json; ack?: number; echo?: boolean }
  | { type: "presence"; doc: string; state: Json }
  | { type: "rpc"; message: Json }
  | { type: "register"; method: string }
  | { type: "unregister"; method: string }
  /** Asks for a `pong`: the heartbeat (browsers cannot send WebSocket pings). */
  | { type: "ping" };

/** Messages from the server to a client. */
export type ServerMessage =
  /** `sub` and `name`: who the session is, on a server that requires authentication. */
  | { type: "welcome"; protocol: number; session: string; sub?: string; name?: string }
  | { type: "snapshot"; doc: string; version: number; value: Json }
  | { type: "opened"; doc: string; version: number }
  | ({ type: "change" } & Change)
  | { type: "committed"; doc: string; tx_id: string; version: number }
  | { type: "rejected"; doc: string; tx_id: string; rejection: Rejection }
  | { type: "message"; topic: string; data: Json }
  | { type: "subscribed"; topic: string }
  | { type: "published"; ack: number }
  | { type: "presence"; doc: string; session: string; event: PresenceEvent; state: Json }
  | { type: "rpc"; message: Json }
  | { type: "registered"; method: string }
  /** Answers `ping`. */
  | { type: "pong" }
  | {
      type: "error";
      code: ErrorCode | string;
      message: string;
      doc?: string;
      tx_id?: string;
      /** The topic or pattern a refused subscribe, unsubscribe or publish named. */
      topic?: string;
      /** The method a refused register, unregister or notification named. */
      method?: string;
    };

/**
 * One text frame from the server in a session opened with `batch=1`: one
 * message, or an array of two or more in the order they were sent (never
 * nested). Every ordering guarantee holds for the flattened sequence.
 */
export type ServerFrame = ServerMessage | ServerMessage[];

/** WebSocket close codes a server sends (engine/src/protocol/mod.rs `close_code`). The client reconnects after any of them. */
export const CLOSE_CODES = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  /** The outbound queue overflowed: reconnect, re-open at the versions held, resubmit. */
  SLOW_CONSUMER: 4001,
  PEER_TIMEOUT: 4002,
  /** Authentication failed (an `error` `unauthorized` came first): reconnect only with a different token. */
  UNAUTHORIZED: 4003,
  /** The session's token expired (an `error` `token_expired` came first): reconnect with a fresh token. */
  TOKEN_EXPIRED: 4004,
} as const;

/**
 * JSON-RPC 2.0 error codes as Concord uses them: the standard ones and the
 * server's own (−32000…−32099); engine/src/protocol/rpc.rs `rpc_code`.
 */
export const RPC_CODES = {
  /** Never sent: a frame that is not JSON gets `malformed_json`. */
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL_ERROR: -32603,
  /** No answer within the server's call timeout. */
  TIMEOUT: -32000,
  /** The client that registered the method disconnected before answering. */
  CALLEE_GONE: -32001,
  TOO_MANY_CALLS: -32002,
  /** A mutator's patch was rejected (`data` holds the rejection). */
  MUTATION_REJECTED: -32003,
  SHUTTING_DOWN: -32004,
  /** The session's identity may not call this method. */
  FORBIDDEN: -32005,
} as const;

/** Longest topic, subscription pattern or method name a server accepts by default, in bytes. */
export const NAME_BYTES_MAX = 256;
/** Longest document id, in characters. */
export const DOC_ID_LEN_MAX = 128;
/** Longest transaction id, in characters (printable ASCII). */
export const TX_ID_LEN_MAX = 64;

/** Document ids: 1–128 characters of `[A-Za-z0-9._:/-]` (docs/protocol.md, section 1). */
export const DOC_ID_PATTERN = new RegExp(`^[A-Za-z0-9._:/-]{1,${DOC_ID_LEN_MAX}}$`);

export function isValidDocId(doc: string): boolean {
  return DOC_ID_PATTERN.test(doc);
}

/**
 * Whether a topic pattern (`*` one segment, `>` the rest) matches a concrete
 * topic. Used to route an incoming `message` to the subscriptions it matches.
 */
export function topicMatches(pattern: string, topic: string): boolean {
  const want = pattern.split(".");
  const got = topic.split(".");
  for (let i = 0; i < want.length; i++) {
    const segment = want[i];
    if (segment === ">") return got.length > i;
    if (i >= got.length) return false;
    if (segment !== "*" && segment !== got[i]) return false;
  }
  return want.length === got.length;
}

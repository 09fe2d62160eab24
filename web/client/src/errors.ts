// The client's errors, each with a stable `code` or `name`: what a server
// refusal, a rejected transaction, a lost connection or a failed call
// becomes for the application.

import type { Json } from "./json.js";
import { describeRejection, type ErrorCode, type Rejection } from "./protocol.js";

/** An `error` message from the server. */
export class ServerError extends Error {
  override name = "ServerError";
  constructor(
    readonly code: ErrorCode | string,
    message: string,
    readonly doc?: string,
    readonly txId?: string,
  ) {
    super(`${code}: ${message}`);
  }
}

/**
 * The server refused an operation the session's token does not allow
 * (`error` `forbidden`): an `open` of a document it may not read (then
 * `doc` names it, and the document's `whenReady()` rejects with this), or a
 * subscribe, publish, register or JSON-RPC notification outside its
 * patterns (a refused call is answered as a JSON-RPC error). Nothing
 * changed. Not a transaction's rejection: that is `ForbiddenError`.
 */
export class AccessDeniedError extends ServerError {
  override name = "AccessDeniedError";
}

/**
 * Authentication failed: the server answered `unauthorized` (no token, a bad
 * one) and closed the session with 4003, or the token provider threw. The
 * client keeps retrying with backoff, calling the provider again each time;
 * `Client.authError` holds the latest until a session is accepted.
 */
export class AuthError extends Error {
  override name = "AuthError";
  constructor(
    message: string,
    /**
     * `unauthorized` from the server; `token_expired` when the token the
     * provider gave was expired already; `token_provider` when the provider
     * threw (or did not answer in time); `rate_limited` when the server
     * turned the attempt away unread, after too many failed ones from this
     * address.
     */
    readonly code: "unauthorized" | "token_expired" | "token_provider" | "rate_limited",
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A transaction that did not commit within its attempts, or whose rejection cannot be cured by re-running. */
export class TransactionRejected extends Error {
  override name = "TransactionRejected";
  /** The rejection's reason (`conflict`, `forbidden`, ...), as an error code. */
  readonly code: string;
  /** The document, when known. */
  doc?: string;
  /** The id of the transaction's last run, when known. */
  txId?: string;
  constructor(
    readonly rejection: Rejection,
    readonly attempts: number,
  ) {
    super(`transaction rejected after ${attempts} attempt(s): ${describeRejection(rejection)}`);
    this.code = rejection.reason;
  }
}

/**
 * The server refused a transaction's write (`rejected` `forbidden`): op
 * `opIndex` writes `pointer`, which the session may not write (a read-only
 * document for it, a location outside its token's write scopes, or a
 * server-only path). Nothing changed; it is never re-run.
 */
export class ForbiddenError extends TransactionRejected {
  override name = "ForbiddenError";
  readonly opIndex: number;
  readonly pointer: string;
  /** The server's explanation. */
  readonly detail: string;
  constructor(rejection: Extract<Rejection, { reason: "forbidden" }>, attempts: number) {
    super(rejection, attempts);
    this.opIndex = rejection.op_index;
    this.pointer = rejection.pointer;
    this.detail = rejection.message;
  }
}

/** The document after the transaction would break the server's schema at `pointer` (`rejected` `invalid`). Nothing changed; never re-run. */
export class InvalidError extends TransactionRejected {
  override name = "InvalidError";
  readonly pointer: string;
  /** The schema error. */
  readonly detail: string;
  constructor(rejection: Extract<Rejection, { reason: "invalid" }>, attempts: number) {
    super(rejection, attempts);
    this.pointer = rejection.pointer;
    this.detail = rejection.message;
  }
}

/** A guard of the server's application refused the transaction (`rejected` `vetoed`). Nothing changed; never re-run. */
export class VetoedError extends TransactionRejected {
  override name = "VetoedError";
  /** The guard's explanation. */
  readonly detail: string;
  constructor(rejection: Extract<Rejection, { reason: "vetoed" }>, attempts: number) {
    super(rejection, attempts);
    this.detail = rejection.message;
  }
}

/** The typed error for a rejection: `ForbiddenError`, `InvalidError`, `VetoedError`, else `TransactionRejected`. */
export function rejectionError(rejection: Rejection, attempts: number): TransactionRejected {
  switch (rejection.reason) {
    case "forbidden":
      return new ForbiddenError(rejection, attempts);
    case "invalid":
      return new InvalidError(rejection, attempts);
    case "vetoed":
      return new VetoedError(rejection, attempts);
    default:
      return new TransactionRejected(rejection, attempts);
  }
}

/**
 * A transaction sent before a disconnect (or a document reload), whose
 * acknowledgement was lost, was resubmitted after the server had forgotten
 * its id (over `--tx-dedup-entries-max` transactions later). It may or may not
 * have committed, once; it is not re-run, since that could apply it twice.
 * Its writes left the optimistic view and the replica holds the server's
 * current state: look there before deciding whether to run it again.
 */
export class TransactionOutcomeUnknown extends Error {
  override name = "TransactionOutcomeUnknown";
  constructor(
    readonly txId: string,
    readonly rejection: Extract<Rejection, { reason: "outcome_unknown" }>,
  ) {
    super(`the outcome of a transaction sent before a disconnect is unknown (${txId}: ${describeRejection(rejection)})`);
  }
}

/** The operation needs a session, and there is none (or the client was closed). */
export class ConnectionError extends Error {
  override name = "ConnectionError";
}

/** A JSON-RPC error answer (or a local timeout, code -32000 with `data: "timeout"`). */
export class RpcError extends Error {
  override name = "RpcError";
  constructor(
    readonly code: number,
    message: string,
    readonly data?: Json,
  ) {
    super(message);
  }
}


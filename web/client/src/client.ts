// The Concord client: one WebSocket session carrying documents (replicas with
// optimistic STM transactions), publish/subscribe, presence and JSON-RPC.
//
// The socket comes and goes; everything a session owns is re-established on
// each new socket ("resume"): documents are re-opened at the version held
// (the server sends only what is missing), pending transactions are
// re-submitted under their original ids (the server answers a known id with
// its original outcome, so nothing commits twice; an id it has forgotten gets
// `outcome_unknown`, reported as `TransactionOutcomeUnknown`), topics re-subscribed,
// procedures re-registered and presence re-sent. Calls in flight when the
// socket drops fail: a call is not idempotent, so the caller decides.
//
// On a server that requires authentication, each socket's first message is
// `auth` with a token from the application's provider, asked afresh for
// every connect; the session (and everything it resumes) starts with the
// server's `welcome`. An expired token means a prompt reconnect with a new
// one; a refused token an `AuthError`, and retries with backoff.

import { Emitter } from "./events.js";
import { cloneJson, deepFreeze, isObject, toJson, type Json } from "./json.js";
import { DEFAULT_LIMITS, resolve, type Limits } from "./patch.js";
import { Pointer, type Path } from "./pointer.js";
import {
  CLOSE_CODES,
  describeRejection,
  isRetryable,
  isValidDocId,
  topicMatches,
  type ClientMessage,
  type ErrorCode,
  type PresenceEvent,
  type Rejection,
  type ServerFrame,
  type ServerMessage,
  type Transaction,
} from "./protocol.js";
import { Replica, ReplicaError, type ChangeEffect, type Tx } from "./replica.js";

/** The part of the WebSocket interface the client uses: the browser's and the `ws` package's both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/**
 * Supplies the bearer token a session authenticates with. Called before
 * every connect and reconnect, so a short-lived token is fetched afresh each
 * time (e.g. from the application's own auth endpoint).
 */
export type TokenProvider = () => string | Promise<string>;

/** Who the session is, as the server's `welcome` says (on a server that requires authentication). */
export interface Identity {
  sub: string;
  name?: string;
}

export interface ReconnectOptions {
  /** First delay before reconnecting (default 100 ms). */
  initialDelayMs?: number;
  /** Largest delay between attempts (default 5 s). */
  maxDelayMs?: number;
}

export interface ConnectOptions {
  /** The WebSocket implementation; defaults to the global one (browsers, Node ≥ 22) or `ws` via the Node entry. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect with jittered exponential backoff (default on); `false` to stay closed after a drop. */
  reconnect?: ReconnectOptions | false;
  /** Prefix of transaction ids; unique per client (default random). */
  clientId?: string;
  /** Limits the replicas enforce locally; must match the server's (default: the engine's defaults). */
  limits?: Limits;
  /** Default timeout of `call` (default 10 s). */
  rpcTimeoutMs?: number;
  /** How long to wait for `welcome` after the socket opens (default 10 s). */
  handshakeTimeoutMs?: number;
  /** For `connect()`: give up if the first session is not up by then (default: keep trying). */
  connectTimeoutMs?: number;
  /**
   * The token provider, for a server that requires authentication: called
   * on every connect and reconnect; its token is sent as the session's first
   * message (`auth`), and documents resume once the server's `welcome`
   * accepts it. Without it, no `auth` is sent (an open server).
   */
  token?: TokenProvider;
}

export interface TransactOptions {
  /** Most runs that may be rejected before giving up (default 10). */
  attempts?: number;
  /** Abandons a run waiting in `retry()` or for pending transactions. */
  signal?: AbortSignal;
}

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

/** Whether a rejection is a refusal of the server's rules (access, schema, guard), which the document's `error` event reports too. */
function isRefusal(rejection: Rejection): boolean {
  return rejection.reason === "forbidden" || rejection.reason === "invalid" || rejection.reason === "vetoed";
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

export interface ClientEvents {
  /** The connection state changed. */
  state: ConnectionState;
  /** An error the server reported that no document or call claimed. */
  error: ServerError;
  /** A session started (first connect or reconnect); `identity` is who it is, on a server that requires authentication. */
  session: { session: string; resumed: boolean; identity?: Identity };
  /**
   * Authentication failed (the server refused the token, or the provider
   * threw). The client keeps retrying with backoff; the next accepted
   * session clears `Client.authError`.
   */
  auth_error: AuthError;
}

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

type Outcome =
  | { kind: "committed"; version: number }
  | { kind: "rejected"; rejection: Rejection; retryable: boolean; error?: TransactionRejected }
  | { kind: "unknown"; error: TransactionOutcomeUnknown }
  | { kind: "abandoned"; error: Error };

type RpcHandler = (params: Json | undefined, context: { method: string }) => unknown;

const JSONRPC = "2.0";

/**
 * Connects and resolves once the first session is up. With a token
 * provider, rejects with the `AuthError` (and closes the client) if the
 * first attempt fails to authenticate; a `Client` made with `new` keeps
 * retrying instead.
 */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Client> {
  return readyOrClosed(new Client(url, options), options.connectTimeoutMs);
}

/**
 * Resolves with `client` once its first session is up; closes it if that
 * fails: past `timeoutMs`, or at the first authentication failure (the
 * `AuthError` is the rejection).
 */
export async function readyOrClosed<C extends Client>(client: C, timeoutMs?: number): Promise<C> {
  let offAuth = () => {};
  const refused = new Promise<never>((_, reject) => {
    offAuth = client.on("auth_error", reject);
  });
  try {
    await Promise.race([client.ready(timeoutMs), refused]);
  } catch (error) {
    client.close();
    throw error;
  } finally {
    offAuth();
  }
  return client;
}

/** The WebSocket URL of a page's own server (`/ws` on the same origin), for browsers. */
export function sameOriginUrl(path = "/ws"): string {
  const here = new URL(globalThis.location.href);
  here.protocol = here.protocol === "https:" ? "wss:" : "ws:";
  here.pathname = path;
  here.search = "";
  here.hash = "";
  return here.toString();
}

export class Client extends Emitter<ClientEvents> {
  /**
   * The server's WebSocket URL as given (`http(s)` made `ws(s)`, a relative
   * URL resolved against the page). The socket itself opens it with
   * `batch=1` added, which lets the server batch several messages per frame.
   */
  readonly url: string;
  readonly clientId: string;
  readonly limits: Limits;
  #options: ConnectOptions;
  #WebSocket: WebSocketConstructor;
  /** `url` with `batch=1`: what each socket opens. */
  #socketUrl: string;
  #state: ConnectionState = "connecting";
  #session: string | undefined;
  #sessions = 0;
  #ws: WebSocketLike | undefined;
  #welcomed = false;
  #identity: Identity | undefined;
  #authError: AuthError | undefined;
  /** The current socket's session was refused (`unauthorized`): its close 4003 is already reported. */
  #refused = false;
  /** Counts socket attempts, so a token that arrives after its attempt was abandoned is dropped. */
  #attempt = 0;
  #reconnectAttempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  #readyWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  #docs = new Map<string, DocumentHandle>();
  #subscriptions = new Map<string, { handlers: Set<(data: Json, topic: string) => void>; acked: boolean; waiters: ((error?: Error) => void)[] }>();
  #methods = new Map<string, RpcHandler>();
  #calls = new Map<number, { resolve: (v: Json) => void; reject: (e: Error) => void; timer: ReturnType<typeof setTimeout> }>();
  #acks = new Map<number, { topic: string; resolve: () => void; reject: (e: Error) => void }>();
  #registering = new Map<string, { handler: RpcHandler; resolve: () => void; reject: (e: Error) => void }>();
  #txSeq = 0;
  #rpcSeq = 0;
  #ackSeq = 0;

  constructor(url: string, options: ConnectOptions = {}) {
    super();
    this.url = toWebSocketUrl(url);
    this.#socketUrl = withBatching(this.url);
    this.#options = options;
    this.clientId = options.clientId ?? randomId(10);
    this.limits = options.limits ?? DEFAULT_LIMITS;
    const native = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    const WebSocketImpl = options.WebSocket ?? native;
    if (!WebSocketImpl) {
      throw new ConnectionError("no WebSocket implementation: pass options.WebSocket (in Node, import from '@concord/client' resolves to the ws-based entry)");
    }
    this.#WebSocket = WebSocketImpl;
    this.#open();
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The server's id for the current session (changes on reconnect). */
  get session(): string | undefined {
    return this.#session;
  }

  /** Who the current session is (`sub`, `name` from `welcome`); `undefined` on an open server or before the first session. */
  get identity(): Identity | undefined {
    return this.#identity;
  }

  /** The latest authentication failure, until a session is accepted again. */
  get authError(): AuthError | undefined {
    return this.#authError;
  }

  /** Resolves once a session is up (immediately if it is). */
  ready(timeoutMs?: number): Promise<void> {
    if (this.#state === "open") return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(new ConnectionError("client closed"));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      this.#readyWaiters.push(waiter);
      if (timeoutMs !== undefined) {
        setTimeout(() => {
          const i = this.#readyWaiters.indexOf(waiter);
          if (i >= 0) {
            this.#readyWaiters.splice(i, 1);
            reject(new ConnectionError(`no session with ${this.url} within ${timeoutMs} ms`));
          }
        }, timeoutMs);
      }
    });
  }

  /** Closes the session for good: no reconnect; pending work fails. */
  close(): void {
    if (this.#state === "closed") return;
    this.#setState("closed");
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#handshakeTimer);
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {
        // Already closing.
      }
    }
    const error = new ConnectionError("client closed");
    for (const waiter of this.#readyWaiters.splice(0)) waiter.reject(error);
    for (const waiter of this.#registering.values()) waiter.reject(error);
    this.#registering.clear();
    this.#failInFlight(error);
    for (const doc of this.#docs.values()) doc._closed(error);
    this.#docs.clear();
  }

  /** Drops the current socket and reconnects without a backoff delay. */
  #dropAndReconnectNow(): void {
    const ws = this.#ws;
    if (!ws) return;
    detach(ws);
    try {
      ws.close(1000, "token expired: reconnecting with a fresh token");
    } catch {
      // Already closing.
    }
    this.#onSocketGone(CLOSE_CODES.TOKEN_EXPIRED);
  }

  /**
   * Drops the current socket as if the network failed (the client then
   * reconnects and resumes). For tests and for a "reconnect now" button.
   */
  dropConnection(): void {
    const ws = this.#ws;
    if (ws) {
      detach(ws);
      try {
        ws.close(4000, "dropped by the client");
      } catch {
        // Already closing.
      }
      this.#onSocketGone();
    }
  }

  /** Opens a document: resolves with its handle once the first copy has arrived. */
  async open(doc: string): Promise<DocumentHandle> {
    const handle = this.document(doc);
    await handle.whenReady();
    return handle;
  }

  /** The handle of a document, opening it if needed, without waiting for its first copy. */
  document(doc: string): DocumentHandle {
    if (!isValidDocId(doc)) throw new TypeError(`invalid document id ${JSON.stringify(doc)}: use 1-128 characters of [A-Za-z0-9._:/-]`);
    if (this.#state === "closed") throw new ConnectionError("client closed");
    let handle = this.#docs.get(doc);
    if (!handle) {
      handle = new DocumentHandle(this, doc);
      this.#docs.set(doc, handle);
      if (this.#state === "open") handle._resume();
    }
    return handle;
  }

  // ---- publish / subscribe ----

  /**
   * Subscribes `handler` to a topic pattern (`*` one segment, `>` the rest);
   * resolves once acknowledged, with the unsubscribe function. Rejects with
   * an `AccessDeniedError` when the session's token does not allow it.
   */
  async subscribe(topic: string, handler: (data: Json, topic: string) => void): Promise<() => void> {
    let sub = this.#subscriptions.get(topic);
    if (!sub) {
      sub = { handlers: new Set(), acked: false, waiters: [] };
      this.#subscriptions.set(topic, sub);
      this._send({ type: "subscribe", topic });
    }
    sub.handlers.add(handler);
    const unsubscribe = () => {
      const current = this.#subscriptions.get(topic);
      if (!current || !current.handlers.delete(handler)) return;
      if (current.handlers.size === 0) {
        this.#subscriptions.delete(topic);
        this._send({ type: "unsubscribe", topic });
      }
    };
    if (!sub.acked) {
      const pending = sub;
      await new Promise<void>((resolve, reject) => pending.waiters.push((error) => (error ? reject(error) : resolve())));
    }
    return unsubscribe;
  }

  /**
   * Publishes `data` on `topic`. With `ack`, resolves when the server has
   * taken it; with `echo: false`, this session's own subscriptions do not get it.
   */
  async publish(topic: string, data: unknown, options: { ack?: boolean; echo?: boolean } = {}): Promise<void> {
    const message: ClientMessage = { type: "publish", topic, data: toJson(data) };
    if (options.echo === false) message.echo = false;
    if (!options.ack) {
      this.#sendOrThrow(message);
      return;
    }
    const ack = ++this.#ackSeq;
    message.ack = ack;
    const acked = new Promise<void>((resolve, reject) => this.#acks.set(ack, { topic, resolve, reject }));
    this.#sendOrThrow(message);
    return acked;
  }

  // ---- JSON-RPC ----

  /** Calls a procedure (on the server or on another client that registered it). */
  call<T = Json>(method: string, params?: unknown, options: { timeoutMs?: number } = {}): Promise<T> {
    const id = ++this.#rpcSeq;
    const request: Record<string, Json> = { jsonrpc: JSONRPC, id, method };
    if (params !== undefined) request.params = toJson(params);
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.#options.rpcTimeoutMs ?? 10_000;
      const timer = setTimeout(() => {
        this.#calls.delete(id);
        reject(new RpcError(-32000, `call ${method} timed out after ${timeoutMs} ms`, "timeout"));
      }, timeoutMs);
      this.#calls.set(id, { resolve: resolve as (v: Json) => void, reject, timer });
      try {
        this.#sendOrThrow({ type: "rpc", message: request });
      } catch (error) {
        clearTimeout(timer);
        this.#calls.delete(id);
        reject(error);
      }
    });
  }

  /** Sends a JSON-RPC notification (no answer). */
  notify(method: string, params?: unknown): void {
    const message: Record<string, Json> = { jsonrpc: JSONRPC, method };
    if (params !== undefined) message.params = toJson(params);
    this.#sendOrThrow({ type: "rpc", message });
  }

  /**
   * Offers `method` to other clients, routed through the server; resolves
   * once the server acknowledged it (re-registered after each reconnect).
   * The handler may return a value or a promise; throwing an `RpcError`
   * answers with its code, anything else with -32603. Resolves with the
   * unregister function.
   */
  async register(method: string, handler: RpcHandler): Promise<() => void> {
    this.#methods.set(method, handler);
    const acknowledged = new Promise<void>((resolve, reject) => this.#registering.set(method, { handler, resolve, reject }));
    this._send({ type: "register", method });
    await acknowledged;
    return () => {
      if (this.#methods.get(method) === handler) {
        this.#methods.delete(method);
        this._send({ type: "unregister", method });
      }
    };
  }

  // ---- internals ----

  /** @internal A fresh, unique transaction id. */
  _nextTxId(): string {
    return `${this.clientId}-${++this.#txSeq}`;
  }

  /** @internal Sends when a session is up; returns whether it was sent. */
  _send(message: ClientMessage): boolean {
    const ws = this.#ws;
    if (this.#state !== "open" || !ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  /** @internal */
  _forget(doc: string): void {
    this.#docs.delete(doc);
  }

  #sendOrThrow(message: ClientMessage): void {
    if (!this._send(message)) throw new ConnectionError(`not connected (${this.#state})`);
  }

  #setState(state: ConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", state);
  }

  #open(): void {
    this.#welcomed = false;
    const provider = this.#options.token;
    if (!provider) {
      this.#openSocket(undefined);
      return;
    }
    // A fresh token for every connect: one that expired since the last
    // session is replaced before the server ever sees it.
    const attempt = ++this.#attempt;
    // Asked from a microtask, never inside the constructor: a provider that
    // throws at once is reported to listeners added after `new Client`.
    const token = Promise.resolve().then(provider);
    // A provider that never answers must not stall the client: past the
    // handshake timeout the attempt counts as failed (and is retried).
    const timeoutMs = this.#options.handshakeTimeoutMs ?? 10_000;
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = setTimeout(() => this.#onTokenFailure(attempt, new Error(`no token within ${timeoutMs} ms`)), timeoutMs);
    token.then(
      (value) => {
        if (attempt !== this.#attempt || this.#state === "closed") return;
        clearTimeout(this.#handshakeTimer);
        if (typeof value !== "string" || value === "") {
          this.#onTokenFailure(attempt, new TypeError(`the token provider returned ${value === "" ? "an empty string" : typeof value}, not a token`));
          return;
        }
        this.#openSocket(value);
      },
      (error: unknown) => this.#onTokenFailure(attempt, error),
    );
  }

  #onTokenFailure(attempt: number, error: unknown): void {
    if (attempt !== this.#attempt || this.#state === "closed") return;
    clearTimeout(this.#handshakeTimer);
    // This attempt is over: a late answer from the provider is ignored.
    this.#attempt++;
    const message = `the token provider failed: ${(error as Error)?.message ?? String(error)}`;
    this.#authFailed(new AuthError(message, "token_provider", { cause: error }));
    this.#scheduleReconnect();
  }

  #authFailed(error: AuthError): void {
    this.#authError = error;
    this.emit("auth_error", error);
  }

  /** Opens a socket; with `token`, authenticates with it as the first message. */
  #openSocket(token: string | undefined): void {
    this.#refused = false;
    let ws: WebSocketLike;
    try {
      ws = new this.#WebSocket(this.#socketUrl);
    } catch (error) {
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (token !== undefined && this.#ws === ws) ws.send(JSON.stringify({ type: "auth", token } satisfies ClientMessage));
      clearTimeout(this.#handshakeTimer);
      this.#handshakeTimer = setTimeout(() => {
        if (this.#ws === ws && !this.#welcomed) this.dropConnection();
      }, this.#options.handshakeTimeoutMs ?? 10_000);
    };
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      const messages = parseFrame(typeof event.data === "string" ? event.data : decodeText(event.data));
      // The server sends JSON objects; a garbled frame is dropped whole rather than trusted in part.
      if (!messages) return;
      // A batch is handled as its messages would be, one frame each. A
      // message may end this socket's session (a listener that drops or
      // closes the connection): the rest belong to it, not to the next one,
      // which resumes from what was applied. A message whose handling throws
      // does not cost the others theirs; the error still leaves the handler,
      // as a single frame's would.
      let failure: { error: unknown } | undefined;
      for (const message of messages) {
        if (this.#ws !== ws) break;
        try {
          this.#onMessage(message);
        } catch (error) {
          failure ??= { error };
        }
      }
      if (failure) throw failure.error;
    };
    ws.onclose = (event) => {
      if (this.#ws === ws) this.#onSocketGone(event?.code);
    };
    ws.onerror = () => {
      // A close event always follows; reconnecting happens there.
    };
  }

  #onSocketGone(code?: number): void {
    clearTimeout(this.#handshakeTimer);
    this.#ws = undefined;
    this.#welcomed = false;
    if (this.#state === "closed") return;
    if (code === CLOSE_CODES.UNAUTHORIZED && !this.#refused) {
      // Closed as unauthorized without the `error` first (or it was lost).
      this.#authFailed(new AuthError("the server refused the session's token (close 4003)", "unauthorized"));
    }
    this.#failInFlight(new ConnectionError("connection lost"));
    for (const sub of this.#subscriptions.values()) sub.acked = false;
    for (const doc of this.#docs.values()) doc._disconnected();
    this.#setState(this.#sessions > 0 ? "reconnecting" : "connecting");
    // An expired token is no failure: reconnect at once with a fresh one
    // (unless the last attempt got no session either: then back off).
    this.#scheduleReconnect(code === CLOSE_CODES.TOKEN_EXPIRED);
  }

  #scheduleReconnect(prompt = false): void {
    if (this.#state === "closed") return;
    if (this.#options.reconnect === false) {
      this.close();
      return;
    }
    const initial = this.#options.reconnect?.initialDelayMs ?? 100;
    const max = this.#options.reconnect?.maxDelayMs ?? 5_000;
    const ceiling = Math.min(max, initial * 2 ** Math.min(this.#reconnectAttempt, 20));
    const first = this.#reconnectAttempt === 0;
    this.#reconnectAttempt++;
    // Jitter spreads the reconnects of many clients after a server restart.
    const delay = prompt && first ? 0 : ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => this.#open(), delay);
  }

  #failInFlight(error: Error): void {
    for (const [id, call] of this.#calls) {
      clearTimeout(call.timer);
      call.reject(error);
      this.#calls.delete(id);
    }
    for (const [id, ack] of this.#acks) {
      ack.reject(error);
      this.#acks.delete(id);
    }
  }

  #onMessage(message: ServerMessage): void {
    switch (message.type) {
      case "welcome": {
        clearTimeout(this.#handshakeTimer);
        this.#welcomed = true;
        this.#reconnectAttempt = 0;
        this.#session = message.session;
        this.#identity = typeof message.sub === "string" ? { sub: message.sub, ...(typeof message.name === "string" ? { name: message.name } : {}) } : undefined;
        this.#authError = undefined;
        const resumed = this.#sessions > 0;
        this.#sessions++;
        this.#setState("open");
        for (const topic of this.#subscriptions.keys()) this._send({ type: "subscribe", topic });
        for (const method of this.#methods.keys()) this._send({ type: "register", method });
        for (const doc of this.#docs.values()) doc._resume();
        this.emit("session", { session: message.session, resumed, ...(this.#identity ? { identity: this.#identity } : {}) });
        for (const waiter of this.#readyWaiters.splice(0)) waiter.resolve();
        return;
      }
      case "snapshot":
      case "opened":
      case "change":
      case "committed":
      case "rejected":
      case "presence":
        this.#docs.get(message.doc)?._onMessage(message);
        return;
      case "subscribed": {
        const sub = this.#subscriptions.get(message.topic);
        if (sub) {
          sub.acked = true;
          for (const wake of sub.waiters.splice(0)) wake();
        }
        return;
      }
      case "message": {
        const delivered = new Set<(data: Json, topic: string) => void>();
        for (const [pattern, sub] of this.#subscriptions) {
          if (!topicMatches(pattern, message.topic)) continue;
          for (const handler of sub.handlers) {
            if (delivered.has(handler)) continue;
            delivered.add(handler);
            try {
              handler(message.data, message.topic);
            } catch (error) {
              this.onListenerError(error);
            }
          }
        }
        return;
      }
      case "published": {
        const ack = this.#acks.get(message.ack);
        this.#acks.delete(message.ack);
        ack?.resolve();
        return;
      }
      case "rpc":
        this.#onRpc(message.message);
        return;
      case "error": {
        if (message.code === "unauthorized") {
          // The server closes the session (4003) next; the reconnect calls the provider again.
          this.#refused = true;
          this.#authFailed(new AuthError(`unauthorized: ${message.message}`, "unauthorized"));
          return;
        }
        if (message.code === "rate_limited" && !this.#welcomed) {
          // Too many failed authentications from this address: the token
          // was not even looked at (close 4003 follows).
          this.#refused = true;
          this.#authFailed(new AuthError(`rate_limited: ${message.message}`, "rate_limited"));
          return;
        }
        if (message.code === "token_expired" && !this.#welcomed) {
          // The provider's token had expired before the server saw it: a
          // failure to report (the server closes with 4004; the reconnect
          // asks the provider again, with backoff if this repeats).
          this.#refused = true;
          this.#authFailed(new AuthError(`token_expired: ${message.message}`, "token_expired"));
          return;
        }
        if (message.code === "token_expired") {
          // Not an application error: a fresh session with a fresh token
          // follows now, rather than after the server's grace period and
          // its close (4004). Everything resumes on it.
          this.#dropAndReconnectNow();
          return;
        }
        const error =
          message.code === "forbidden"
            ? new AccessDeniedError(message.code, message.message, message.doc, message.tx_id)
            : new ServerError(message.code, message.message, message.doc, message.tx_id);
        const doc = message.doc === undefined ? undefined : this.#docs.get(message.doc);
        if (doc) {
          doc._onError(error);
          return;
        }
        if (message.topic !== undefined || message.method !== undefined) {
          if (this.#claimNamedRefusal(error, message.topic, message.method)) return;
          this.emit("error", error);
          return;
        }
        if (error instanceof AccessDeniedError && this.#claimRefusal(error)) return;
        if (message.code === "already_registered" || message.code === "limit_reached") {
          // A server that does not name the method: it answers the oldest
          // registration in flight, if any.
          const [method, waiter] = this.#registering.entries().next().value ?? [];
          if (method !== undefined && waiter) {
            this.#registering.delete(method);
            if (this.#methods.get(method) === waiter.handler) this.#methods.delete(method);
            waiter.reject(error);
            return;
          }
        }
        this.emit("error", error);
        return;
      }
      case "registered": {
        const waiter = this.#registering.get(message.method);
        this.#registering.delete(message.method);
        waiter?.resolve();
        return;
      }
    }
  }

  /**
   * Hands an error that names its topic or method (as the server's do) to
   * the request it answers: the registration of that method, the
   * unacknowledged subscription to that pattern, the acknowledged publishes
   * to that topic. Returns whether one took it.
   */
  #claimNamedRefusal(error: ServerError, topic: string | undefined, method: string | undefined): boolean {
    let claimed = false;
    if (method !== undefined) {
      const waiter = this.#registering.get(method);
      if (waiter) {
        this.#registering.delete(method);
        if (this.#methods.get(method) === waiter.handler) this.#methods.delete(method);
        waiter.reject(error);
        claimed = true;
      }
    }
    if (topic !== undefined) {
      const sub = this.#subscriptions.get(topic);
      if (sub && !sub.acked) {
        this.#subscriptions.delete(topic);
        for (const fail of sub.waiters.splice(0)) fail(error);
        claimed = true;
      }
      for (const [id, ack] of this.#acks) {
        if (ack.topic !== topic) continue;
        this.#acks.delete(id);
        ack.reject(error);
        claimed = true;
      }
    }
    return claimed;
  }

  /**
   * For a server that does not name the topic or method in its errors:
   * hands a `forbidden` error to the request it answers: a registration,
   * an unacknowledged subscription or an acknowledged publish whose name
   * the server's message names (it names what was refused). Returns whether
   * one took it.
   */
  #claimRefusal(error: AccessDeniedError): boolean {
    // The name as a word of the message: after a space, and followed by its end, a space, or punctuation that ends the sentence or clause.
    const names = (name: string) => new RegExp(`(^|\\s)${escapeRegExp(name)}($|\\s|[.,:;](\\s|$))`).test(error.message);
    for (const [method, waiter] of this.#registering) {
      if (!names(method)) continue;
      this.#registering.delete(method);
      if (this.#methods.get(method) === waiter.handler) this.#methods.delete(method);
      waiter.reject(error);
      return true;
    }
    for (const [pattern, sub] of this.#subscriptions) {
      if (sub.acked || !names(pattern)) continue;
      this.#subscriptions.delete(pattern);
      for (const fail of sub.waiters.splice(0)) fail(error);
      return true;
    }
    for (const [id, ack] of this.#acks) {
      if (!names(ack.topic)) continue;
      this.#acks.delete(id);
      ack.reject(error);
      return true;
    }
    return false;
  }

  #onRpc(raw: Json): void {
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return;
    const message = raw as Record<string, Json>;
    if (typeof message.method === "string") {
      void this.#serve(message.method, message.params, message.id);
      return;
    }
    if (typeof message.id !== "number") return;
    const call = this.#calls.get(message.id);
    if (!call) return;
    this.#calls.delete(message.id);
    clearTimeout(call.timer);
    const error = message.error;
    if (error !== undefined && error !== null && typeof error === "object" && !Array.isArray(error)) {
      const code = typeof error.code === "number" ? error.code : -32603;
      call.reject(new RpcError(code, typeof error.message === "string" ? error.message : "error", error.data));
    } else {
      call.resolve(message.result === undefined ? null : message.result);
    }
  }

  async #serve(method: string, params: Json | undefined, id: Json | undefined): Promise<void> {
    const answer = (body: Record<string, Json>) => {
      if (id === undefined) return; // A notification gets no answer.
      this._send({ type: "rpc", message: { jsonrpc: JSONRPC, id, ...body } });
    };
    const handler = this.#methods.get(method);
    if (!handler) {
      answer({ error: { code: -32601, message: `method not found: ${method}` } });
      return;
    }
    try {
      const result = await handler(params, { method });
      answer({ result: result === undefined ? null : toJson(result) });
    } catch (error) {
      if (error instanceof RpcError) {
        const body: Record<string, Json> = { code: error.code, message: error.message };
        if (error.data !== undefined) body.data = error.data;
        answer({ error: body });
      } else {
        answer({ error: { code: -32603, message: `internal error: ${(error as Error)?.message ?? String(error)}` } });
      }
    }
  }
}

/** One open document: its replica, transactions and presence. */
export class DocumentHandle extends Emitter<DocumentEvents> {
  readonly id: string;
  readonly client: Client;
  #replica: Replica | undefined;
  /** Live on the current session: `opened` arrived and nothing forced a resync since. */
  #live = false;
  /** Waiting for a fresh snapshot: stream messages are ignored until it comes. */
  #resyncing = false;
  #closed: Error | undefined;
  #firstReady: { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void };
  #snapshot: Json | undefined;
  #outcomes = new Map<string, (outcome: Outcome) => void>();
  /**
   * How many times each pending transaction was sent. Past one, an earlier
   * send may have committed with its acknowledgement lost, so the server's
   * `outcome_unknown` means exactly that and it must not be re-run. Entries
   * go with the transaction's outcome (`#settle`).
   */
  #sends = new Map<string, number>();
  #retryWaiters = new Set<{ reads: Pointer[]; wake: () => void }>();
  #resolutionWaiters = new Set<{ txIds: string[]; wake: () => void }>();
  #presenceState: Json = null;
  #others = new Map<string, Json>();
  #lastPending = 0;
  #snapshotWaiters: (() => void)[] = [];

  /** @internal */
  constructor(client: Client, id: string) {
    super();
    this.client = client;
    this.id = id;
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {});
    this.#firstReady = { promise, resolve, reject };
  }

  /** Resolves once the document's first copy has arrived. */
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
    if (this.#snapshot === undefined) {
      this.#snapshot = deepFreeze(cloneJson(this.#replica?.view ?? {}));
    }
    return this.#snapshot;
  }

  /** The value at `path` in the optimistic view (a copy), `undefined` when absent. Records nothing. */
  get<T extends Json = Json>(path: Path): T | undefined {
    if (!this.#replica) return undefined;
    const value = resolve(this.#replica.view, Pointer.from(path));
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
    this.#presenceState = state === undefined ? null : toJson(state);
    if (this.#live) this.client._send({ type: "presence", doc: this.id, state: this.#presenceState });
  }

  /**
   * Runs `fn` as a transaction on the optimistic view, submits its writes and
   * resolves with its result once committed (at once if it wrote nothing).
   * On rejection it re-runs `fn` on the updated replica, with jittered
   * backoff, up to `attempts` times. `tx.retry()` waits for a change to what
   * the run read; a run that read another pending transaction's writes waits
   * for it to resolve. `fn` must be synchronous and free of side effects:
   * put them in `tx.afterCommit`. A transaction resubmitted after a
   * reconnect or reload whose id the server no longer remembers fails with
   * `TransactionOutcomeUnknown` instead of being re-run (it may have
   * committed), which the application can tell apart from
   * `TransactionRejected` (a rejection re-running cannot cure, or the last
   * of `attempts`).
   */
  async transact<T>(fn: (tx: Tx) => T, options: TransactOptions = {}): Promise<T> {
    const attempts = Math.max(1, options.attempts ?? 10);
    let rejected = 0;
    for (;;) {
      this.#checkOpen();
      options.signal?.throwIfAborted();
      if (!this.#replica) await this.#until(this.#firstReady.promise, options.signal);
      // While a fresh snapshot is on its way, the replica is known to be
      // behind: a run now would only be rejected.
      if (this.#resyncing) await this.#until(this.#nextSnapshot(), options.signal);
      const replica = this.#replica as Replica;
      const txId = this.client._nextTxId();
      const outcome = replica.run(txId, fn);
      switch (outcome.kind) {
        case "read_only":
          runEffects(outcome.afterCommit, this);
          return outcome.value;
        case "failed":
          throw outcome.error;
        case "patch":
          throw outcome.error;
        case "retry":
          await this.#waitForChange(outcome.reads, options.signal);
          continue;
        case "blocked":
          await this.#waitForResolution(outcome.pendingTxIds, options.signal);
          continue;
        case "submit": {
          const settled = new Promise<Outcome>((resolve) => this.#outcomes.set(txId, resolve));
          this.#sends.set(txId, 0);
          this.#changed("local", replica.pendingWrites(txId));
          if (this.#live) this.#sendCommit(outcome.tx);
          const result = await settled;
          if (result.kind === "committed") {
            runEffects(outcome.afterCommit, this);
            return outcome.value;
          }
          if (result.kind === "abandoned" || result.kind === "unknown") throw result.error;
          rejected++;
          if (!result.retryable || rejected >= attempts) throw result.error ?? this.#rejectionError(result.rejection, rejected, txId);
          await sleep(backoffMs(rejected));
          continue;
        }
      }
    }
  }

  /** Stops receiving the document; pending transactions are abandoned. */
  close(): void {
    if (this.#closed) return;
    this.client._send({ type: "close", doc: this.id });
    this.client._forget(this.id);
    this._closed(new ConnectionError(`document ${this.id} closed`));
  }

  // ---- called by the client ----

  /** @internal A session is up: (re)open at the version held. */
  _resume(): void {
    this.#live = false;
    this.#resyncing = this.#replica === undefined;
    const message: ClientMessage = { type: "open", doc: this.id };
    if (this.#replica) message.version = this.#replica.version;
    this.client._send(message);
  }

  /** @internal The socket dropped. */
  _disconnected(): void {
    this.#setLive(false);
    // Presence belongs to sessions; the next session hears it again.
    for (const [session, state] of [...this.#others]) {
      this.#others.delete(session);
      this.emit("presence", { session, event: "leave", state });
    }
  }

  /** @internal */
  _closed(error: Error): void {
    this.#closed = error;
    this.#setLive(false);
    this.#firstReady.reject(error);
    for (const waiter of this.#retryWaiters) waiter.wake();
    for (const waiter of this.#resolutionWaiters) waiter.wake();
    for (const [txId, settle] of this.#outcomes) {
      this.#outcomes.delete(txId);
      settle({ kind: "abandoned", error });
    }
    this.#sends.clear();
  }

  /** @internal */
  _onError(error: ServerError): void {
    const txId = error.txId;
    if (error.code === "resynced") {
      // The server dropped our backlog; a snapshot and `opened` follow.
      this.#resyncing = true;
      this.#setLive(false);
    } else if (error.code === "not_open") {
      // The server does not have us on this document (the commit never
      // reached the store): re-open; pending transactions are resent then.
      this.#resync();
    } else if (error.code === "rate_limited" && txId !== undefined) {
      // The commit was dropped unread: send it again after a pause. The
      // dropped send never reached the store, so this one takes its place in
      // the count of sends.
      const replica = this.#replica;
      setTimeout(() => {
        const tx = replica?.pending().find((p) => p.tx_id === txId);
        if (tx && this.#live) this.client._send({ type: "commit", tx });
      }, 100 + Math.random() * 400);
    } else if (txId !== undefined && this.#replica?.isPending(txId)) {
      // The server refused the message itself (malformed, too large, ...):
      // re-sending cannot help, so the transaction fails with the error.
      const writes = this.#replica.reject(txId)?.writes ?? [];
      this.#settle(txId, { kind: "abandoned", error });
      this.#changed("rollback", writes);
    } else if (error.code === "forbidden" && txId === undefined && !this.#live) {
      // The answer to our `open`: the session may not read this document.
      // The handle ends with the error (`whenReady()` and waiting
      // transactions reject with it); opening it again asks again.
      this.emit("error", error);
      if (!this.#closed) {
        this.client._forget(this.id);
        this._closed(error);
      }
      return;
    }
    this.emit("error", error);
  }

  /** @internal */
  _onMessage(message: ServerMessage): void {
    if (this.#closed) return;
    switch (message.type) {
      case "snapshot": {
        if (!this.#replica) this.#replica = new Replica(this.id, message.value, message.version, this.client.limits);
        else this.#replica.reset(message.value, message.version);
        this.#resyncing = false;
        this.#changed("snapshot", [Pointer.root]);
        for (const wake of this.#snapshotWaiters.splice(0)) wake();
        return;
      }
      case "opened": {
        const replica = this.#replica;
        // While resyncing, the `opened` of an earlier open may still come:
        // the snapshot and `opened` of the re-open follow it.
        if (!replica || this.#resyncing) return;
        if (replica.version !== message.version) {
          // We hold something other than what the server thinks we hold.
          this.#resync();
          return;
        }
        this.#setLive(true);
        this.#firstReady.resolve();
        // A run waiting out a resync may go on: the replica is current again.
        for (const wake of this.#snapshotWaiters.splice(0)) wake();
        this.#resubmit();
        if (this.#presenceState !== null) {
          this.client._send({ type: "presence", doc: this.id, state: this.#presenceState });
        }
        return;
      }
      case "change": {
        if (!this.#replica || this.#resyncing) return;
        try {
          const effect = this.#replica.applyChange(message);
          if (effect.committed) this.#settle(effect.committed, { kind: "committed", version: message.version });
          this.#changed("remote", this.#viewWrites(effect), effect.viewUnchanged);
        } catch (error) {
          if (!(error instanceof ReplicaError)) throw error;
          this.#resync();
        }
        return;
      }
      case "committed": {
        if (!this.#replica || this.#resyncing) return;
        try {
          const wasPending = this.#replica.isPending(message.tx_id);
          const effect = this.#replica.onCommitted(message.tx_id, message.version);
          this.#settle(message.tx_id, { kind: "committed", version: message.version });
          if (wasPending) this.#changed("remote", this.#viewWrites(effect), effect.viewUnchanged);
        } catch (error) {
          if (!(error instanceof ReplicaError)) throw error;
          this.#resync();
        }
        return;
      }
      case "rejected": {
        if (!this.#replica) return;
        const rejected = this.#replica.reject(message.tx_id, message.rejection);
        const rejection = message.rejection;
        if (rejection.reason === "outcome_unknown" && (this.#sends.get(message.tx_id) ?? 0) > 1) {
          // Sent before: that send may have committed with its
          // acknowledgement lost. Re-running could apply it twice.
          this.#settle(message.tx_id, { kind: "unknown", error: new TransactionOutcomeUnknown(message.tx_id, rejection) });
        } else {
          // A first submission's `outcome_unknown` cannot be a forgotten
          // commit of its own: re-run it as for `stale` (the server sends it
          // after the changes up to its version, so the replica is current).
          const retryable = isRetryable(rejection) || rejection.reason === "outcome_unknown";
          if (isRefusal(rejection)) {
            // The server's rules refused it: never re-run; the application
            // hears of it on the document too, awaited or not.
            const error = this.#rejectionError(rejection, 1, message.tx_id);
            this.#settle(message.tx_id, { kind: "rejected", rejection, retryable: false, error });
            if (rejected) this.#changed("rollback", rejected.writes);
            this.emit("error", error);
            return;
          }
          this.#settle(message.tx_id, { kind: "rejected", rejection, retryable });
        }
        if (rejected) this.#changed("rollback", rejected.writes);
        return;
      }
      case "presence": {
        if (message.session === this.client.session) return;
        if (message.event === "leave" || message.state === null) this.#others.delete(message.session);
        else this.#others.set(message.session, message.state);
        this.emit("presence", { session: message.session, event: message.event, state: message.state });
        return;
      }
      default:
        return;
    }
  }

  // ---- internals ----

  #rejectionError(rejection: Rejection, attempts: number, txId: string): TransactionRejected {
    const error = rejectionError(rejection, attempts);
    error.doc = this.id;
    error.txId = txId;
    return error;
  }

  #nextSnapshot(): Promise<void> {
    return new Promise((resolve) => this.#snapshotWaiters.push(resolve));
  }

  #checkOpen(): void {
    if (this.#closed) throw this.#closed;
  }

  #setLive(live: boolean): void {
    if (this.#live === live) return;
    this.#live = live;
    this.emit("ready", live);
  }

  /** Asks for a fresh snapshot: the stream is ignored until it arrives. */
  #resync(): void {
    this.#resyncing = true;
    this.#setLive(false);
    this.client._send({ type: "close", doc: this.id });
    this.client._send({ type: "open", doc: this.id });
  }

  /** Re-sends every pending transaction, oldest first, under its original id. */
  #resubmit(): void {
    const replica = this.#replica as Replica;
    for (const tx of replica.pending()) {
      if (tx.base > replica.version) {
        // The server no longer holds the history this transaction was based
        // on (it restarted without its data): re-run it on what it holds now.
        const writes = replica.reject(tx.tx_id)?.writes ?? [];
        this.#settle(tx.tx_id, {
          kind: "rejected",
          rejection: { reason: "base_ahead", base: tx.base, current: replica.version },
          retryable: true,
        });
        this.#changed("rollback", writes);
        continue;
      }
      this.#sendCommit(tx);
    }
  }

  /** Sends a pending transaction's commit, counting the send if it went out. */
  #sendCommit(tx: Transaction): void {
    if (this.client._send({ type: "commit", tx })) {
      this.#sends.set(tx.tx_id, (this.#sends.get(tx.tx_id) ?? 0) + 1);
    }
  }

  #settle(txId: string, outcome: Outcome): void {
    this.#sends.delete(txId);
    const settle = this.#outcomes.get(txId);
    if (!settle) return;
    this.#outcomes.delete(txId);
    settle(outcome);
  }

  /** The locations a change may have changed in the view: its writes, and the pending writes if it rebased them. */
  #viewWrites(effect: ChangeEffect): Pointer[] {
    return effect.rebased ? [...effect.writes, ...effect.rebased] : effect.writes;
  }

  /** After any change to the view or the pending set: notify listeners and wake waiting runs. */
  #changed(origin: ChangeEvent["origin"], pointers: Pointer[], viewUnchanged = false): void {
    if (!viewUnchanged) this.#snapshot = undefined;
    // `wake` deletes the waiter from its set, which is safe while iterating it.
    for (const waiter of this.#retryWaiters) {
      if (origin === "snapshot" || waiter.reads.some((r) => pointers.some((w) => w.overlaps(r)))) waiter.wake();
    }
    const replica = this.#replica;
    for (const waiter of this.#resolutionWaiters) {
      if (!replica || waiter.txIds.every((id) => !replica.isPending(id))) waiter.wake();
    }
    if (!viewUnchanged) this.emit("change", { origin, version: this.version, writes: pointers.map((p) => p.toString()) });
    const pending = this.pendingCount;
    if (pending !== this.#lastPending) {
      this.#lastPending = pending;
      this.emit("pending", pending);
    }
  }

  #waitForChange(reads: Pointer[], signal?: AbortSignal): Promise<void> {
    return this.#wait(this.#retryWaiters, { reads }, signal);
  }

  #waitForResolution(txIds: string[], signal?: AbortSignal): Promise<void> {
    return this.#wait(this.#resolutionWaiters, { txIds }, signal);
  }

  #wait<W extends { wake: () => void }>(set: Set<W>, fields: Omit<W, "wake">, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        set.delete(waiter);
        reject(signal?.reason ?? new Error("aborted"));
      };
      const waiter = {
        ...fields,
        wake: () => {
          set.delete(waiter);
          signal?.removeEventListener("abort", onAbort);
          if (this.#closed) reject(this.#closed);
          else resolve();
        },
      } as W;
      set.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  async #until(promise: Promise<void>, signal?: AbortSignal): Promise<void> {
    if (!signal) return promise;
    signal.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
    });
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

/** Full-jitter exponential backoff between re-runs of a rejected transaction. */
function backoffMs(rejections: number): number {
  const ceiling = Math.min(1_000, 10 * 2 ** rejections);
  return Math.random() * ceiling;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  // Not null: closing a socket that is still connecting makes Node's `ws`
  // emit "closed before the connection was established" as an 'error', and an
  // 'error' with no listener is thrown. The socket is abandoned; its late
  // errors mean nothing.
  ws.onerror = () => {};
}

const decoder = new TextDecoder();

function decodeText(data: unknown): string {
  if (data instanceof ArrayBuffer) return decoder.decode(data);
  if (ArrayBuffer.isView(data)) return decoder.decode(data);
  if (Array.isArray(data)) return data.map(decodeText).join("");
  return String(data);
}

/**
 * The messages of one server frame, in order. `undefined` when the frame is
 * not a `ServerFrame` (not JSON, not an object, an array holding anything but
 * objects): such a frame is dropped. An object's `type` is not checked here:
 * one the client does not know is ignored, as any unknown message is.
 */
function parseFrame(text: string): ServerMessage[] | undefined {
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isServerFrame(frame)) return undefined;
  return Array.isArray(frame) ? frame : [frame];
}

function isServerFrame(frame: unknown): frame is ServerFrame {
  return Array.isArray(frame) ? frame.every(isObject) : isObject(frame);
}

/**
 * `url` with the query parameter `batch=1`, which opts the session into
 * batched frames. A `batch` already there is replaced (the server refuses
 * values but 0 and 1, and this client reads both frame forms). The other
 * parameters are kept as written: `searchParams.set` would re-encode them
 * all (`%20` as `+`, `flag` as `flag=`), and a token could arrive changed.
 */
function withBatching(url: string): string {
  let socketUrl: URL;
  try {
    socketUrl = new URL(url);
  } catch {
    throw new TypeError(`not a WebSocket URL: ${url}`);
  }
  const kept = socketUrl.search
    .slice(1)
    .split("&")
    .filter((pair) => pair !== "" && new URLSearchParams(pair).keys().next().value !== "batch");
  socketUrl.search = [...kept, "batch=1"].join("&");
  return socketUrl.toString();
}

function toWebSocketUrl(url: string): string {
  if (/^wss?:\/\//i.test(url)) return url;
  if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, "ws");
  const location = (globalThis as { location?: { href: string } }).location;
  if (location) {
    const absolute = new URL(url, location.href);
    absolute.protocol = absolute.protocol === "https:" ? "wss:" : "ws:";
    return absolute.toString();
  }
  throw new TypeError(`not a WebSocket URL: ${url}`);
}

function randomId(length: number): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = new Uint8Array(length);
  globalThis.crypto.getRandomValues(bytes);
  let out = "";
  for (const byte of bytes) out += alphabet[byte % alphabet.length];
  return out;
}

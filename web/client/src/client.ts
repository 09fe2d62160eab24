// The Concord client: one WebSocket session carrying documents (replicas with
// optimistic STM transactions), publish/subscribe, presence and JSON-RPC.
//
// The client is a shell around `ClientSession` (session/), the sans-IO state
// machine it shares with the Rust client: the machine decides everything a
// client decides (what to send and when, when a transaction runs again, when
// the server counts as silent, when to reconnect and what to resume), and
// this shell does the IO and turns the machine's events into promises and
// events for the application. The parts, as in the Rust client:
// - `connection.ts`: the socket, the token provider, the clock and the timer;
// - `document.ts`: `DocumentHandle`, transactions and presence;
// - `rpc.ts`: calls and registered procedures;
// - `pubsub.ts`: subscriptions and acknowledged publishes;
// - `errors.ts`: the errors; `frames.ts`: the wire's frames and URLs.
//
// The socket comes and goes; everything a session owns is re-established on
// each new socket ("resume"): documents are re-opened at the version held,
// pending transactions re-submitted under their original ids (an id the
// server has forgotten gets `outcome_unknown`, reported as
// `TransactionOutcomeUnknown`), topics re-subscribed, procedures
// re-registered and presence re-sent. Calls in flight when the socket drops
// fail: a call is not idempotent, so the caller decides.

import { Connection, type TokenProvider, type WebSocketConstructor } from "./connection.js";
import { DocumentHandle, type DocumentShell } from "./document.js";
import { AccessDeniedError, AuthError, ConnectionError, ServerError } from "./errors.js";
import { Emitter } from "./events.js";
import { toWebSocketUrl, withBatching } from "./frames.js";
import { DEFAULT_LIMITS, type Limits } from "./patch.js";
import { isValidDocId, type ServerMessage } from "./protocol.js";
import { PubSub, type MessageHandler } from "./pubsub.js";
import { Rpc, RPC_TIMEOUT_MS_DEFAULT, type RpcHandler } from "./rpc.js";
import { ClientSession, type LinkState, type SessionEvent } from "./session/index.js";
import type { Json } from "./json.js";
import type { ChangeEvent } from "./document.js";

export type { TokenProvider, WebSocketConstructor, WebSocketLike } from "./connection.js";
export { DocumentHandle, TRANSACT_ATTEMPTS_DEFAULT, type ChangeEvent, type DocumentEvents, type PresenceChange, type TransactOptions } from "./document.js";
export * from "./errors.js";
export { sameOriginUrl } from "./frames.js";
export { PROCEDURE_CALLS_SERVED_MAX, RPC_TIMEOUT_MS_DEFAULT, type RpcHandler } from "./rpc.js";

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

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
  /** How long to wait for `welcome` after the socket opens, and for the token provider (default 10 s). */
  handshakeTimeoutMs?: number;
  /** For `connect()`: give up if the first session is not up by then (default: keep trying). */
  connectTimeoutMs?: number;
  /** How often an idle session pings the server (default 5 s). */
  pingIntervalMs?: number;
  /**
   * How long without a word from the server (a message, or the answer to a
   * ping) before the session counts as dead: it is dropped and the client
   * reconnects (default 20 s). Checked at each ping.
   */
  silenceTimeoutMs?: number;
  /**
   * The token provider, for a server that requires authentication: called
   * on every connect and reconnect; its token is sent as the session's first
   * message (`auth`), and documents resume once the server's `welcome`
   * accepts it. Without it, no `auth` is sent (an open server).
   */
  token?: TokenProvider;
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

/** The server's `error` message being handled, and who took the error it became. */
interface ErrorContext {
  message: Extract<ServerMessage, { type: "error" }>;
  error: ServerError;
  /** A request (a transaction, a subscription, ...) was answered with it. */
  claimed: boolean;
  /** Its document's `error` event reported it. */
  reported: boolean;
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
  readonly #options: ConnectOptions;
  readonly #machine: ClientSession;
  readonly #connection: Connection;
  readonly #shell: DocumentShell;
  readonly #pubsub: PubSub;
  readonly #rpc: Rpc;
  #state: ConnectionState = "connecting";
  #sessions = 0;
  #identity: Identity | undefined;
  #authError: AuthError | undefined;
  #readyWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  readonly #docs = new Map<string, DocumentHandle>();
  /** The handle of each transaction the machine runs. */
  readonly #transactions = new Map<number, DocumentHandle>();
  #errorContext: ErrorContext | undefined;
  /** How a view change no event reported is told, for the message being handled. */
  #sweepOrigin: ChangeEvent["origin"] = "rollback";

  constructor(url: string, options: ConnectOptions = {}) {
    super();
    this.url = toWebSocketUrl(url);
    this.#options = options;
    this.clientId = options.clientId ?? randomId(10);
    this.limits = options.limits ?? DEFAULT_LIMITS;
    const native = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    const WebSocketImpl = options.WebSocket ?? native;
    if (!WebSocketImpl) {
      throw new ConnectionError("no WebSocket implementation: pass options.WebSocket (in Node, import from '@concord/client' resolves to the ws-based entry)");
    }
    const reconnect = options.reconnect === false ? undefined : options.reconnect;
    const ms = (value: number | undefined) => (value === undefined ? undefined : Math.max(0, value) * 1_000);
    const config = Object.fromEntries(
      Object.entries({
        reconnectBackoffInitialUs: ms(reconnect?.initialDelayMs),
        reconnectBackoffMaxUs: ms(reconnect?.maxDelayMs),
        pingIntervalUs: ms(options.pingIntervalMs),
        silenceTimeoutUs: ms(options.silenceTimeoutMs),
        limits: this.limits,
      }).filter(([, value]) => value !== undefined),
    );
    this.#machine = new ClientSession(config, this.clientId, randomSeed());
    const client = this;
    this.#shell = {
      machine: this.#machine,
      get sessionId() {
        return client.#machine.sessionId;
      },
      now: () => this.#connection.now(),
      pump: () => this.#connection.pump(),
      errorFor: (code, message, doc, txId) => this.#errorFor(code, message, doc, txId),
      notConnected: () => new ConnectionError(`not connected (${this.#state})`),
      onListenerError: (error) => this.onListenerError(error),
      forget: (doc) => {
        this.#docs.delete(doc);
      },
    };
    this.#pubsub = new PubSub(this.#shell);
    this.#rpc = new Rpc(this.#shell);
    this.#connection = new Connection(
      this.#machine,
      { url: withBatching(this.url), WebSocket: WebSocketImpl, token: options.token, handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000 },
      {
        onEvent: (event) => this.#onEvent(event),
        afterPump: () => {
          for (const doc of this.#docs.values()) doc._sweep(this.#sweepOrigin);
        },
        onMessage: (message) => this.#onMessage(message),
      },
    );
    this.#connection.start();
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** The server's id for the current session (changes on reconnect). */
  get session(): string | undefined {
    return this.#machine.sessionId;
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
    this.#connection.close();
    const error = new ConnectionError("client closed");
    for (const waiter of this.#readyWaiters.splice(0)) waiter.reject(error);
    this.#rpc.close(error);
    this.#pubsub.close(error);
    for (const doc of this.#docs.values()) doc._closed(error);
    this.#docs.clear();
    this.#transactions.clear();
  }

  /**
   * Drops the current socket as if the network failed (the client then
   * reconnects and resumes). For tests and for a "reconnect now" button.
   */
  dropConnection(): void {
    this.#connection.dropConnection();
  }

  /** Opens a document: resolves with its handle once it is live. */
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
      handle = new DocumentHandle(this, this.#shell, doc);
      this.#docs.set(doc, handle);
      this.#machine.open(doc);
      this.#connection.pump();
    }
    return handle;
  }

  // ---- publish / subscribe ----

  /**
   * Subscribes `handler` to a topic pattern (`*` one segment, `>` the rest);
   * resolves once acknowledged, with the unsubscribe function. Rejects with
   * an `AccessDeniedError` when the session's token does not allow it.
   */
  subscribe(topic: string, handler: (data: Json, topic: string) => void): Promise<() => void> {
    if (this.#state === "closed") return Promise.reject(new ConnectionError("client closed"));
    return this.#pubsub.subscribe(topic, handler as MessageHandler);
  }

  /**
   * Publishes `data` on `topic`. With `ack`, resolves when the server has
   * taken it; with `echo: false`, this session's own subscriptions do not get it.
   */
  async publish(topic: string, data: unknown, options: { ack?: boolean; echo?: boolean } = {}): Promise<void> {
    return this.#pubsub.publish(topic, data, options);
  }

  // ---- JSON-RPC ----

  /** Calls a procedure (on the server or on another client that registered it). */
  call<T = Json>(method: string, params?: unknown, options: { timeoutMs?: number } = {}): Promise<T> {
    return this.#rpc.call<T>(method, params, options.timeoutMs ?? this.#options.rpcTimeoutMs ?? RPC_TIMEOUT_MS_DEFAULT);
  }

  /** Sends a JSON-RPC notification (no answer). */
  notify(method: string, params?: unknown): void {
    this.#rpc.notify(method, params);
  }

  /**
   * Offers `method` to other clients, routed through the server; resolves
   * once the server acknowledged it (re-registered after each reconnect).
   * The handler may return a value or a promise; throwing an `RpcError`
   * answers with its code, anything else with -32603. Resolves with the
   * unregister function.
   */
  register(method: string, handler: RpcHandler): Promise<() => void> {
    if (this.#state === "closed") return Promise.reject(new ConnectionError("client closed"));
    return this.#rpc.register(method, handler);
  }

  // ---- internals ----

  /** @internal The handle that runs transaction `key`. */
  _ownTransaction(key: number, handle: DocumentHandle): void {
    this.#transactions.set(key, handle);
  }

  #setState(state: ConnectionState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", state);
  }

  #authFailed(error: AuthError): void {
    this.#authError = error;
    this.emit("auth_error", error);
  }

  /** One server message: fed to the machine, then its effects handed out. */
  #onMessage(message: ServerMessage): void {
    // A pending write may leave the view without a change of its own (a
    // rejection, a refused commit): where it may have changed the view are
    // the pending writes before and after. (Looked up only for those: this
    // runs for every message.)
    const dropsPending = message.type === "rejected" || (message.type === "error" && message.tx_id !== undefined);
    const doc = dropsPending && "doc" in message && typeof message.doc === "string" ? this.#docs.get(message.doc) : undefined;
    const replica = doc ? this.#machine.replica(doc.id) : undefined;
    const before = replica?.hasPending ? replica.pendingWrites().map(String) : [];
    if (message.type === "error") {
      const error = newServerError(message.code, message.message, message.doc, message.tx_id);
      this.#errorContext = { message, error, claimed: false, reported: false };
    }
    this.#sweepOrigin = message.type === "committed" ? "remote" : message.type === "snapshot" ? "snapshot" : "rollback";
    const context = this.#errorContext;
    try {
      this.#machine.handleMessage(message, this.#connection.now());
      if (doc) doc._rolledBack("rollback", [...before, ...(this.#machine.replica(doc.id)?.pendingWrites().map(String) ?? [])]);
      this.#connection.pump();
    } finally {
      this.#errorContext = undefined;
      this.#sweepOrigin = "rollback";
      if (context) this.#afterError(context);
    }
  }

  /** An error no request took: its document hears of it, or the client's `error` listeners. */
  #afterError(context: ErrorContext): void {
    const { message, error } = context;
    const doc = message.doc === undefined ? undefined : this.#docs.get(message.doc);
    if (doc && !context.reported) {
      doc.emit("error", error);
      return;
    }
    if (!context.claimed && !context.reported && (message.topic !== undefined || message.method !== undefined)) this.emit("error", error);
  }

  /** The error a refusal becomes: the one the `error` message being handled became, when it is that one. */
  #errorFor(code: string, message: string, doc?: string, txId?: string): ServerError {
    const context = this.#errorContext;
    if (context && context.message.code === code && context.message.message === message) {
      context.claimed = true;
      return context.error;
    }
    return newServerError(code, message, doc, txId);
  }

  #onEvent(event: SessionEvent): void {
    switch (event.kind) {
      case "link":
        this.#onLink(event.link);
        return;
      case "opened":
      case "changed":
      case "reset":
      case "reloading":
      case "presence":
        this.#docs.get(event.doc)?._onEvent(event);
        return;
      case "open_refused":
        if (this.#errorContext) this.#errorContext.reported = true;
        this.#docs.get(event.doc)?._onEvent(event);
        return;
      case "run":
        this.#transactions.get(event.transaction)?._run(event.transaction);
        return;
      case "settled": {
        const handle = this.#transactions.get(event.transaction);
        this.#transactions.delete(event.transaction);
        handle?._settled(event.transaction, event.settlement);
        return;
      }
      case "server_error":
        this.#onServerError();
        return;
      default:
        if (!this.#pubsub.onEvent(event)) this.#rpc.onEvent(event);
    }
  }

  #onLink(link: LinkState): void {
    const failure = this.#connection.onLink(link);
    if (link.state === "connected") {
      this.#identity = typeof link.sub === "string" ? { sub: link.sub, ...(typeof link.name === "string" ? { name: link.name } : {}) } : undefined;
      this.#authError = undefined;
      const resumed = this.#sessions > 0;
      this.#sessions++;
      this.#setState("open");
      this.emit("session", { session: link.session, resumed, ...(this.#identity ? { identity: this.#identity } : {}) });
      for (const waiter of this.#readyWaiters.splice(0)) waiter.resolve();
      return;
    }
    if (failure) this.#authFailed(failure);
    this.#pubsub.linkDown();
    for (const doc of this.#docs.values()) doc._disconnected();
    if (this.#options.reconnect === false) {
      this.close();
      return;
    }
    this.#setState(this.#sessions > 0 ? "reconnecting" : "connecting");
  }

  /** An error the machine does not track: its document's, a request's by name (older servers), or the application's. */
  #onServerError(): void {
    const context = this.#errorContext;
    if (!context) return;
    const { message, error } = context;
    context.reported = true;
    const doc = message.doc === undefined ? undefined : this.#docs.get(message.doc);
    if (doc) {
      doc.emit("error", error);
      return;
    }
    if (this.#claimUnnamed(error)) return;
    this.emit("error", error);
  }

  /**
   * For a server that does not name the topic or method in its errors:
   * hands a `forbidden` error to the request whose name its message names
   * (a registration, an unacknowledged subscription, an acknowledged
   * publish), and `already_registered` or `limit_reached` to the oldest
   * registration in flight. Returns whether one took it.
   */
  #claimUnnamed(error: ServerError): boolean {
    if (error.code === "limit_reached" || error.code === "already_registered") return this.#rpc.claimRegistration(error, "oldest");
    if (!(error instanceof AccessDeniedError)) return false;
    // The name as a word of the message: after a space, and followed by its end, a space, or punctuation that ends the sentence or clause.
    const names = (name: string) => new RegExp(`(^|\\s)${escapeRegExp(name)}($|\\s|[.,:;](\\s|$))`).test(error.message);
    return this.#rpc.claimRegistration(error, names) || this.#pubsub.claimByName(error, names);
  }
}

function newServerError(code: string, message: string, doc?: string, txId?: string): ServerError {
  return code === "forbidden" ? new AccessDeniedError(code, message, doc, txId) : new ServerError(code, message, doc, txId);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function randomId(length: number): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = new Uint8Array(length);
  globalThis.crypto.getRandomValues(bytes);
  let out = "";
  for (const byte of bytes) out += alphabet[byte % alphabet.length];
  return out;
}

/** The machine's seed: its jitter must differ between clients, or they would reconnect and re-run in step. */
function randomSeed(): number {
  return globalThis.crypto.getRandomValues(new Uint32Array(1))[0] as number;
}

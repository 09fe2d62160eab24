// The connection: the shell around `ClientSession` that owns the network and
// the clock. It opens sockets when the machine says `connect` (asking the
// token provider first), feeds every frame's messages to `handleMessage`,
// performs the machine's transmits (`text` → `ws.send`, `ping` → the `ping`
// message, `connect` → a new socket, `disconnect` → close it), keeps one
// timer armed at `pollTimeout()`, and hands the machine's events to the
// client. Time is microseconds from `performance.now()`.
//
// Authentication is the shell's: the token goes out as the socket's first
// message, and the refusals before `welcome` (`unauthorized`,
// `token_expired`, `rate_limited`, a provider that throws) become
// `AuthError`s with their own codes, reported once per socket.

import { AuthError, type ConnectionError, type ServerError } from "./errors.js";
import { decodeText, encodeMessage, isPingAnswer, parseFrame, PING_TEXT } from "./frames.js";
import type { ServerMessage } from "./protocol.js";
import type { ClientSession, LinkState, SessionEvent, Transmit } from "./session/index.js";

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

/**
 * Supplies the bearer token a session authenticates with. Called before
 * every connect and reconnect, so a short-lived token is fetched afresh each
 * time (e.g. from the application's own auth endpoint).
 */
export type TokenProvider = () => string | Promise<string>;

/** WebSocket `readyState` of an open socket. */
const OPEN = 1;
/** The close code a socket reports when it ended without a close frame. */
const CLOSE_ABNORMAL = 1006;
/**
 * Most timer delay, in milliseconds: `setTimeout` takes a signed 32-bit
 * delay and fires at once past it; a later deadline is re-armed on firing.
 */
const TIMER_DELAY_MS_MAX = 2 ** 31 - 1;

/** What the connection needs of the client. */
export interface ConnectionHooks {
  /** One of the machine's events. */
  onEvent(event: SessionEvent): void;
  /** The machine is quiet: every transmit performed, every event handled. */
  afterPump(): void;
  /** One message of a frame, to be fed to the machine (and pumped) by the client. */
  onMessage(message: ServerMessage): void;
}

export interface ConnectionOptions {
  url: string;
  WebSocket: WebSocketConstructor;
  token: TokenProvider | undefined;
  handshakeTimeoutMs: number;
}

export class Connection {
  readonly #machine: ClientSession;
  readonly #options: ConnectionOptions;
  readonly #hooks: ConnectionHooks;
  #ws: WebSocketLike | undefined;
  /** Counts connection attempts, so a token or a timer of an abandoned attempt is dropped. */
  #attempt = 0;
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** The machine time the timer is armed for. */
  #timerAt: number | undefined;
  #pumping = false;
  #closed = false;
  /** The authentication failure this socket met before `welcome`, reported with the link's change. */
  #authFailure: AuthError | undefined;
  /** This socket's authentication failure was reported: a close 4003 after an `unauthorized` error is the same failure. */
  #authReported = false;
  /** Pings sent on this socket: the `error` of a server that does not know `ping` is an answer only then. */
  #pings = 0;

  constructor(machine: ClientSession, options: ConnectionOptions, hooks: ConnectionHooks) {
    this.#machine = machine;
    this.#options = options;
    this.#hooks = hooks;
  }

  /** The machine's clock: microseconds, monotonic. */
  now(): number {
    return Math.floor(performance.now() * 1_000);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The first connection: the machine starts out connecting. */
  start(): void {
    this.#connect();
  }

  /**
   * Performs every transmit and hands over every event until the machine is
   * quiet, then re-arms the timer. Not re-entered: a command issued while
   * pumping (a listener publishing, say) is picked up by the pump running.
   * A listener's error does not stop it; the first one is thrown at the end.
   */
  pump(): void {
    if (this.#pumping || this.#closed) return;
    this.#pumping = true;
    let failure: { error: unknown } | undefined;
    try {
      for (;;) {
        let progressed = false;
        for (let transmit = this.#machine.pollSend(); transmit && !this.#closed; transmit = this.#machine.pollSend()) {
          progressed = true;
          try {
            this.#perform(transmit);
          } catch (error) {
            failure ??= { error };
          }
        }
        for (let event = this.#machine.pollEvent(); event && !this.#closed; event = this.#machine.pollEvent()) {
          progressed = true;
          try {
            this.#hooks.onEvent(event);
          } catch (error) {
            failure ??= { error };
          }
        }
        if (this.#closed) break;
        if (!progressed) {
          try {
            this.#hooks.afterPump();
          } catch (error) {
            failure ??= { error };
          }
          if (!this.#machine.hasOutput()) break;
        }
      }
    } finally {
      this.#pumping = false;
    }
    this.#arm();
    if (failure) throw failure.error;
  }

  /** Drops the current socket as if the network failed; the machine reconnects and resumes. */
  dropConnection(): void {
    if (!this.#ws) return;
    this.#abandon(4000, "dropped by the client");
    this.#machine.handleDisconnected(undefined, this.now());
    this.pump();
  }

  /** Stops for good: the socket is closed, no timer runs, the machine is left as it is. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#handshakeTimer);
    this.#attempt++;
    this.#abandon(1000, "client closed");
  }

  /** The link changed: the authentication failure to report with it, if this socket met one. */
  onLink(link: LinkState): AuthError | undefined {
    if (link.state === "connected") {
      // Welcomed: the handshake is over.
      clearTimeout(this.#handshakeTimer);
      this.#authFailure = undefined;
      return undefined;
    }
    if (this.#authReported) return undefined;
    const failure = this.#authFailure ?? (link.state === "unauthorized" ? new AuthError(link.message, "unauthorized") : undefined);
    this.#authFailure = undefined;
    if (failure) this.#authReported = true;
    return failure;
  }

  #perform(transmit: Transmit): void {
    switch (transmit.kind) {
      case "text":
        this.#sendText(transmit.text);
        return;
      case "ping":
        if (this.#sendText(PING_TEXT)) this.#pings++;
        return;
      case "connect":
        this.#connect();
        return;
      case "disconnect":
        this.#abandon(1000, "the client ends this session");
        return;
    }
  }

  #sendText(text: string): boolean {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(text);
    return true;
  }

  /** Opens a socket, with a token from the provider first when there is one. */
  #connect(): void {
    if (this.#closed) return;
    const attempt = ++this.#attempt;
    this.#authFailure = undefined;
    this.#authReported = false;
    this.#pings = 0;
    const provider = this.#options.token;
    if (!provider) {
      this.#openSocket(attempt, undefined);
      return;
    }
    // Asked from a microtask, never inside the constructor: a provider that
    // throws at once is reported to listeners added after `new Client`. A
    // provider that never answers must not stall the client: past the
    // handshake timeout the attempt counts as failed (and is retried).
    const token = Promise.resolve().then(provider);
    const timeoutMs = this.#options.handshakeTimeoutMs;
    this.#armHandshake(attempt, () => this.#tokenFailed(attempt, new Error(`no token within ${timeoutMs} ms`)));
    token.then(
      (value) => {
        if (attempt !== this.#attempt || this.#closed) return;
        clearTimeout(this.#handshakeTimer);
        if (typeof value !== "string" || value === "") {
          this.#tokenFailed(attempt, new TypeError(`the token provider returned ${value === "" ? "an empty string" : typeof value}, not a token`));
          return;
        }
        this.#openSocket(attempt, value);
      },
      (error: unknown) => this.#tokenFailed(attempt, error),
    );
  }

  #tokenFailed(attempt: number, error: unknown): void {
    if (attempt !== this.#attempt || this.#closed) return;
    clearTimeout(this.#handshakeTimer);
    // This attempt is over: a late answer from the provider is ignored.
    this.#attempt++;
    const message = `the token provider failed: ${(error as Error)?.message ?? String(error)}`;
    this.#authFailure = new AuthError(message, "token_provider", { cause: error });
    this.#machine.handleConnectFailed({ kind: "unauthorized", message }, this.now());
    this.pump();
  }

  #armHandshake(attempt: number, expire: () => void): void {
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = setTimeout(() => {
      if (attempt === this.#attempt && !this.#closed) expire();
    }, this.#options.handshakeTimeoutMs);
  }

  #openSocket(attempt: number, token: string | undefined): void {
    let ws: WebSocketLike;
    try {
      ws = new this.#options.WebSocket(this.#options.url);
    } catch (error) {
      this.#machine.handleConnectFailed({ kind: "failed", reason: `the socket could not be opened: ${(error as Error)?.message ?? String(error)}` }, this.now());
      this.pump();
      return;
    }
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      opened = true;
      if (token !== undefined) ws.send(encodeMessage({ type: "auth", token }));
      // No `welcome` within the handshake timeout: the attempt failed.
      this.#armHandshake(attempt, () => {
        if (this.#ws !== ws || this.#machine.isConnected) return;
        this.#abandon(1000, "no welcome");
        this.#machine.handleConnectFailed({ kind: "failed", reason: `no welcome within ${this.#options.handshakeTimeoutMs} ms` }, this.now());
        this.pump();
      });
      this.#machine.handleConnected(this.now());
      this.pump();
    };
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      this.#onFrame(ws, typeof event.data === "string" ? event.data : decodeText(event.data));
    };
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      this.#ws = undefined;
      clearTimeout(this.#handshakeTimer);
      const now = this.now();
      const code = event?.code;
      if (!opened) {
        this.#machine.handleConnectFailed({ kind: "failed", reason: `the connection could not be opened (${code ?? "no code"})` }, now);
      } else {
        this.#machine.handleDisconnected(code === undefined || code === CLOSE_ABNORMAL ? undefined : { code, reason: event.reason ?? "" }, now);
      }
      this.pump();
    };
    ws.onerror = () => {
      // A close event always follows; the machine hears of it there.
    };
  }

  #onFrame(ws: WebSocketLike, text: string): void {
    const messages = parseFrame(text);
    // Any frame proves the server alive, even one the client cannot read.
    this.#machine.handleHeard(this.now());
    // A garbled frame is dropped whole rather than trusted in part.
    if (!messages) return;
    // A batch is handled as its messages would be, one frame each. A message
    // may end this socket's session (a listener that drops or closes the
    // connection): the rest belong to it, not to the next one, which resumes
    // from what was applied. A message whose handling throws does not cost
    // the others theirs; the error still leaves the handler, as a single
    // frame's would.
    let failure: { error: unknown } | undefined;
    for (const message of messages) {
      if (this.#ws !== ws || this.#closed) break;
      try {
        this.#onMessage(message);
      } catch (error) {
        failure ??= { error };
      }
    }
    if (failure) throw failure.error;
  }

  #onMessage(message: ServerMessage): void {
    if (this.#pings > 0 && isPingAnswer(message)) {
      // Heard (above); nothing else to learn.
      return;
    }
    if (!this.#machine.isConnected && message.type === "error") {
      // A refusal of the session before `welcome`: the machine drops the
      // socket; the application learns why, with the refusal's own code.
      const code = message.code;
      if (code === "unauthorized" || code === "token_expired" || code === "rate_limited") {
        this.#authFailure = new AuthError(`${code}: ${message.message}`, code);
      }
    }
    this.#hooks.onMessage(message);
  }

  /** Detaches the current socket and closes it; the machine is not told. */
  #abandon(code: number, reason: string): void {
    const ws = this.#ws;
    this.#ws = undefined;
    if (!ws) return;
    detach(ws);
    try {
      ws.close(code, reason);
    } catch {
      // Already closing.
    }
  }

  /** One timer, armed at the machine's next deadline. */
  #arm(): void {
    if (this.#closed) return;
    const at = this.#machine.pollTimeout();
    if (at === this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    if (at === undefined) return;
    const delayMs = Math.min(Math.max(0, Math.ceil((at - this.now()) / 1_000)), TIMER_DELAY_MS_MAX);
    this.#timer = setTimeout(() => {
      this.#timerAt = undefined;
      if (this.#closed) return;
      this.#machine.handleTimeout(this.now());
      this.pump();
    }, delayMs);
  }
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


/** What the client's parts (documents, calls, subscriptions) need of it. */
export interface Shell {
  readonly machine: ClientSession;
  /** The machine's clock (µs). */
  now(): number;
  /** Performs what the machine queued and handles its events (see `Connection.pump`). */
  pump(): void;
  /**
   * The error a refusal (`code`, `message`) becomes: the very error the
   * server's `error` message being handled became, if it is that one (so a
   * request and the document's `error` event see the same object), else a
   * new one.
   */
  errorFor(code: string, message: string, doc?: string, txId?: string): ServerError;
  /** Why a request cannot go out now (`not connected (reconnecting)`). */
  notConnected(): ConnectionError;
  /** Reports an error a listener or handler threw. */
  onListenerError(error: unknown): void;
}

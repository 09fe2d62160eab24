// `ClientSession`: the client side of protocol v1 as a sans-IO state machine,
// a port of engine/src/session/ (module for module) held to the Rust machine
// by the trace vectors in engine/tests/vectors/session/, which
// test/unit/session-vectors.test.ts replays.
//
// It owns everything a client remembers across connections: the replicas,
// the transactions in flight and their pacing, presence, subscriptions,
// registrations and calls. It reads no clock and draws no entropy: time
// comes with every input in microseconds, and jitter from a generator seeded
// by the shell, so one seed and one sequence of inputs replay bit for bit.
//
// - inputs: `handleConnected`, `handleMessage`, `handleHeard`,
//   `handleDisconnected`, `handleConnectFailed`, `handleTimeout`, and the
//   application's commands (`open`, `transact`, `subscribe`, ...);
// - outputs: `pollSend` (frames, pings, and the instructions to connect or
//   drop the socket), `pollEvent` (what the application learns),
//   `pollTimeout` (when to call `handleTimeout` next).
//
// ## Transactions
// The application's transaction functions stay in the shell. The machine
// decides *when* one runs: it emits `run`; the shell then calls `beginRun`
// for the replica and the tx id, runs the function on it, and reports what
// the run did with `endRun`. The machine submits, waits for the outcome,
// re-runs after a retryable rejection (after the contention pause of
// `pacing.ts`), wakes `retry()` waiters when something they read changes,
// and finally emits `settled`.
//
// ## Resume (docs/protocol.md, section 8)
// On every new session the machine re-opens each document from the version
// its replica holds (or asks for a snapshot when the replica cannot be
// trusted), re-subscribes its topics and re-registers its procedures. When a
// document's `opened` arrives, every transaction still pending in the
// replica is (re)submitted under its original id. A resubmission answered
// `outcome_unknown` settles as `outcome_unknown` (an earlier send may have
// committed); a first submission answered so cannot have committed and is
// re-run.
//
// ## Layout (as engine/src/session/)
// - this file: inputs and outputs, the link (handshake, heartbeat,
//   dead-server detection, reconnect), dispatch;
// - `core.ts`: the machine's state and the send helpers every part uses;
// - `documents.ts`: replicas, opening and resuming, transactions and their outcomes;
// - `channels.ts`: subscriptions, publishes, calls and registrations;
// - `pacing.ts`: the contention pause and the reconnect backoff;
// - `rng.ts`: the seeded generator;
// - `types.ts`: configuration, events, transmits, settlements.

import type { Json } from "../json.js";
import { PROTOCOL_VERSION, type ErrorCode, type ServerMessage } from "../protocol.js";
import type { Replica } from "../replica.js";
import * as channels from "./channels.js";
import { SessionState, sortedKeys } from "./core.js";
import * as documents from "./documents.js";
import { addNs } from "./pacing.js";
import { DEFAULT_SESSION_CONFIG, type ConnectFailure, type LinkState, type RunReport, type SendRefusal, type SessionConfig, type SessionEvent, type SessionStats, type Transmit } from "./types.js";

export * from "./types.js";
export { SessionRng } from "./rng.js";
export { Backoff, Contention, CONTENTION_LEVEL_MAX } from "./pacing.js";

/** Close codes the machine treats apart (docs/protocol.md, section 6). */
const CLOSE_UNAUTHORIZED = 4003;
const CLOSE_TOKEN_EXPIRED = 4004;

/** The client side of protocol v1; see the file's comment. */
export class ClientSession {
  /** @internal The machine's state, shared by its modules. */
  readonly s: SessionState;

  /**
   * A session whose shell is connecting now (it reports the outcome with
   * `handleConnected` or `handleConnectFailed`). `clientId` prefixes every
   * tx id (alphanumeric, short); `seed` (an unsigned 32-bit integer) seeds
   * every jitter.
   */
  constructor(config: Partial<SessionConfig>, clientId: string, seed: number) {
    this.s = new SessionState({ ...DEFAULT_SESSION_CONFIG, ...config }, clientId, seed);
  }

  get config(): Readonly<SessionConfig> {
    return this.s.config;
  }

  get stats(): Readonly<SessionStats> {
    return { ...this.s.stats };
  }

  /** The current session's id, when connected. */
  get sessionId(): string | undefined {
    return this.s.link.kind === "up" ? this.s.link.session : undefined;
  }

  /** The current session's number (see the `rpc` event). */
  get epoch(): number {
    return this.s.epoch;
  }

  get isConnected(): boolean {
    return this.s.isConnected();
  }

  // ----- outputs -----

  /** The next thing to do on the network. */
  pollSend(): Transmit | undefined {
    return this.s.transmits.shift();
  }

  /** The next thing the application learns. */
  pollEvent(): SessionEvent | undefined {
    return this.s.events.shift();
  }

  /** Whether `pollSend` or `pollEvent` has something (TypeScript's addition, for a shell's loop). */
  hasOutput(): boolean {
    return this.s.transmits.length > 0 || this.s.events.length > 0;
  }

  /** When `handleTimeout` is due next (µs), if anything waits on time. */
  pollTimeout(): number | undefined {
    const link = this.s.link;
    let at = link.kind === "up" ? link.nextPing : link.kind === "down" ? link.reconnectAt : undefined;
    for (const transact of this.s.transactions.values()) {
      const paused = documents.pausedUntil(transact);
      if (paused !== undefined && (at === undefined || paused < at)) at = paused;
    }
    return at;
  }

  // ----- the link -----

  /** The shell's connection is open; `welcome` comes next. */
  handleConnected(now: number): void {
    const kind = this.s.link.kind;
    if (kind === "connecting" || kind === "down") this.s.link = { kind: "handshaking", since: now };
  }

  /** The shell's connection attempt failed. */
  handleConnectFailed(failure: ConnectFailure, now: number): void {
    const s = this.s;
    if (s.link.kind === "up") return;
    const delay = s.reconnectBackoff.nextDelayNs(s.rng);
    s.link = { kind: "down", reconnectAt: addNs(now, delay) };
    const link: LinkState = failure.kind === "unauthorized" ? { state: "unauthorized", message: failure.message } : { state: "disconnected", reason: failure.reason };
    s.events.push({ kind: "link", link });
  }

  /**
   * The connection ended (the server closed it, with `close` = code and
   * reason when it sent a close frame, or it broke). Ignored when the machine
   * itself asked for the disconnect.
   */
  handleDisconnected(close: { code: number; reason: string } | undefined, now: number): void {
    const s = this.s;
    if (s.link.kind !== "up" && s.link.kind !== "handshaking") return;
    const reason = close ? `the server closed the session (${close.code}: ${close.reason})` : "the connection was lost";
    if (close?.code === CLOSE_TOKEN_EXPIRED) {
      // A fresh token, at once: resume loses nothing.
      this.#reconnectNow(reason, now);
    } else if (close?.code === CLOSE_UNAUTHORIZED) {
      const refusal = s.refusalMessage;
      s.refusalMessage = undefined;
      const message = refusal ?? (close.reason !== "" ? close.reason : reason);
      const delay = s.reconnectBackoff.nextDelayNs(s.rng);
      this.#dropSession({ state: "unauthorized", message }, addNs(now, delay), false);
    } else {
      this.#disconnect(reason, now);
    }
  }

  /** Heartbeats, dead-server detection, reconnects and paused transactions whose time has come. */
  handleTimeout(now: number): void {
    const s = this.s;
    const link = s.link;
    if (link.kind === "down" && link.reconnectAt <= now) {
      s.link = { kind: "connecting" };
      s.transmits.push({ kind: "connect" });
    } else if (link.kind === "up" && link.nextPing <= now) {
      if (Math.max(0, now - link.lastHeard) > s.config.silenceTimeoutUs) {
        this.#disconnect("the server went silent", now);
      } else {
        link.nextPing = now + s.config.pingIntervalUs;
        s.transmits.push({ kind: "ping" });
        this.#resendDropped();
      }
    }
    documents.releasePaused(s, now);
  }

  /** A frame that carries no message the machine knows (a pong) still proves the server alive. */
  handleHeard(now: number): void {
    if (this.s.link.kind === "up") this.s.link.lastHeard = now;
  }

  /** One message from the server (one the shell does not know is ignored). */
  handleMessage(message: ServerMessage, now: number): void {
    const s = this.s;
    const link = s.link;
    if (link.kind === "up") link.lastHeard = now;
    else if (link.kind === "handshaking") return this.#onHandshake(message, now);
    else return;
    switch (message.type) {
      case "welcome":
        return;
      case "snapshot":
        return documents.onSnapshot(s, message.doc, message.version, message.value, now);
      case "opened":
        return documents.onOpened(s, message.doc, message.version);
      case "change": {
        const { doc, version, tx_id, patch } = message;
        return documents.onChange(s, { doc, version, tx_id, patch }, now);
      }
      case "committed":
        return documents.onCommitted(s, message.doc, message.tx_id, message.version, now);
      case "rejected":
        return documents.onRejected(s, message.doc, message.tx_id, message.rejection, now);
      case "message":
        s.events.push({ kind: "message", topic: message.topic, data: message.data });
        return;
      case "subscribed":
        return channels.onSubscribed(s, message.topic);
      case "published":
        if (s.acks.delete(message.ack)) s.events.push({ kind: "published", ack: message.ack });
        return;
      case "presence":
        if (s.docs.has(message.doc)) {
          s.events.push({ kind: "presence", doc: message.doc, session: message.session, event: message.event, state: message.state });
        }
        return;
      case "rpc":
        return channels.onRpc(s, message.message);
      case "registered":
        return channels.onRegistered(s, message.method);
      case "error":
        return this.#onError(message.code, message.message, message.doc ?? undefined, message.tx_id ?? undefined, message.topic ?? undefined, message.method ?? undefined, now);
      default:
        return;
    }
  }

  #onHandshake(message: ServerMessage, now: number): void {
    const s = this.s;
    if (message.type === "welcome" && message.protocol === PROTOCOL_VERSION) {
      s.link = { kind: "up", session: message.session, since: now, lastHeard: now, nextPing: now + s.config.pingIntervalUs };
      s.epoch += 1;
      s.stats.connects += 1;
      s.reconnectBackoff.reset();
      const link: LinkState = { state: "connected", session: message.session };
      if (typeof message.sub === "string") link.sub = message.sub;
      if (typeof message.name === "string") link.name = message.name;
      s.events.push({ kind: "link", link });
      documents.reopenDocuments(s);
      channels.renewChannels(s);
    } else if (message.type === "welcome") {
      s.transmits.push({ kind: "disconnect" });
      this.handleConnectFailed({ kind: "failed", reason: `the server speaks protocol ${message.protocol}, this client ${PROTOCOL_VERSION}` }, now);
    } else if (message.type === "error" && (message.code === "unauthorized" || message.code === "token_expired")) {
      s.transmits.push({ kind: "disconnect" });
      this.handleConnectFailed({ kind: "unauthorized", message: message.message }, now);
    } else {
      s.transmits.push({ kind: "disconnect" });
      this.handleConnectFailed({ kind: "failed", reason: "the first message was not welcome" }, now);
    }
  }

  /** Drops the session (the shell is told to) and reconnects after the backoff. */
  #disconnect(reason: string, now: number): void {
    const delay = this.s.reconnectBackoff.nextDelayNs(this.s.rng);
    this.#dropSession({ state: "disconnected", reason }, addNs(now, delay), true);
  }

  /**
   * Drops the session and reconnects at once (with a fresh token). A session
   * that lasted less than `reconnectBackoffMaxUs` (a token provider handing
   * out tokens about to expire) waits out a backoff of its own instead, so it
   * cannot make the client spin.
   */
  #reconnectNow(reason: string, now: number): void {
    const s = this.s;
    const link = s.link;
    if (link.kind !== "up" && link.kind !== "handshaking") return;
    let delay = 0;
    if (Math.max(0, now - link.since) < s.config.reconnectBackoffMaxUs) delay = s.expiryBackoff.nextDelayNs(s.rng);
    else s.expiryBackoff.reset();
    this.#dropSession({ state: "disconnected", reason }, addNs(now, delay), true);
  }

  /** Ends the session: the link waits to reconnect at `reconnectAt`, showing `state`; `tellShell` asks the shell to drop the socket. */
  #dropSession(state: LinkState, reconnectAt: number, tellShell: boolean): void {
    const s = this.s;
    if (s.link.kind !== "up" && s.link.kind !== "handshaking") return;
    if (s.link.kind === "up") s.stats.disconnects += 1;
    s.link = { kind: "down", reconnectAt };
    // Frames not yet taken would go to a dead socket.
    s.transmits = s.transmits.filter((transmit) => transmit.kind !== "text" && transmit.kind !== "ping");
    if (tellShell) s.transmits.push({ kind: "disconnect" });
    s.events.push({ kind: "link", link: state });
    for (const doc of s.docs.values()) doc.status = "disconnected";
    channels.endSessionChannels(s);
  }

  /**
   * Sends again what may have been dropped by the server's rate limit and
   * still awaits an answer: opens, subscriptions, registrations. A duplicate
   * of one that was merely slow is harmless: the server answers it again.
   */
  #resendDropped(): void {
    documents.resendDroppedOpens(this.s);
    channels.resendUnansweredChannels(this.s);
  }

  #onError(code: ErrorCode | string, message: string, doc: string | undefined, txId: string | undefined, topic: string | undefined, method: string | undefined, now: number): void {
    const s = this.s;
    s.stats.serverErrors += 1;
    if (topic !== undefined) return channels.onTopicRefused(s, topic, code, message);
    if (method !== undefined) return channels.onMethodRefused(s, method, code, message);
    if (doc !== undefined && txId !== undefined) return documents.onCommitRefused(s, doc, txId, code, message, now);
    if (doc !== undefined) return documents.onDocError(s, doc, code, message);
    if (code === "already_registered") return channels.onRegisterRefused(s, message);
    if (code === "token_expired") {
      // The session's token expired: the server closes it (4004) after a
      // grace period; reconnecting now with a fresh token loses nothing
      // (every document resumes) and skips the wait.
      return this.#reconnectNow(`the token expired: ${message}`, now);
    }
    if (code === "unauthorized") {
      // A close with 4003 follows.
      s.refusalMessage = message;
      s.events.push({ kind: "link", link: { state: "unauthorized", message } });
      return;
    }
    s.events.push({ kind: "server_error", code, message });
  }

  // ----- documents (documents.ts) -----

  /** Opens `doc` (again): `opened` follows once it is live, at once if it already is. */
  open(doc: string): void {
    documents.open(this.s, doc);
  }

  /** Forgets `doc`: its transactions settle as `closed`. */
  close(doc: string): void {
    documents.close(this.s, doc);
  }

  /** The replica of `doc`, once its first snapshot is in. */
  replica(doc: string): Replica | undefined {
    return documents.replica(this.s, doc);
  }

  /** The documents the session holds, in id order. */
  documents(): string[] {
    return sortedKeys(this.s.docs);
  }

  /** Whether `doc` is live (see the `opened` event). */
  isOpen(doc: string): boolean {
    return documents.isOpen(this.s, doc);
  }

  /** Sets (or, with `null`, clears) this session's presence on `doc`; it is re-sent after every reopen. */
  setPresence(doc: string, state: Json): void {
    documents.setPresence(this.s, doc, state);
  }

  /** Starts a transaction on `doc`, re-run after up to `attemptsMax` rejections; returns its key. */
  transact(doc: string, attemptsMax: number, now: number): number {
    return documents.transact(this.s, doc, attemptsMax, now);
  }

  /** The replica and tx id for the run the `run` event asked for; `undefined` if the transaction is not waiting to run. */
  beginRun(transaction: number): { replica: Replica; txId: string } | undefined {
    return documents.beginRun(this.s, transaction);
  }

  /** Whether the transaction's run awaits the server's answer (TypeScript's addition: the shell abandons only a transaction that is not in flight). */
  isSubmitted(transaction: number): boolean {
    return this.s.transactions.get(transaction)?.phase.kind === "submitted";
  }

  /** What the run `beginRun` started did. */
  endRun(transaction: number, report: RunReport, now: number): void {
    documents.endRun(this.s, transaction, report, now);
  }

  // ----- channels (channels.ts) -----

  subscribe(pattern: string): void {
    channels.subscribe(this.s, pattern);
  }

  unsubscribe(pattern: string): void {
    channels.unsubscribe(this.s, pattern);
  }

  /** Publishes `data` on `topic`; with `confirm`, returns the ack that `published` or `publish_refused` answers. */
  publish(topic: string, data: Json, echo: boolean, confirm: boolean): { ack: number | undefined } | { refused: SendRefusal } {
    return channels.publish(this.s, topic, data, echo, confirm);
  }

  /** Calls `method` under the application's key (unique among its calls in flight; the JSON-RPC id). */
  call(call: number, method: string, params: Json | undefined): SendRefusal | undefined {
    return channels.call(this.s, call, method, params);
  }

  cancelCall(call: number): void {
    channels.cancelCall(this.s, call);
  }

  notify(method: string, params: Json | undefined): SendRefusal | undefined {
    return channels.notify(this.s, method, params);
  }

  reply(epoch: number, message: Json): void {
    channels.reply(this.s, epoch, message);
  }

  register(method: string): void {
    channels.register(this.s, method);
  }

  unregister(method: string): void {
    channels.unregister(this.s, method);
  }
}

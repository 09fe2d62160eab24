// The state a `ClientSession` keeps, and the helpers its parts share
// (queueing messages and refusing oversized ones). The Rust machine is one
// struct whose `impl` is spread over mod.rs, documents.rs and channels.rs;
// here the struct is `SessionState`, and each module's functions take it.

import type { ClientMessage } from "../protocol.js";
import type { DocState, Transact } from "./documents.js";
import type { Registration, TopicState } from "./channels.js";
import { Backoff } from "./pacing.js";
import { SessionRng } from "./rng.js";
import type { SendRefusal, SessionConfig, SessionEvent, SessionStats, Transmit } from "./types.js";

export type Link =
  /** The shell is connecting (it was told to, or is on its first attempt). */
  | { kind: "connecting" }
  /** The socket is open; `welcome` has not arrived. */
  | { kind: "handshaking"; since: number }
  /** A session: `lastHeard` is when anything last came from the server (it proves it alive). */
  | { kind: "up"; session: string; since: number; lastHeard: number; nextPing: number }
  /** Waiting to reconnect at this time. */
  | { kind: "down"; reconnectAt: number };

export class SessionState {
  readonly config: SessionConfig;
  readonly clientId: string;
  readonly rng: SessionRng;
  link: Link = { kind: "connecting" };
  readonly reconnectBackoff: Backoff;
  /** Paces reconnects after sessions whose token expired right away. */
  readonly expiryBackoff: Backoff;
  /** Counts sessions, so answers meant for an earlier one are dropped. */
  epoch = 0;
  txSeq = 0;
  nextTransaction = 0;
  /** Drained by the shell after every input (`pollSend`). */
  transmits: Transmit[] = [];
  /** Drained by the shell after every input (`pollEvent`). */
  readonly events: SessionEvent[] = [];
  readonly stats: SessionStats = {
    committed: 0,
    readOnly: 0,
    rejections: 0,
    reruns: 0,
    stmWaits: 0,
    stmWakeups: 0,
    blockedWaits: 0,
    connects: 0,
    disconnects: 0,
    resyncs: 0,
    serverErrors: 0,
  };
  /** Iterated in id order (`sortedKeys`), as Rust's `BTreeMap`. */
  readonly docs = new Map<string, DocState>();
  /** Keys only ever grow, so insertion order is key order, as Rust's `BTreeMap`. */
  readonly transactions = new Map<number, Transact>();
  /** The transaction waiting on each pending tx id. */
  readonly waiting = new Map<string, number>();
  /** Iterated in pattern order (`sortedKeys`). */
  readonly topics = new Map<string, TopicState>();
  /** Iterated in method order (`sortedKeys`). */
  readonly procedures = new Map<string, Registration>();
  /**
   * Methods whose `register` went out in this session and awaits its answer,
   * in order: the server answers in order, and its `already_registered`
   * error does not name the method.
   */
  registersInFlight: string[] = [];
  readonly calls = new Set<number>();
  /** Publishes awaiting `published`, with their topic. */
  readonly acks = new Map<number, string>();
  nextAck = 0;
  /** The message of an `unauthorized` error, shown when the close (4003) that follows it arrives. */
  refusalMessage: string | undefined;

  constructor(config: SessionConfig, clientId: string, seed: number) {
    this.config = config;
    this.clientId = clientId;
    this.rng = new SessionRng(seed);
    this.reconnectBackoff = new Backoff(config.reconnectBackoffInitialUs, config.reconnectBackoffMaxUs);
    this.expiryBackoff = this.reconnectBackoff.clone();
  }

  isConnected(): boolean {
    return this.link.kind === "up";
  }

  /** Queues a small control message for the current session. */
  send(message: ClientMessage): void {
    // Control messages are far below any limit; a refusal here would be a
    // bug of ours, and dropping it is what a dead link does anyway.
    this.trySend(message);
  }

  /**
   * Queues a message that carries user data, refusing it when it is over the
   * size limit: the server would refuse it without naming it, and whoever
   * waits for its answer would wait forever. Not connected, it is checked and
   * dropped: everything a new session needs is re-sent from the machine's
   * state on connect.
   */
  trySend(message: ClientMessage): SendRefusal | undefined {
    const text = this.encode(message);
    if (typeof text !== "string") return text;
    if (this.isConnected()) this.transmits.push({ kind: "text", text });
    return undefined;
  }

  /** The frame text of `message`, or the refusal the server would give. */
  encode(message: ClientMessage): string | SendRefusal {
    let text: string;
    try {
      text = JSON.stringify(message);
    } catch (error) {
      return { kind: "refused", code: "bad_message", message: String((error as Error)?.message ?? error) };
    }
    const bytesMax = this.config.outgoingMessageBytesMax;
    const bytes = utf8Length(text);
    if (bytes > bytesMax) {
      return { kind: "refused", code: "message_too_large", message: `message is ${bytes} bytes, over the limit of ${bytesMax}` };
    }
    return text;
  }
}

/** A map's keys in ascending order (Rust's `BTreeMap` iteration; ids and names are compared by code unit, which for ASCII is byte order). */
export function sortedKeys<K extends string | number>(map: ReadonlyMap<K, unknown> | ReadonlySet<K>): K[] {
  const keys = [...map.keys()];
  return typeof keys[0] === "number" ? keys.sort((a, b) => (a as number) - (b as number)) : keys.sort();
}

/** The UTF-8 length of `text` without encoding it (lone surrogates count as U+FFFD, as `TextEncoder` writes them). */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

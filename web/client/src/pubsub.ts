// Publish/subscribe at the client: the application's handlers per pattern
// and the publishes awaiting the server's acknowledgement. The machine keeps
// the subscriptions themselves (re-sent on every session) and the acks in
// flight (refused when their session ends); this is where its events become
// resolved or rejected promises and calls of handlers.

import { ConnectionError, type ServerError } from "./errors.js";
import { toJson, type Json } from "./json.js";
import { topicMatches } from "./protocol.js";
import type { SendRefusal, SessionEvent } from "./session/index.js";
import type { Shell } from "./connection.js";

export type MessageHandler = (data: Json, topic: string) => void;

interface Waiter {
  resolve: () => void;
  reject: (error: Error) => void;
}

interface Subscription {
  handlers: Set<MessageHandler>;
  /** The server confirmed it in this session. */
  acked: boolean;
  /** `subscribe` calls waiting for the confirmation. */
  waiters: Waiter[];
}

export class PubSub {
  readonly #shell: Shell;
  readonly #subscriptions = new Map<string, Subscription>();
  readonly #acks = new Map<number, Waiter & { topic: string }>();

  constructor(shell: Shell) {
    this.#shell = shell;
  }

  /** Adds `handler` to `topic`'s; resolves once the server confirmed the subscription. */
  async subscribe(topic: string, handler: MessageHandler): Promise<() => void> {
    let sub = this.#subscriptions.get(topic);
    const isNew = !sub;
    if (!sub) {
      sub = { handlers: new Set(), acked: false, waiters: [] };
      this.#subscriptions.set(topic, sub);
    }
    sub.handlers.add(handler);
    const unsubscribe = () => {
      const current = this.#subscriptions.get(topic);
      if (!current || !current.handlers.delete(handler)) return;
      if (current.handlers.size === 0) {
        this.#subscriptions.delete(topic);
        this.#shell.machine.unsubscribe(topic);
        this.#shell.pump();
      }
    };
    const pending = sub;
    const acked = pending.acked ? Promise.resolve() : new Promise<void>((resolve, reject) => pending.waiters.push({ resolve, reject }));
    if (isNew) {
      this.#shell.machine.subscribe(topic);
      this.#shell.pump();
    }
    await acked;
    return unsubscribe;
  }

  /** Publishes `data` on `topic`; with `ack`, resolves once the server took it. */
  async publish(topic: string, data: unknown, options: { ack?: boolean; echo?: boolean } = {}): Promise<void> {
    const result = this.#shell.machine.publish(topic, toJson(data), options.echo !== false, options.ack === true);
    if ("refused" in result) throw this.#refusalError(result.refused);
    const ack = result.ack;
    const acked = ack === undefined ? undefined : new Promise<void>((resolve, reject) => this.#acks.set(ack, { topic, resolve, reject }));
    this.#shell.pump();
    return acked;
  }

  /** Handles the machine's pub/sub events; false for any other. */
  onEvent(event: SessionEvent): boolean {
    switch (event.kind) {
      case "subscribed": {
        const sub = this.#subscriptions.get(event.pattern);
        if (sub) {
          sub.acked = true;
          for (const waiter of sub.waiters.splice(0)) waiter.resolve();
        }
        return true;
      }
      case "subscribe_refused": {
        const sub = this.#subscriptions.get(event.pattern);
        this.#subscriptions.delete(event.pattern);
        const error = this.#shell.errorFor(event.code, event.message);
        for (const waiter of sub?.waiters.splice(0) ?? []) waiter.reject(error);
        return true;
      }
      case "published":
        this.#takeAck(event.ack)?.resolve();
        return true;
      case "publish_refused":
        this.#takeAck(event.ack)?.reject(event.refusal.kind === "not_connected" ? new ConnectionError("connection lost") : this.#refusalError(event.refusal));
        return true;
      case "message":
        this.#deliver(event.topic, event.data);
        return true;
      default:
        return false;
    }
  }

  /** The session ended: no subscription is confirmed any more. */
  linkDown(): void {
    for (const sub of this.#subscriptions.values()) sub.acked = false;
  }

  /** The client closed: everything waiting fails with `error`. */
  close(error: Error): void {
    for (const sub of this.#subscriptions.values()) for (const waiter of sub.waiters.splice(0)) waiter.reject(error);
    for (const ack of this.#acks.values()) ack.reject(error);
    this.#acks.clear();
  }

  /**
   * For a server that does not name the topic in its errors: hands a
   * refusal to the unconfirmed subscription or the acknowledged publish
   * whose name the message names (`names`). Returns whether one took it.
   */
  claimByName(error: ServerError, names: (name: string) => boolean): boolean {
    for (const [pattern, sub] of this.#subscriptions) {
      if (sub.acked || !names(pattern)) continue;
      this.#subscriptions.delete(pattern);
      // The machine would send it again at every heartbeat otherwise.
      this.#shell.machine.unsubscribe(pattern);
      for (const waiter of sub.waiters.splice(0)) waiter.reject(error);
      return true;
    }
    for (const [ack, waiter] of this.#acks) {
      if (!names(waiter.topic)) continue;
      this.#acks.delete(ack);
      waiter.reject(error);
      return true;
    }
    return false;
  }

  #takeAck(ack: number): Waiter | undefined {
    const waiter = this.#acks.get(ack);
    this.#acks.delete(ack);
    return waiter;
  }

  /** A message to every handler of every pattern it matches, once per handler. */
  #deliver(topic: string, data: Json): void {
    const delivered = new Set<MessageHandler>();
    for (const [pattern, sub] of this.#subscriptions) {
      if (!topicMatches(pattern, topic)) continue;
      for (const handler of sub.handlers) {
        if (delivered.has(handler)) continue;
        delivered.add(handler);
        try {
          handler(data, topic);
        } catch (error) {
          this.#shell.onListenerError(error);
        }
      }
    }
  }

  #refusalError(refusal: SendRefusal): Error {
    if (refusal.kind === "not_connected") return this.#shell.notConnected();
    if (refusal.kind === "too_many_calls") return new ConnectionError("too many requests in flight");
    return this.#shell.errorFor(refusal.code, refusal.message);
  }
}

// JSON-RPC at the client: calls (their ids, their timeouts) and the
// procedures this client registered. The machine tracks the calls in flight
// (lost when their session ends) and the registrations (re-sent on every
// session); a call's timeout is the shell's, which then stops waiting with
// `cancelCall`. A request for one of our procedures arrives as the machine's
// `rpc` event and is answered through `reply` on the session that carried it.

import { ConnectionError, RpcError, type ServerError } from "./errors.js";
import { isObject, toJson, type Json } from "./json.js";
import type { SendRefusal, SessionEvent } from "./session/index.js";
import type { Shell } from "./connection.js";

export type RpcHandler = (params: Json | undefined, context: { method: string }) => unknown;

const JSONRPC = "2.0";
/** Default timeout of a call (ms). */
export const RPC_TIMEOUT_MS_DEFAULT = 10_000;
/**
 * Most requests for our procedures being served at once; past it a request
 * is answered at once with −32002 (busy) rather than queued without bound.
 */
export const PROCEDURE_CALLS_SERVED_MAX = 256;

interface Call {
  method: string;
  resolve: (value: Json) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Waiter {
  resolve: () => void;
  reject: (error: Error) => void;
}

export class Rpc {
  readonly #shell: Shell;
  readonly #calls = new Map<number, Call>();
  readonly #methods = new Map<string, RpcHandler>();
  /** `register` calls waiting for the server's answer, per method. */
  readonly #registering = new Map<string, { handler: RpcHandler; waiters: Waiter[] }>();
  #seq = 0;
  #serving = 0;

  constructor(shell: Shell) {
    this.#shell = shell;
  }

  /** Calls a procedure (on the server or on another client that registered it). */
  call<T>(method: string, params: unknown, timeoutMs: number): Promise<T> {
    const key = ++this.#seq;
    const refusal = this.#shell.machine.call(key, method, params === undefined ? undefined : toJson(params));
    if (refusal) return Promise.reject(this.#refusalError(refusal));
    const answered = new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#calls.delete(key);
        this.#shell.machine.cancelCall(key);
        reject(new RpcError(-32000, `call ${method} timed out after ${timeoutMs} ms`, "timeout"));
      }, timeoutMs);
      this.#calls.set(key, { method, resolve: resolve as (value: Json) => void, reject, timer });
    });
    this.#shell.pump();
    return answered;
  }

  /** Sends a JSON-RPC notification (no answer). */
  notify(method: string, params: unknown): void {
    const refusal = this.#shell.machine.notify(method, params === undefined ? undefined : toJson(params));
    if (refusal) throw this.#refusalError(refusal);
    this.#shell.pump();
  }

  /** Offers `method`; resolves once the server acknowledged it, with the unregister function. */
  async register(method: string, handler: RpcHandler): Promise<() => void> {
    this.#methods.set(method, handler);
    let entry = this.#registering.get(method);
    if (!entry) {
      entry = { handler, waiters: [] };
      this.#registering.set(method, entry);
    }
    entry.handler = handler;
    const waiters = entry.waiters;
    const acknowledged = new Promise<void>((resolve, reject) => waiters.push({ resolve, reject }));
    this.#shell.machine.register(method);
    this.#shell.pump();
    await acknowledged;
    return () => {
      if (this.#methods.get(method) !== handler) return;
      this.#methods.delete(method);
      this.#shell.machine.unregister(method);
      this.#shell.pump();
    };
  }

  /** Handles the machine's RPC events; false for any other. */
  onEvent(event: SessionEvent): boolean {
    switch (event.kind) {
      case "call_answered": {
        const call = this.#takeCall(event.call);
        if (!call) return true;
        if (event.result.ok) {
          call.resolve(event.result.value);
        } else {
          const error = isObject(event.result.error) ? (event.result.error as Record<string, Json>) : {};
          const code = typeof error.code === "number" ? error.code : -32603;
          call.reject(new RpcError(code, typeof error.message === "string" ? error.message : "error", error.data));
        }
        return true;
      }
      case "call_lost":
        this.#takeCall(event.call)?.reject(new ConnectionError("connection lost"));
        return true;
      case "rpc":
        void this.#serve(event.epoch, event.message);
        return true;
      case "registered":
        this.#settleRegistration(event.method);
        return true;
      case "register_refused":
        this.#settleRegistration(event.method, this.#shell.errorFor(event.code, event.message));
        return true;
      default:
        return false;
    }
  }

  /** The client closed: every call and registration waiting fails with `error`. */
  close(error: Error): void {
    for (const [key, call] of this.#calls) {
      clearTimeout(call.timer);
      call.reject(error);
      this.#calls.delete(key);
    }
    for (const entry of this.#registering.values()) for (const waiter of entry.waiters.splice(0)) waiter.reject(error);
    this.#registering.clear();
  }

  /**
   * For a server that does not name the method in its errors: hands a
   * refusal to the registration in flight whose method the message names
   * (`names`), or with `oldest`, to the oldest one. Returns whether one took it.
   */
  claimRegistration(error: ServerError, names: ((name: string) => boolean) | "oldest"): boolean {
    for (const method of this.#registering.keys()) {
      if (names !== "oldest" && !names(method)) continue;
      // The machine would send it again otherwise.
      this.#shell.machine.unregister(method);
      this.#settleRegistration(method, error);
      return true;
    }
    return false;
  }

  #settleRegistration(method: string, error?: Error): void {
    const entry = this.#registering.get(method);
    this.#registering.delete(method);
    if (error && entry && this.#methods.get(method) === entry.handler) this.#methods.delete(method);
    for (const waiter of entry?.waiters ?? []) {
      if (error) waiter.reject(error);
      else waiter.resolve();
    }
  }

  #takeCall(key: number): Call | undefined {
    const call = this.#calls.get(key);
    if (!call) return undefined;
    this.#calls.delete(key);
    clearTimeout(call.timer);
    return call;
  }

  /** Answers a request for one of our procedures (a notification gets no answer). */
  async #serve(epoch: number, raw: Json): Promise<void> {
    if (!isObject(raw)) return;
    const message = raw as Record<string, Json>;
    if (typeof message.method !== "string") return;
    const method = message.method;
    const id = message.id;
    const answer = (body: Record<string, Json>) => {
      if (id === undefined) return;
      this.#shell.machine.reply(epoch, { jsonrpc: JSONRPC, id, ...body });
      this.#shell.pump();
    };
    const handler = this.#methods.get(method);
    if (!handler) {
      answer({ error: { code: -32601, message: `method not found: ${method}` } });
      return;
    }
    if (this.#serving >= PROCEDURE_CALLS_SERVED_MAX) {
      answer({ error: { code: -32002, message: `busy: ${PROCEDURE_CALLS_SERVED_MAX} calls are being served` } });
      return;
    }
    this.#serving++;
    try {
      const result = await handler(message.params, { method });
      answer({ result: result === undefined ? null : toJson(result) });
    } catch (error) {
      if (error instanceof RpcError) {
        const body: Record<string, Json> = { code: error.code, message: error.message };
        if (error.data !== undefined) body.data = error.data;
        answer({ error: body });
      } else {
        answer({ error: { code: -32603, message: `internal error: ${(error as Error)?.message ?? String(error)}` } });
      }
    } finally {
      this.#serving--;
    }
  }

  #refusalError(refusal: SendRefusal): Error {
    if (refusal.kind === "not_connected") return this.#shell.notConnected();
    if (refusal.kind === "too_many_calls") return new RpcError(-32002, "too many calls in flight");
    return this.#shell.errorFor(refusal.code, refusal.message);
  }
}

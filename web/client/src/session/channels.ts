// Pub/sub subscriptions, publishes, calls and registrations inside a
// `ClientSession` (engine/src/session/channels.rs): what each session must
// re-establish, and the bookkeeping of requests awaiting answers.
//
// Subscriptions and registrations outlive sessions: each new session sends
// them again. Calls and confirmed publishes do not: an answer can only come
// on the session that carried the request, so when it ends they fail
// (`call_lost`, `publish_refused` with `not_connected`) rather than wait
// forever.

import { isObject, type Json } from "../json.js";
import type { ErrorCode } from "../protocol.js";
import { sortedKeys, type SessionState } from "./core.js";
import type { SendRefusal } from "./types.js";

/** Where a procedure's registration stands in the current session. */
export type Registration =
  /** To be sent (at connect, or the next heartbeat after a refusal). */
  | { kind: "unsent"; first: boolean }
  /** Sent; `first` if the server never confirmed it before (a refusal then fails the application's `register`). */
  | { kind: "sent"; first: boolean }
  | { kind: "registered" };

export interface TopicState {
  /** The server confirmed it in this session. */
  acked: boolean;
}

// ----- the application's commands -----

/** Subscribes to `pattern`: `subscribed` follows (at once if it already is), or `subscribe_refused`. */
export function subscribe(s: SessionState, pattern: string): void {
  const topic = s.topics.get(pattern);
  if (topic?.acked) s.events.push({ kind: "subscribed", pattern });
  else if (!topic) {
    s.topics.set(pattern, { acked: false });
    s.send({ type: "subscribe", topic: pattern });
  }
}

export function unsubscribe(s: SessionState, pattern: string): void {
  if (s.topics.delete(pattern)) s.send({ type: "unsubscribe", topic: pattern });
}

/**
 * Publishes `data` on `topic`. With `confirm`, the returned ack is answered
 * by `published` or `publish_refused`; without, the publish is done once
 * handed to the connection.
 */
export function publish(s: SessionState, topic: string, data: Json, echo: boolean, confirm: boolean): { ack: number | undefined } | { refused: SendRefusal } {
  if (!s.isConnected()) return { refused: { kind: "not_connected" } };
  const ack = confirm ? s.nextAck + 1 : undefined;
  const refusal = s.trySend({ type: "publish", topic, data, ...(ack === undefined ? {} : { ack }), ...(echo ? {} : { echo: false }) });
  if (refusal) return { refused: refusal };
  if (ack !== undefined) {
    s.nextAck = ack;
    s.acks.set(ack, topic);
  }
  return { ack };
}

/**
 * Calls `method`: `call_answered` or `call_lost` follows, unless the call is
 * cancelled first. (`params` may be left out, TypeScript's addition: the
 * request then carries none.)
 */
export function call(s: SessionState, key: number, method: string, params: Json | undefined): SendRefusal | undefined {
  if (!s.isConnected()) return { kind: "not_connected" };
  if (s.calls.size >= s.config.callsInFlightMax || s.calls.has(key)) return { kind: "too_many_calls" };
  const message: Json = { jsonrpc: "2.0", id: key, method, ...(params === undefined ? {} : { params }) };
  const refusal = s.trySend({ type: "rpc", message });
  if (refusal) return refusal;
  s.calls.add(key);
  return undefined;
}

/** Stops waiting for a call's answer (it timed out, or nobody waits). */
export function cancelCall(s: SessionState, key: number): void {
  s.calls.delete(key);
}

/** Sends a JSON-RPC notification: no answer comes. */
export function notify(s: SessionState, method: string, params: Json | undefined): SendRefusal | undefined {
  if (!s.isConnected()) return { kind: "not_connected" };
  const message: Json = { jsonrpc: "2.0", method, ...(params === undefined ? {} : { params }) };
  return s.trySend({ type: "rpc", message });
}

/** Answers an `rpc` request of session `epoch`; dropped if that session has ended (its caller got an error from the server). */
export function reply(s: SessionState, epoch: number, message: Json): void {
  if (epoch === s.epoch && s.isConnected()) s.send({ type: "rpc", message });
}

/** Registers `method` for calls from other clients: `registered` or `register_refused` follows (at once if it already is registered). */
export function register(s: SessionState, method: string): void {
  const registration = s.procedures.get(method);
  if (registration?.kind === "registered") {
    s.events.push({ kind: "registered", method });
    return;
  }
  if (registration) return;
  s.procedures.set(method, { kind: "unsent", first: true });
  sendRegistrations(s);
}

export function unregister(s: SessionState, method: string): void {
  if (s.procedures.delete(method)) s.send({ type: "unregister", method });
}

// ----- sessions -----

/** At the start of a session: every subscription and registration goes out again. */
export function renewChannels(s: SessionState): void {
  for (const topic of sortedKeys(s.topics)) s.send({ type: "subscribe", topic });
  s.registersInFlight = [];
  for (const [method, registration] of s.procedures) {
    s.procedures.set(method, registration.kind === "registered" ? { kind: "unsent", first: false } : { kind: "unsent", first: registration.first });
  }
  sendRegistrations(s);
}

/** Subscriptions and registrations still unanswered (the server may have dropped them under its rate limit) go out again. */
export function resendUnansweredChannels(s: SessionState): void {
  for (const topic of sortedKeys(s.topics)) {
    if (!(s.topics.get(topic) as TopicState).acked) s.send({ type: "subscribe", topic });
  }
  sendRegistrations(s);
}

/** The session ended: nothing is confirmed any more, and answers to its requests can never come. */
export function endSessionChannels(s: SessionState): void {
  for (const topic of s.topics.values()) topic.acked = false;
  s.registersInFlight = [];
  for (const [method, registration] of s.procedures) {
    if (registration.kind === "sent") s.procedures.set(method, { kind: "unsent", first: registration.first });
  }
  const calls = sortedKeys(s.calls);
  s.calls.clear();
  for (const call of calls) s.events.push({ kind: "call_lost", call });
  const acks = sortedKeys(s.acks);
  s.acks.clear();
  for (const ack of acks) s.events.push({ kind: "publish_refused", ack, refusal: { kind: "not_connected" } });
}

function sendRegistrations(s: SessionState): void {
  if (!s.isConnected()) return;
  const unsent: string[] = [];
  for (const method of sortedKeys(s.procedures)) {
    const registration = s.procedures.get(method) as Registration;
    if (registration.kind === "unsent") {
      s.procedures.set(method, { kind: "sent", first: registration.first });
      unsent.push(method);
    }
  }
  for (const method of unsent) {
    s.registersInFlight.push(method);
    s.send({ type: "register", method });
  }
}

// ----- server messages -----

export function onSubscribed(s: SessionState, pattern: string): void {
  const state = s.topics.get(pattern);
  if (state) {
    state.acked = true;
    s.events.push({ kind: "subscribed", pattern });
  }
}

export function onRpc(s: SessionState, message: Json): void {
  const fields = isObject(message) ? (message as Record<string, Json>) : undefined;
  const answer = fields !== undefined && (fields.result !== undefined || fields.error !== undefined);
  const id = fields?.id;
  const call = typeof id === "number" && Number.isSafeInteger(id) && id >= 0 ? id : undefined;
  if (call !== undefined && answer && s.calls.has(call)) {
    s.calls.delete(call);
    const result = fields.error !== undefined ? { ok: false as const, error: fields.error } : { ok: true as const, value: fields.result ?? null };
    s.events.push({ kind: "call_answered", call, result });
  } else if (!answer) {
    s.events.push({ kind: "rpc", epoch: s.epoch, message });
  }
  // An answer to a call nobody waits for any more is dropped.
}

export function onRegistered(s: SessionState, method: string): void {
  while (s.registersInFlight.length > 0) {
    if (s.registersInFlight.shift() === method) break;
  }
  if (s.procedures.has(method)) {
    s.procedures.set(method, { kind: "registered" });
    s.events.push({ kind: "registered", method });
  }
}

/** An error naming a topic: a refused subscription, or publishes to it. */
export function onTopicRefused(s: SessionState, topic: string, code: ErrorCode | string, message: string): void {
  if (s.topics.get(topic)?.acked === false) {
    s.topics.delete(topic);
    s.events.push({ kind: "subscribe_refused", pattern: topic, code, message });
  }
  const refused: number[] = [];
  for (const ack of sortedKeys(s.acks)) if (s.acks.get(ack) === topic) refused.push(ack);
  for (const ack of refused) {
    s.acks.delete(ack);
    s.events.push({ kind: "publish_refused", ack, refusal: { kind: "refused", code, message } });
  }
}

/** An error naming a method: a refused registration. */
export function onMethodRefused(s: SessionState, method: string, code: ErrorCode | string, message: string): void {
  const at = s.registersInFlight.indexOf(method);
  if (at >= 0) s.registersInFlight.splice(at, 1);
  refuseRegistration(s, method, code, message);
}

/** `already_registered` without a method (an older server): it answers the oldest registration in flight. */
export function onRegisterRefused(s: SessionState, message: string): void {
  const method = s.registersInFlight.shift();
  if (method !== undefined) refuseRegistration(s, method, "already_registered", message);
}

function refuseRegistration(s: SessionState, method: string, code: ErrorCode | string, message: string): void {
  const registration = s.procedures.get(method);
  if (!registration) return;
  if (registration.kind === "sent" && !registration.first && code === "already_registered") {
    // A re-registration after a reconnect meeting the previous session's
    // registration not yet gone: try again at the next heartbeat.
    s.procedures.set(method, { kind: "unsent", first: false });
    return;
  }
  s.procedures.delete(method);
  s.events.push({ kind: "register_refused", method, code, message });
}

// Frames on the wire: decoding a server frame (one message, or a batch of
// them as a JSON array), encoding the client's own, and the socket URL that
// opts into batched frames.

import { isObject } from "./json.js";
import type { ClientMessage, ServerFrame, ServerMessage } from "./protocol.js";

const decoder = new TextDecoder();

/** A frame's text, whatever form the WebSocket implementation delivers it in. */
export function decodeText(data: unknown): string {
  if (data instanceof ArrayBuffer) return decoder.decode(data);
  if (ArrayBuffer.isView(data)) return decoder.decode(data);
  if (Array.isArray(data)) return data.map(decodeText).join("");
  return String(data);
}

/**
 * The messages of one server frame, in order. `undefined` when the frame is
 * not a `ServerFrame` (not JSON, not an object, an array holding anything but
 * objects): such a frame is dropped whole rather than trusted in part. An
 * object's `type` is not checked here: one the client does not know is
 * ignored, as any unknown message is.
 */
export function parseFrame(text: string): ServerMessage[] | undefined {
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

/** The text of one client frame (one message; the client never batches). */
export function encodeMessage(message: ClientMessage): string {
  return JSON.stringify(message);
}

/**
 * The `ping` message: browsers cannot send WebSocket ping frames, so the
 * heartbeat is a message. A server that answers it with `pong` proves itself
 * alive; one that does not know it answers with an `error` (`bad_message`,
 * naming the variant), which proves the same.
 */
export const PING_TEXT = JSON.stringify({ type: "ping" });

/** Whether `message` is a server's answer to `PING_TEXT`: `pong`, or the `error` of a server that does not know `ping`. */
export function isPingAnswer(message: ServerMessage): boolean {
  if (message.type === "pong") return true;
  return message.type === "error" && message.code === "bad_message" && typeof message.message === "string" && message.message.includes("`ping`");
}

/**
 * `url` with the query parameter `batch=1`, which opts the session into
 * batched frames. A `batch` already there is replaced (the server refuses
 * values but 0 and 1, and this client reads both frame forms). The other
 * parameters are kept as written: `searchParams.set` would re-encode them
 * all (`%20` as `+`, `flag` as `flag=`), and a token could arrive changed.
 */
export function withBatching(url: string): string {
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

/** `url` as a WebSocket URL: `http(s)` made `ws(s)`, a relative URL resolved against the page. */
export function toWebSocketUrl(url: string): string {
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

/** The WebSocket URL of a page's own server (`/ws` on the same origin), for browsers. */
export function sameOriginUrl(path = "/ws"): string {
  const here = new URL(globalThis.location.href);
  here.protocol = here.protocol === "https:" ? "wss:" : "ws:";
  here.pathname = path;
  here.search = "";
  here.hash = "";
  return here.toString();
}

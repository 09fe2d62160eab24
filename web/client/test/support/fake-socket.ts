// A scripted WebSocket for unit tests of the client: each socket the client
// opens is recorded, the test plays the server (opens it, delivers messages,
// drops it) and reads what the client sent. No network, no timers of its own.

import type { ClientMessage, ServerMessage, WebSocketConstructor, WebSocketLike } from "../../src/index.js";

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** What the client sent, parsed, oldest first. */
  readonly sent: ClientMessage[] = [];

  constructor(readonly url: string) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data) as ClientMessage);
  }

  close(): void {
    this.readyState = 3;
  }

  /** The connection is up and the server says `welcome`. */
  accept(session: string): void {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({ type: "welcome", protocol: 1, session });
  }

  receive(message: ServerMessage): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** The network fails: the socket closes without a close frame. */
  drop(): void {
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: "" });
  }

  /** The `commit` messages the client sent, oldest first. */
  commits(): Extract<ClientMessage, { type: "commit" }>[] {
    return this.sent.filter((m): m is Extract<ClientMessage, { type: "commit" }> => m.type === "commit");
  }
}

/** A WebSocket constructor whose sockets are all `FakeSocket`s, kept in `sockets` in the order opened. */
export function fakeSockets(): { WebSocket: WebSocketConstructor; sockets: FakeSocket[] } {
  const sockets: FakeSocket[] = [];
  class Recorded extends FakeSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  return { WebSocket: Recorded, sockets };
}

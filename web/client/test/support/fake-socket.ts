// A scripted WebSocket for unit tests of the client: each socket the client
// opens is recorded, the test plays the server (opens it, delivers messages,
// drops it) and reads what the client sent. No network, no timers of its own.

import assert from "node:assert/strict";
import { afterEach } from "node:test";

import { Client, type ClientMessage, type DocumentHandle, type ServerMessage, type WebSocketConstructor, type WebSocketLike } from "../../src/index.js";

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

  /** The connection is up and the server says `welcome` (with `sub` and `name` on a server that requires authentication). */
  accept(session: string, identity: { sub?: string; name?: string } = {}): void {
    this.connect();
    this.receive({ type: "welcome", protocol: 1, session, ...identity });
  }

  /** The connection is up; the server has not said `welcome` yet (it waits for `auth`). */
  connect(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** The server closes the connection with `code`. */
  closeWith(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  receive(message: ServerMessage): void {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** A batched frame: the messages as one JSON array (the client opts in with `batch=1`). */
  receiveBatch(messages: ServerMessage[]): void {
    this.onmessage?.({ data: JSON.stringify(messages) });
  }

  /** A frame of any text, well-formed or not. */
  receiveText(data: string): void {
    this.onmessage?.({ data });
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

/** A client on a fake socket, with one document open and live at version 0. */
export interface LiveDocument {
  client: Client;
  doc: DocumentHandle;
  sockets: FakeSocket[];
}

/**
 * Connects a client (pushed onto `clients`, for the caller to close) over
 * fake sockets that reconnect at once, and opens `docId` live at version 0
 * with an empty value.
 */
export async function liveDocumentOnFakeSocket(clients: Client[], docId: string): Promise<LiveDocument> {
  const { WebSocket, sockets } = fakeSockets();
  const client = new Client("ws://fake/ws", { WebSocket, clientId: "c", reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  clients.push(client);
  const first = sockets[0] as FakeSocket;
  first.accept("s1");
  const doc = client.document(docId);
  first.receive({ type: "snapshot", doc: docId, version: 0, value: {} });
  first.receive({ type: "opened", doc: docId, version: 0 });
  await doc.whenReady();
  assert.ok(doc.live);
  return { client, doc, sockets };
}

/** A list of clients that are closed after each test of the calling file. */
export function closedAfterEachTest(): Client[] {
  const clients: Client[] = [];
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });
  return clients;
}

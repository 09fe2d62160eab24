// The Node entry of @concord/client: the same API, with the `ws` package as
// the default WebSocket (Node 20 has no global one).

import WebSocket from "ws";

import { Client as BaseClient, readyOrClosed, type ConnectOptions, type WebSocketConstructor } from "./client.js";

export * from "./index.js";

const NodeWebSocket = WebSocket as unknown as WebSocketConstructor;

/** A client whose default WebSocket is `ws`. */
export class Client extends BaseClient {
  constructor(url: string, options: ConnectOptions = {}) {
    super(url, { WebSocket: NodeWebSocket, ...options });
  }
}

/** Connects and resolves once the first session is up (WebSocket from `ws` unless given). */
export async function connect(url: string, options: ConnectOptions = {}): Promise<Client> {
  return readyOrClosed(new Client(url, options), options.connectTimeoutMs);
}

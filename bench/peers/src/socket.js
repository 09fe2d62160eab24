// A `ws` WebSocket that remembers its TCP socket, so the bytes received on
// the wire (HTTP upgrade response, WebSocket framing and payload) can be read
// from `net.Socket#bytesRead`. Each adapter hands its client library a class
// made here, so the same counting applies to all three systems.

import WebSocket from "ws";

/**
 * Returns a WebSocket class for one client connection and a meter for it.
 * `onMessage(data, isBinary)` (optional) sees every incoming message before
 * the client library does.
 */
export function meteredWebSocket(onMessage) {
  const meter = { socket: undefined, ws: undefined, bytes: () => meter.socket?.bytesRead ?? 0 };
  class MeteredWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      meter.ws = this;
      this.on("upgrade", (response) => {
        meter.socket = response.socket;
      });
      if (onMessage) this.on("message", onMessage);
    }
  }
  return { WebSocket: MeteredWebSocket, meter };
}

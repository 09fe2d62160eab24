// A WebSocket proxy between a client and the real server, for failures that
// a real network has and a test cannot otherwise cause at a chosen moment:
// an acknowledgement lost with its connection, a network that is down, a
// network that holds the server's frames for a while (`freeze`).

import { WebSocket, WebSocketServer, type RawData } from "ws";

export type Verdict = "forward" | "drop-and-disconnect";

interface Pair {
  client: WebSocket;
  server: WebSocket;
  /** Server→client frames held while frozen, in order; undefined when flowing. */
  held: string[] | undefined;
}

export class FaultProxy {
  readonly #server: WebSocketServer;
  readonly #upstream: string;
  #online = true;
  #pairs = new Set<Pair>();
  /** Decides the fate of each server→client frame. */
  downstream: (message: Record<string, unknown>) => Verdict = () => "forward";

  private constructor(server: WebSocketServer, upstream: string) {
    this.#server = server;
    this.#upstream = upstream;
    server.on("connection", (client) => this.#accept(client));
  }

  static async start(upstream: string): Promise<FaultProxy> {
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise<void>((resolve) => server.once("listening", () => resolve()));
    return new FaultProxy(server, upstream);
  }

  get url(): string {
    const address = this.#server.address();
    if (typeof address === "string" || address === null) throw new Error("proxy not listening");
    return `ws://127.0.0.1:${address.port}/ws`;
  }

  /** Offline: every connection is cut and new ones are refused until back online. */
  setOnline(online: boolean): void {
    this.#online = online;
    if (!online) this.disconnectAll();
  }

  /**
   * Holds (does not drop) every frame the server sends on the connections
   * open now, until `thaw` or `sever`; the client's frames still go through.
   * Later connections flow normally.
   */
  freeze(): void {
    for (const pair of this.#pairs) pair.held ??= [];
  }

  /** Releases, in order, what `freeze` held, and lets frames flow again. */
  thaw(): void {
    for (const pair of this.#pairs) {
      const held = pair.held ?? [];
      pair.held = undefined;
      for (const text of held) {
        if (pair.client.readyState === WebSocket.OPEN) pair.client.send(text);
      }
    }
  }

  /** Cuts every connection open now, discarding whatever was held; new ones are accepted. */
  sever(): void {
    this.disconnectAll();
  }

  disconnectAll(): void {
    for (const pair of this.#pairs) {
      pair.client.terminate();
      pair.server.terminate();
    }
    this.#pairs.clear();
  }

  get connections(): number {
    return this.#pairs.size;
  }

  async close(): Promise<void> {
    this.disconnectAll();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: WebSocket): void {
    if (!this.#online) {
      client.terminate();
      return;
    }
    const server = new WebSocket(this.#upstream);
    const pair: Pair = { client, server, held: undefined };
    this.#pairs.add(pair);
    const upQueue: RawData[] = [];
    const end = () => {
      this.#pairs.delete(pair);
      client.terminate();
      server.terminate();
    };
    server.on("open", () => {
      for (const frame of upQueue.splice(0)) server.send(frame.toString());
    });
    client.on("message", (data) => {
      if (server.readyState === WebSocket.OPEN) server.send(data.toString());
      else upQueue.push(data);
    });
    server.on("message", (data) => {
      const text = data.toString();
      const verdict = this.downstream(JSON.parse(text) as Record<string, unknown>);
      if (verdict === "drop-and-disconnect") {
        end();
        return;
      }
      if (pair.held) pair.held.push(text);
      else if (client.readyState === WebSocket.OPEN) client.send(text);
    });
    client.on("close", end);
    server.on("close", end);
    client.on("error", end);
    server.on("error", end);
  }
}

// Yjs server for the side-by-side benchmarks: the y-websocket server
// (@y/websocket-server's `setupWSConnection`, the same wiring as its
// `src/server.js`, without persistence: documents live in memory), on `ws`.
// Listens on 127.0.0.1:0 and prints `PORT <n>` as its first stdout line.

import http from "node:http";

import { setupWSConnection } from "@y/websocket-server/utils";
import { WebSocketServer } from "ws";

const wss = new WebSocketServer({ noServer: true });
wss.on("connection", setupWSConnection);

const server = http.createServer((_req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end("okay");
});
server.on("upgrade", (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => {
    wss.emit("connection", ws, request);
  });
});

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  process.stdout.write(`PORT ${port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));

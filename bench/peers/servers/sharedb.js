// ShareDB server for the side-by-side benchmarks: json0 (ShareDB's default
// type), the in-memory database and pub/sub that ship with ShareDB, over `ws`
// with @teamwork/websocket-json-stream, as in ShareDB's own examples.
// Listens on 127.0.0.1:0 and prints `PORT <n>` as its first stdout line.

import http from "node:http";

import WebSocketJSONStream from "@teamwork/websocket-json-stream";
import ShareDB from "sharedb";
import { WebSocketServer } from "ws";

// `new ShareDB()` uses ShareDB.MemoryDB and ShareDB.MemoryPubSub. The two
// `disable…` flags are the settings ShareDB's docs recommend for new code
// (they only turn off deprecated middleware actions).
const backend = new ShareDB({ disableDocAction: true, disableSpaceDelimitedActions: true });

const server = http.createServer((_req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end("ok");
});
const wss = new WebSocketServer({ server });
wss.on("connection", (ws) => {
  backend.listen(new WebSocketJSONStream(ws));
});

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  process.stdout.write(`PORT ${port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));

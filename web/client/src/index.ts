// @concord/client: the TypeScript client for Concord.
//
// Layout:
// - `json.ts`     JSON values, with prototype-safe member access;
// - `pointer.ts`  RFC 6901 pointers (mirrors engine/src/pointer.rs);
// - `patch.ts`    RFC 6902 + `incr`, atomic with undo logs and the array rule (engine/src/patch.rs);
// - `replica.ts`  the optimistic replica and the transaction runner (engine/src/replica.rs);
// - `protocol.ts` protocol v1 wire types (engine/src/protocol.rs);
// - `session/`    `ClientSession`, the sans-IO machine of a client's session (engine/src/session/):
//                 link, documents and transactions, channels, pacing, the seeded rng;
// - `client.ts`   `Client`, the shell around the machine, with its parts: `connection.ts` (socket,
//                 token, clock, timer), `document.ts` (`DocumentHandle`), `rpc.ts`, `pubsub.ts`,
//                 `errors.ts`, `frames.ts`;
// - `node.ts`     the Node entry, which supplies the `ws` WebSocket.

export * from "./json.js";
export * from "./pointer.js";
export * from "./patch.js";
export * from "./replica.js";
export * from "./protocol.js";
export * from "./events.js";
export * from "./client.js";
export * from "./session/index.js";

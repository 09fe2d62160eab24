// Authentication at the client, with a scripted socket playing the server:
// the token provider is asked before every connect, its token goes out as
// the session's first message (`auth`), documents resume only after
// `welcome`, an expired token (close 4004, or the `token_expired` error)
// reconnects with a fresh token (at once after a long session, after a
// backoff after a short one: the machine decides), and a refused one (`unauthorized`,
// close 4003) surfaces as an `AuthError` while the client keeps retrying.

import assert from "node:assert/strict";
import { test } from "node:test";

import { AuthError, Client, ClientSession, connect, ServerError, type ClientMessage } from "../../src/index.js";
import { closedAfterEachTest, fakeSockets, type FakeSocket } from "../support/fake-socket.js";
import { nextEvent, waitFor } from "../support/wait.js";

const clients = closedAfterEachTest();

/** Tokens `t1`, `t2`, ... one per call, counting the calls. */
function countingProvider(): { provider: () => string; calls: () => number } {
  let n = 0;
  return { provider: () => `t${++n}`, calls: () => n };
}

/** A client over fake sockets; `slowReconnect` makes any backoff delay a minute, so only a prompt reconnect can happen within a test. */
function makeClient(token: (() => string | Promise<string>) | undefined, slowReconnect = false): { client: Client; sockets: FakeSocket[] } {
  const { WebSocket, sockets } = fakeSockets();
  const reconnect = slowReconnect ? { initialDelayMs: 60_000, maxDelayMs: 60_000 } : { initialDelayMs: 1, maxDelayMs: 1 };
  const client = new Client("ws://fake/ws", { WebSocket, clientId: "c", reconnect, ...(token ? { token } : {}) });
  clients.push(client);
  return { client, sockets };
}

const types = (sent: ClientMessage[]) => sent.map((m) => m.type);

test("without a token provider no auth message is sent and there is no identity", async () => {
  const { client, sockets } = makeClient(undefined);
  const socket = sockets[0] as FakeSocket;
  client.document("doc");
  socket.accept("s1");
  assert.deepEqual(types(socket.sent), ["open"]);
  assert.equal(client.identity, undefined);
});

test("the provider's token is the session's first message; documents open only after welcome, which names the identity", async () => {
  const { provider, calls } = countingProvider();
  const { client, sockets } = makeClient(provider);
  const doc = client.document("doc");
  const socket = await waitFor(() => sockets[0], "the first socket");
  assert.equal(calls(), 1, "asked before connecting");
  socket.connect();
  assert.deepEqual(socket.sent, [{ type: "auth", token: "t1" }], "auth alone, before welcome");
  assert.equal(client.state, "connecting");
  const session = nextEvent<{ session: string; identity?: { sub: string; name?: string } }>((l) => client.on("session", l), () => true, "session");
  socket.receive({ type: "welcome", protocol: 1, session: "s1", sub: "alice", name: "Alice" });
  assert.deepEqual(types(socket.sent), ["auth", "open"], "the document opens after welcome");
  assert.deepEqual(client.identity, { sub: "alice", name: "Alice" });
  assert.deepEqual((await session).identity, { sub: "alice", name: "Alice" });
  socket.receive({ type: "snapshot", doc: "doc", version: 0, value: {} });
  socket.receive({ type: "opened", doc: "doc", version: 0 });
  await doc.whenReady();
});

test("every reconnect asks the provider again and sends the fresh token; an async provider works", async () => {
  let n = 0;
  const { client, sockets } = makeClient(async () => `async-${++n}`);
  client.document("doc");
  const first = await waitFor(() => sockets[0], "the first socket");
  first.connect();
  first.receive({ type: "welcome", protocol: 1, session: "s1", sub: "alice" });
  first.receive({ type: "snapshot", doc: "doc", version: 3, value: { a: 1 } });
  first.receive({ type: "opened", doc: "doc", version: 3 });
  first.drop();
  const second = await waitFor(() => sockets[1], "the reconnect's socket");
  assert.equal(n, 2);
  second.connect();
  assert.deepEqual(second.sent, [{ type: "auth", token: "async-2" }]);
  second.receive({ type: "welcome", protocol: 1, session: "s2", sub: "alice" });
  assert.deepEqual(second.sent[1], { type: "open", doc: "doc", version: 3 }, "resumed at the version held");
});

test("close 4004 (token expired) reconnects with a fresh token, and is no auth failure", async () => {
  const { provider, calls } = countingProvider();
  const { client, sockets } = makeClient(provider);
  const first = await waitFor(() => sockets[0], "the first socket");
  first.accept("s1", { sub: "alice" });
  first.closeWith(4004, "token expired");
  const second = await waitFor(() => sockets[1], "the reconnect");
  assert.equal(calls(), 2);
  second.connect();
  assert.deepEqual(second.sent, [{ type: "auth", token: "t2" }]);
  assert.equal(client.authError, undefined, "an expiry is not an auth failure");
});

test("the token_expired error starts a fresh session; it is no application error", async () => {
  const { provider, calls } = countingProvider();
  const { client, sockets } = makeClient(provider);
  const errors: ServerError[] = [];
  client.on("error", (e) => errors.push(e));
  const first = await waitFor(() => sockets[0], "the first socket");
  first.accept("s1", { sub: "alice" });
  first.receive({ type: "error", code: "token_expired", message: "the token expired at ..." });
  assert.equal(first.readyState, 3, "the session is left at once, not after the server's grace period");
  const second = await waitFor(() => sockets[1], "the reconnect");
  assert.equal(calls(), 2);
  second.accept("s2", { sub: "alice" });
  assert.deepEqual(second.sent[0], { type: "auth", token: "t2" });
  assert.equal(client.state, "open");
  assert.deepEqual(errors, []);
});

// When the reconnect after an expiry comes is the machine's decision, on
// virtual time: at once after a long session (the vector token-expiry.json
// replays it), after a backoff of its own after a short one, so a provider
// handing out tokens about to expire cannot make the client spin.
test("an expiry ends a long session with a reconnect at once, a short one after a backoff (virtual time)", () => {
  const expireAt = (sessionUs: number) => {
    const machine = new ClientSession({ reconnectBackoffInitialUs: 1_000_000, reconnectBackoffMaxUs: 1_000_000 }, "c", 7);
    machine.handleConnected(0);
    machine.handleMessage({ type: "welcome", protocol: 1, session: "s1" }, 0);
    machine.handleDisconnected({ code: 4004, reason: "token expired" }, sessionUs);
    return (machine.pollTimeout() as number) - sessionUs;
  };
  assert.equal(expireAt(60_000_000), 0, "after a minute: at once");
  const delay = expireAt(10_000);
  assert.ok(delay >= 500_000 && delay <= 1_000_000, `after 10 ms: a backoff (${delay} µs)`);
});

test("unauthorized (error, then close 4003) surfaces as an AuthError; the client retries with the provider until accepted", async () => {
  const { provider, calls } = countingProvider();
  const { client, sockets } = makeClient(provider);
  const failed = nextEvent<AuthError>((l) => client.on("auth_error", l), () => true, "auth_error");
  const first = await waitFor(() => sockets[0], "the first socket");
  first.connect();
  first.receive({ type: "error", code: "unauthorized", message: "the token does not verify" });
  first.closeWith(4003, "unauthorized");
  const error = await failed;
  assert.ok(error instanceof AuthError);
  assert.equal(error.code, "unauthorized");
  assert.match(error.message, /does not verify/);
  assert.equal(client.authError, error);
  assert.notEqual(client.state, "open");
  const second = await waitFor(() => sockets[1], "the retry's socket");
  assert.equal(calls(), 2, "the provider is asked again");
  second.connect();
  assert.deepEqual(second.sent, [{ type: "auth", token: "t2" }]);
  second.receive({ type: "welcome", protocol: 1, session: "s2", sub: "bob" });
  assert.equal(client.state, "open");
  assert.equal(client.authError, undefined, "cleared by an accepted session");
  assert.deepEqual(client.identity, { sub: "bob" });
});

test("a close 4003 without the error first still reports an AuthError", async () => {
  const { client, sockets } = makeClient(() => "bad");
  const failed = nextEvent<AuthError>((l) => client.on("auth_error", l), () => true, "auth_error");
  const first = await waitFor(() => sockets[0], "the first socket");
  first.connect();
  first.closeWith(4003);
  assert.equal((await failed).code, "unauthorized");
});

test("a provider that throws or rejects is an AuthError, and is asked again", async () => {
  let n = 0;
  const { client, sockets } = makeClient(() => {
    n++;
    if (n === 1) throw new Error("no session cookie");
    if (n === 2) return Promise.reject(new Error("auth endpoint said 500"));
    return "good";
  });
  const seen: AuthError[] = [];
  client.on("auth_error", (e) => seen.push(e));
  const socket = await waitFor(() => sockets[0], "a socket once the provider answers");
  assert.equal(n, 3);
  assert.deepEqual(seen.map((e) => e.code), ["token_provider", "token_provider"]);
  assert.match(seen[0]?.message ?? "", /no session cookie/);
  assert.match(seen[1]?.message ?? "", /said 500/);
  socket.connect();
  assert.deepEqual(socket.sent, [{ type: "auth", token: "good" }]);
});

test("connect() rejects with the AuthError of a refused first attempt and closes the client", async () => {
  const { WebSocket, sockets } = fakeSockets();
  const pending = connect("ws://fake/ws", { WebSocket, token: () => "expired", reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  const socket = await waitFor(() => sockets[0], "the first socket");
  socket.connect();
  socket.receive({ type: "error", code: "unauthorized", message: "token expired" });
  await assert.rejects(pending, (e: unknown) => e instanceof AuthError && e.code === "unauthorized");
});

test("a token that had expired before the server saw it is an AuthError (token_expired), and the provider is asked again", async () => {
  const { provider, calls } = countingProvider();
  const { client, sockets } = makeClient(provider);
  const failed = nextEvent<AuthError>((l) => client.on("auth_error", l), () => true, "auth_error");
  const first = await waitFor(() => sockets[0], "the first socket");
  first.connect();
  first.receive({ type: "error", code: "token_expired", message: "the token expired 3 s ago" });
  first.closeWith(4004);
  const error = await failed;
  assert.equal(error.code, "token_expired");
  const second = await waitFor(() => sockets[1], "the retry's socket");
  assert.equal(calls(), 2);
  second.accept("s2", { sub: "alice" });
  assert.equal(client.authError, undefined);
});

test("an authentication turned away by the server's rate limit is an AuthError (rate_limited), and the client keeps trying", async () => {
  const { provider, calls } = countingProvider();
  const { client, sockets } = makeClient(provider);
  const failed = nextEvent<AuthError>((l) => client.on("auth_error", l), () => true, "auth_error");
  const errors: ServerError[] = [];
  client.on("error", (e) => errors.push(e));
  const first = await waitFor(() => sockets[0], "the first socket");
  first.connect();
  first.receive({ type: "error", code: "rate_limited", message: "too many failed authentications from this address" });
  first.closeWith(4003);
  const error = await failed;
  assert.equal(error.code, "rate_limited");
  assert.deepEqual(errors, [], "reported once, as the auth failure");
  await waitFor(() => sockets[1], "the retry's socket");
  assert.equal(calls(), 2);
});

// The protocol as the engine writes it down (engine/tests/vectors/protocol.json,
// generated from the Rust types by engine/tests/protocol_vectors.rs), checked
// against this client both ways:
// - the shape of every message: a table of the fields each TypeScript type
//   declares, itself checked against the types by the compiler, is compared
//   with the fields of the vector's examples (a field the Rust side has and
//   the TypeScript type lacks fails, and so does the reverse);
// - the client itself: every server message example is played into a Client
//   over a scripted socket and must have its effect, and every client message
//   example is what the Client sends for the corresponding call;
// - every error code, close code, JSON-RPC code and default limit equals this
//   client's constant.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  Client,
  CLOSE_CODES,
  DEFAULT_LIMITS,
  DOC_ID_LEN_MAX,
  ERROR_CODES,
  isValidDocId,
  NAME_BYTES_MAX,
  POINTER_LEN_MAX,
  PROTOCOL_VERSION,
  RPC_CODES,
  RpcError,
  ServerError,
  TransactionRejected,
  TX_ID_LEN_MAX,
  type ClientMessage,
  type Conflict,
  type ErrorCode,
  type Json,
  type PatchOp,
  type PatchOpError,
  type PresenceChange,
  type Rejection,
  type ServerMessage,
  type Transaction,
} from "../../src/index.js";
import { closedAfterEachTest, fakeSockets, type FakeSocket } from "../support/fake-socket.js";
import { repoPath } from "../support/paths.js";
import { waitFor } from "../support/wait.js";

type Example = Record<string, Json>;

interface Vectors {
  protocol_version: number;
  client_messages: Example[];
  server_messages: Example[];
  batched_frame: Example[];
  error_codes: string[];
  close_codes: Record<string, number>;
  rpc_codes: Record<string, number>;
  limits: Record<string, number>;
  name_limits: Record<string, number>;
}

const vectors = JSON.parse(readFileSync(repoPath("engine", "tests", "vectors", "protocol.json"), "utf8")) as Vectors;

// ---- the field tables, checked against the types by the compiler ----

/** The fields of one variant: those it always has and those it may have. */
interface Shape {
  readonly required: readonly string[];
  readonly optional: readonly string[];
}

type RequiredKeys<T> = { [K in keyof T]-?: {} extends Pick<T, K> ? never : K }[keyof T];
type OptionalKeys<T> = Exclude<keyof T, RequiredKeys<T>>;
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** The variants of `U` (discriminated by `D`) whose row in `Table` lists other fields than the type has. */
type Disagreeing<U, D extends string, Table extends Record<string, Shape>> = {
  [K in keyof Table & string]: Same<Table[K]["required"][number], RequiredKeys<Extract<U, Record<D, K>>>> extends true
    ? Same<Table[K]["optional"][number], OptionalKeys<Extract<U, Record<D, K>>>> extends true
      ? never
      : K
    : K;
}[keyof Table & string];
/** Compiles only when `T` is `never`: the error names the variants that disagree. */
function agrees<T extends never>(..._none: T[]): void {}

const SERVER_MESSAGES = {
  welcome: { required: ["type", "protocol", "session"], optional: ["sub", "name"] },
  snapshot: { required: ["type", "doc", "version", "value"], optional: [] },
  opened: { required: ["type", "doc", "version"], optional: [] },
  change: { required: ["type", "doc", "version", "tx_id", "patch"], optional: [] },
  committed: { required: ["type", "doc", "tx_id", "version"], optional: [] },
  rejected: { required: ["type", "doc", "tx_id", "rejection"], optional: [] },
  message: { required: ["type", "topic", "data"], optional: [] },
  subscribed: { required: ["type", "topic"], optional: [] },
  published: { required: ["type", "ack"], optional: [] },
  presence: { required: ["type", "doc", "session", "event", "state"], optional: [] },
  rpc: { required: ["type", "message"], optional: [] },
  registered: { required: ["type", "method"], optional: [] },
  pong: { required: ["type"], optional: [] },
  error: { required: ["type", "code", "message"], optional: ["doc", "tx_id", "topic", "method"] },
} as const satisfies Record<ServerMessage["type"], Shape>;
agrees<Disagreeing<ServerMessage, "type", typeof SERVER_MESSAGES>>();

const CLIENT_MESSAGES = {
  auth: { required: ["type", "token"], optional: [] },
  open: { required: ["type", "doc"], optional: ["version"] },
  close: { required: ["type", "doc"], optional: [] },
  commit: { required: ["type", "tx"], optional: [] },
  subscribe: { required: ["type", "topic"], optional: [] },
  unsubscribe: { required: ["type", "topic"], optional: [] },
  publish: { required: ["type", "topic", "data"], optional: ["ack", "echo"] },
  presence: { required: ["type", "doc", "state"], optional: [] },
  rpc: { required: ["type", "message"], optional: [] },
  register: { required: ["type", "method"], optional: [] },
  unregister: { required: ["type", "method"], optional: [] },
  ping: { required: ["type"], optional: [] },
} as const satisfies Record<ClientMessage["type"], Shape>;
agrees<Disagreeing<ClientMessage, "type", typeof CLIENT_MESSAGES>>();

const REJECTIONS = {
  conflict: { required: ["reason", "conflicts", "conflicts_total"], optional: [] },
  stale: { required: ["reason", "base", "horizon"], optional: [] },
  base_ahead: { required: ["reason", "base", "current"], optional: [] },
  patch: { required: ["reason", "op_index", "error"], optional: [] },
  too_large: { required: ["reason", "what", "len", "max"], optional: [] },
  outcome_unknown: { required: ["reason", "base", "floor"], optional: [] },
  forbidden: { required: ["reason", "op_index", "pointer", "message"], optional: [] },
  invalid: { required: ["reason", "pointer", "message"], optional: [] },
  vetoed: { required: ["reason", "message"], optional: [] },
} as const satisfies Record<Rejection["reason"], Shape>;
agrees<Disagreeing<Rejection, "reason", typeof REJECTIONS>>();

const PATCH_OP_ERRORS = {
  path_not_found: { required: ["reason", "path"], optional: [] },
  parent_not_container: { required: ["reason", "path"], optional: [] },
  bad_array_index: { required: ["reason", "path"], optional: [] },
  test_failed: { required: ["reason", "path"], optional: [] },
  move_into_child: { required: ["reason", "from", "path"], optional: [] },
  remove_root: { required: ["reason"], optional: [] },
  not_a_number: { required: ["reason", "path"], optional: [] },
  number_overflow: { required: ["reason", "path"], optional: [] },
  depth_exceeded: { required: ["reason", "path", "depth", "max"], optional: [] },
  size_exceeded: { required: ["reason", "size_bytes", "max_bytes"], optional: [] },
} as const satisfies Record<PatchOpError["reason"], Shape>;
agrees<Disagreeing<PatchOpError, "reason", typeof PATCH_OP_ERRORS>>();

const PATCH_OPS = {
  add: { required: ["op", "path", "value"], optional: [] },
  remove: { required: ["op", "path"], optional: [] },
  replace: { required: ["op", "path", "value"], optional: [] },
  move: { required: ["op", "from", "path"], optional: [] },
  copy: { required: ["op", "from", "path"], optional: [] },
  test: { required: ["op", "path", "value"], optional: [] },
  incr: { required: ["op", "path", "value"], optional: [] },
} as const satisfies Record<PatchOp["op"], Shape>;
agrees<Disagreeing<PatchOp, "op", typeof PATCH_OPS>>();

// Structs: one shape each, checked the same way under a made-up discriminant `kind`.
const TRANSACTION = { one: { required: ["kind", "doc", "tx_id", "base", "reads", "writes"], optional: [] } } as const;
agrees<Disagreeing<Transaction & { kind: "one" }, "kind", typeof TRANSACTION>>();
const CONFLICT = { one: { required: ["kind", "pointer", "version"], optional: ["tx_id"] } } as const;
agrees<Disagreeing<Conflict & { kind: "one" }, "kind", typeof CONFLICT>>();

/** Values of enumerated fields, listed both ways against the types. */
const TOO_LARGE_PARTS = ["read_set", "patch"] as const satisfies readonly Extract<Rejection, { reason: "too_large" }>["what"][];
const PRESENCE_EVENTS = ["join", "update", "leave"] as const satisfies readonly PresenceChange["event"][];
agrees<Exclude<Extract<Rejection, { reason: "too_large" }>["what"], (typeof TOO_LARGE_PARTS)[number]>>();
agrees<Exclude<PresenceChange["event"], (typeof PRESENCE_EVENTS)[number]>>();
agrees<Exclude<ErrorCode, (typeof ERROR_CODES)[number]>>();

// ---- comparing the tables with the vectors ----

/**
 * Checks examples of one union against its table: each example's variant is
 * in the table and has every required field and no other than the table
 * lists; each variant of the table has an example, and each optional field
 * is present in one of them.
 */
function checkShapes(what: string, table: Record<string, Shape>, tag: string, examples: Example[]): void {
  const seen = new Map<string, Set<string>>();
  for (const example of examples) {
    const variant = String(example[tag]);
    const shape = table[variant];
    assert.ok(shape, `${what}: the vector's ${tag} ${JSON.stringify(variant)} is not in the TypeScript type`);
    const keys = Object.keys(example);
    const declared = new Set([...shape.required, ...shape.optional]);
    for (const key of keys) assert.ok(declared.has(key), `${what} ${variant}: field ${key} is not in the TypeScript type`);
    for (const key of shape.required) assert.ok(keys.includes(key), `${what} ${variant}: required field ${key} is missing from the vector`);
    const fields = seen.get(variant) ?? new Set<string>();
    for (const key of keys) fields.add(key);
    seen.set(variant, fields);
  }
  for (const [variant, shape] of Object.entries(table)) {
    const fields = seen.get(variant);
    assert.ok(fields, `${what}: the TypeScript type has ${tag} ${variant}, the vector has no example of it`);
    for (const key of shape.optional) assert.ok(fields.has(key), `${what} ${variant}: optional field ${key} is never in the vector`);
  }
}

const serverMessages = [...vectors.server_messages, ...vectors.batched_frame];
const ofType = (examples: Example[], type: string): Example[] => examples.filter((m) => m.type === type);
const rejections = ofType(serverMessages, "rejected").map((m) => m.rejection as Example);
const commits = ofType(vectors.client_messages, "commit").map((m) => m.tx as Example);
const patches = [
  ...commits.flatMap((tx) => tx.writes as Example[]),
  ...ofType(serverMessages, "change").flatMap((m) => m.patch as Example[]),
];

test("every message in the vectors has exactly the fields the TypeScript types declare", () => {
  checkShapes("server message", SERVER_MESSAGES, "type", serverMessages);
  checkShapes("client message", CLIENT_MESSAGES, "type", vectors.client_messages);
  checkShapes("rejection", REJECTIONS, "reason", rejections);
  checkShapes("patch failure", PATCH_OP_ERRORS, "reason", rejections.filter((r) => r.reason === "patch").map((r) => r.error as Example));
  checkShapes("patch op", PATCH_OPS, "op", patches);
  checkShapes("transaction", TRANSACTION, "kind", commits.map((tx) => ({ ...tx, kind: "one" })));
  const conflicts = rejections.filter((r) => r.reason === "conflict").flatMap((r) => r.conflicts as Example[]);
  checkShapes("conflict", CONFLICT, "kind", conflicts.map((c) => ({ ...c, kind: "one" })));
  const parts = new Set(rejections.filter((r) => r.reason === "too_large").map((r) => r.what));
  assert.deepEqual([...parts].sort(), [...TOO_LARGE_PARTS].sort(), "too_large parts");
  const events = new Set(ofType(serverMessages, "presence").map((m) => m.event));
  assert.deepEqual([...events].sort(), [...PRESENCE_EVENTS].sort(), "presence events");
  for (const message of ofType(serverMessages, "error")) {
    assert.ok((ERROR_CODES as readonly string[]).includes(String(message.code)), `error code ${String(message.code)}`);
  }
});

test("error codes, close codes, JSON-RPC codes and the protocol version are the engine's", () => {
  assert.deepEqual([...ERROR_CODES], vectors.error_codes, "error codes (this client's, the engine's)");
  assert.deepEqual({ ...CLOSE_CODES }, vectors.close_codes, "close codes");
  assert.deepEqual({ ...RPC_CODES }, vectors.rpc_codes, "JSON-RPC codes");
  assert.equal(PROTOCOL_VERSION, vectors.protocol_version);
});

/** The engine's limits this client enforces too, by their names here; the others are the server's alone. */
const LIMITS_HERE: Record<string, number | undefined> = {
  patch_ops_max: DEFAULT_LIMITS.patchOpsMax,
  read_set_pointers_max: DEFAULT_LIMITS.readSetPointersMax,
  json_depth_max: DEFAULT_LIMITS.jsonDepthMax,
  doc_size_bytes_max: DEFAULT_LIMITS.docSizeBytesMax,
  tx_dedup_entries_max: undefined,
  tx_dedup_rejection_bytes_max: undefined,
  removed_paths_bytes_max: undefined,
  name_bytes_max: NAME_BYTES_MAX,
  doc_id_len_max: DOC_ID_LEN_MAX,
  tx_id_len_max: TX_ID_LEN_MAX,
  pointer_len_max: POINTER_LEN_MAX,
  conflicts_reported_max: undefined,
};

test("default limits are the engine's; every limit in the vectors is either here or the server's alone", () => {
  const engine = { ...vectors.limits, ...vectors.name_limits };
  assert.deepEqual(Object.keys(engine).sort(), Object.keys(LIMITS_HERE).sort(), "limits listed here and in the vectors");
  for (const [name, value] of Object.entries(LIMITS_HERE)) {
    if (value !== undefined) assert.equal(value, engine[name], name);
  }
  assert.ok(isValidDocId("d".repeat(DOC_ID_LEN_MAX)) && !isValidDocId("d".repeat(DOC_ID_LEN_MAX + 1)), "document ids");
});

// ---- the client itself ----

const clients = closedAfterEachTest();

/** The examples of one type, in the vector's order. */
function examples<T extends string>(list: Example[], type: T): Example[] {
  const found = ofType(list, type);
  assert.ok(found.length > 0, `no ${type} example`);
  return found;
}
const client = (type: ClientMessage["type"], index = 0): Example => examples(vectors.client_messages, type)[index] as Example;
const server = (type: ServerMessage["type"], index = 0): Example => examples(serverMessages, type)[index] as Example;
const asServer = (example: Example): ServerMessage => example as unknown as ServerMessage;

const DOC = String(client("open").doc);
const commitTx = client("commit").tx as unknown as Transaction;
const token = String(client("auth").token);

/** A client with id `c` and the vector's token, its first socket connected; nothing received yet. */
async function connected(): Promise<{ client: Client; sockets: FakeSocket[]; socket: FakeSocket }> {
  const { WebSocket, sockets } = fakeSockets();
  const made = new Client("ws://fake/ws", { WebSocket, clientId: "c", token: () => token, reconnect: { initialDelayMs: 1, maxDelayMs: 1 } });
  clients.push(made);
  const socket = await waitFor(() => sockets[0], "the first socket");
  socket.connect();
  return { client: made, sockets, socket };
}

/** What the socket sent after `before` messages. */
const sentSince = (socket: FakeSocket, before: number): Json[] => socket.sent.slice(before) as unknown as Json[];

/** Runs the vector's transaction: its reads, then its writes. */
function runVectorTransaction(tx: { get(path: string): unknown; write(op: PatchOp): void }): string {
  for (const read of commitTx.reads) tx.get(read);
  for (const op of commitTx.writes) tx.write(op);
  return "done";
}

test("the client sends exactly the vector's client messages and takes every server message", async () => {
  const { client: c, sockets, socket: first } = await connected();
  await waitFor(() => first.sent.length === 1, "the auth message");
  assert.deepEqual(first.sent, [client("auth")], "auth");
  first.receive(asServer(server("welcome", 1)));
  assert.deepEqual(c.identity, { sub: server("welcome", 1).sub, name: server("welcome", 1).name }, "welcome names the identity");

  let mark = first.sent.length;
  const doc = c.document(DOC);
  assert.deepEqual(sentSince(first, mark), [client("open", 0)], "open");
  first.receive(asServer(server("snapshot")));
  first.receive(asServer(server("opened")));
  await doc.whenReady();
  assert.deepEqual(doc.value, server("snapshot").value, "snapshot");
  assert.equal(doc.version, server("opened").version, "opened");

  // A reconnect resumes the document at the version held.
  first.drop();
  const second = await waitFor(() => sockets[1], "a second socket");
  second.connect();
  await waitFor(() => second.sent.length === 1, "auth again");
  second.receive(asServer(server("welcome", 1)));
  assert.deepEqual(second.sent, [client("auth"), client("open", 1)], "open with version");
  second.receive(asServer(server("opened")));
  await doc.whenReady();

  mark = second.sent.length;
  const committed = doc.transact(runVectorTransaction);
  assert.deepEqual(sentSince(second, mark), [client("commit")], "commit");
  second.receive(asServer(server("change")));
  assert.equal(doc.version, server("change").version, "change");
  second.receiveText(JSON.stringify(vectors.batched_frame));
  assert.equal(await committed, "done", "the batched change and committed resolve the transaction");
  assert.equal(doc.version, server("committed").version);

  mark = second.sent.length;
  const received: [Json, string][] = [];
  const subscribed = c.subscribe(String(client("subscribe").topic), (data, topic) => received.push([data, topic]));
  assert.deepEqual(sentSince(second, mark), [client("subscribe")], "subscribe");
  second.receive(asServer(server("subscribed")));
  const unsubscribe = await subscribed;
  second.receive(asServer(server("message")));
  assert.deepEqual(received, [[server("message").data, server("message").topic]], "message");
  mark = second.sent.length;
  unsubscribe();
  assert.deepEqual(sentSince(second, mark), [client("unsubscribe")], "unsubscribe");

  mark = second.sent.length;
  const plain = client("publish", 0);
  const acked = client("publish", 1);
  await c.publish(String(plain.topic), plain.data);
  const published = c.publish(String(acked.topic), acked.data, { ack: true, echo: acked.echo as boolean });
  assert.deepEqual(sentSince(second, mark), [plain, acked], "publish");
  second.receive(asServer(server("published")));
  await published;

  mark = second.sent.length;
  doc.setPresence(client("presence", 0).state);
  doc.setPresence(client("presence", 1).state);
  assert.deepEqual(sentSince(second, mark), [client("presence", 0), client("presence", 1)], "presence");
  const presence: PresenceChange[] = [];
  doc.on("presence", (change) => presence.push(change));
  const presences = examples(serverMessages, "presence");
  for (const message of presences) second.receive(asServer(message));
  assert.deepEqual(
    presence,
    presences.map((m) => ({ session: m.session, event: m.event, state: m.state })),
    "presence events",
  );

  mark = second.sent.length;
  const request = client("rpc").message as Example;
  const call = c.call(String(request.method), request.params);
  assert.deepEqual(sentSince(second, mark), [client("rpc")], "rpc request");
  const [result, failure, forwarded] = examples(serverMessages, "rpc").map((m) => m.message as Example);
  second.receive(asServer(server("rpc", 0)));
  assert.deepEqual(await call, result?.result, "rpc result");
  const failing = c.call("math.sub", [2, 3]);
  second.receive(asServer(server("rpc", 1)));
  await assert.rejects(failing, (error: unknown) => error instanceof RpcError && error.code === (failure?.error as Example).code, "rpc error");

  mark = second.sent.length;
  const calls: Json[] = [];
  const registered = c.register(String(client("register").method), (params) => {
    calls.push(params ?? null);
    return "ok";
  });
  assert.deepEqual(sentSince(second, mark), [client("register")], "register");
  second.receive(asServer(server("registered")));
  const unregister = await registered;
  mark = second.sent.length;
  second.receive(asServer(server("rpc", 2)));
  await waitFor(() => second.sent.length > mark, "the answer to a forwarded call");
  assert.deepEqual(calls, [forwarded?.params], "the forwarded request reached the handler");
  assert.deepEqual(sentSince(second, mark), [{ type: "rpc", message: { jsonrpc: "2.0", id: forwarded?.id ?? null, result: "ok" } }]);
  mark = second.sent.length;
  unregister();
  assert.deepEqual(sentSince(second, mark), [client("unregister")], "unregister");

  const errors: ServerError[] = [];
  c.on("error", (error) => errors.push(error));
  doc.on("error", (error) => {
    if (error instanceof ServerError) errors.push(error);
  });
  const refusals = examples(serverMessages, "error");
  for (const message of refusals) second.receive(asServer(message));
  assert.deepEqual(
    errors.map((e) => [e.code, e.message]),
    refusals.map((m) => [m.code, `${String(m.code)}: ${String(m.message)}`]),
    "every error reaches the application",
  );

  mark = second.sent.length;
  doc.close();
  assert.deepEqual(sentSince(second, mark), [client("close")], "close");
  assert.equal(c.state, "open", "nothing in the vectors ended the session");
});

test("every rejection in the vectors settles the transaction it names, or re-runs it", async () => {
  for (const message of examples(serverMessages, "rejected")) {
    const rejection = message.rejection as unknown as Rejection;
    const { client: c, socket } = await connected();
    await waitFor(() => socket.sent.length === 1, "auth");
    socket.receive(asServer(server("welcome")));
    const doc = c.document(DOC);
    socket.receive(asServer(server("snapshot")));
    socket.receive(asServer(server("opened")));
    await doc.whenReady();
    doc.on("error", () => {});
    const outcome = doc.transact(runVectorTransaction, { attempts: 2 }).then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    assert.equal(socket.commits()[0]?.tx.tx_id, message.tx_id, rejection.reason);
    socket.receive(asServer(message));
    const rerun = rejection.reason === "conflict" || rejection.reason === "stale" || rejection.reason === "patch" || rejection.reason === "outcome_unknown";
    if (rerun) {
      await waitFor(() => socket.commits().length === 2, `${rejection.reason}: re-run and sent again`);
      assert.notEqual(socket.commits()[1]?.tx.tx_id, message.tx_id, `${rejection.reason}: under a new id`);
    } else {
      const settled = await outcome;
      assert.ok("error" in settled && settled.error instanceof TransactionRejected, `${rejection.reason}: rejected`);
      assert.deepEqual(settled.error.rejection, rejection, `${rejection.reason}: the rejection as sent`);
    }
    c.close();
  }
});

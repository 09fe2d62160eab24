// The TypeScript client against the real `concord` binary: transactions,
// conflicts and re-runs, STM retry, resume after a dropped connection, a lost
// acknowledgement (also one whose id the server forgot), offline writes, a
// server restart, pub/sub, RPC, presence.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  connect,
  RpcError,
  TransactionOutcomeUnknown,
  TransactionRejected,
  type Client,
  type DocumentHandle,
  type Json,
  type PresenceChange,
} from "../../src/node.js";
import { FaultProxy } from "../support/proxy.js";
import { ConcordServer } from "../support/server.js";
import { nextEvent, waitFor } from "../support/wait.js";

let server: ConcordServer;
const clients: Client[] = [];
let docSeq = 0;

async function client(url = server.wsUrl): Promise<Client> {
  const c = await connect(url, { connectTimeoutMs: 10_000, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  clients.push(c);
  return c;
}

/** A fresh document id per test, so tests share one server without sharing state. */
function docId(name: string): string {
  return `it/${name}-${process.pid}-${++docSeq}`;
}

/** The server's own copy of a document (`GET /docs/{id}`), not any replica's. */
async function serverDocument(s: ConcordServer, id: string): Promise<{ version: number; value: Json }> {
  const response = await fetch(`${s.httpUrl}/docs/${id}`);
  assert.equal(response.status, 200, `GET /docs/${id}`);
  const body = (await response.json()) as { version: number; value: Json };
  return { version: body.version, value: body.value };
}

/**
 * A server that forgets fast: its dedup window keeps two generations of two
 * tx ids, and it keeps one change of history (so a resume gets a snapshot).
 */
function startForgetfulServer(): Promise<ConcordServer> {
  return ConcordServer.start({ args: ["--tx-dedup-entries-max", "2", "--change-history-max", "1"] });
}

interface ForgetfulPair {
  forgetful: ConcordServer;
  proxy: FaultProxy;
  id: string;
  a: Client;
  da: DocumentHandle;
  dObs: DocumentHandle;
  /** The reason of every `rejected` the proxy passed on to `a`. */
  rejections: string[];
}

/**
 * Runs `body` with a forgetful server, a client `a` behind a fault proxy and
 * an observer connected directly, both on a fresh document; tears all of it
 * down after.
 */
async function withForgetfulPair(name: string, body: (pair: ForgetfulPair) => Promise<void>): Promise<void> {
  const forgetful = await startForgetfulServer();
  const proxy = await FaultProxy.start(forgetful.wsUrl);
  const id = docId(name);
  const a = await client(proxy.url);
  const observer = await client(forgetful.wsUrl);
  try {
    const da = await a.open(id);
    const dObs = await observer.open(id);
    const rejections: string[] = [];
    proxy.downstream = (message) => {
      if (message.type === "rejected") rejections.push((message.rejection as { reason: string }).reason);
      return "forward";
    };
    await body({ forgetful, proxy, id, a, da, dObs, rejections });
  } finally {
    a.close();
    observer.close();
    await proxy.close();
    await forgetful.stop();
  }
}

/** Five acknowledged commits: the dedup window turns over twice, so every id from before them is forgotten. */
async function outlastTheDedupWindow(d: DocumentHandle): Promise<void> {
  for (let i = 0; i < 5; i++) await d.transact((tx) => tx.increment("/other", 1));
}

before(async () => {
  server = await ConcordServer.start();
});

after(async () => {
  for (const c of clients) c.close();
  await server.stop();
});

describe("documents and transactions", () => {
  test("a commit shows at once locally and reaches another replica", async () => {
    const id = docId("basic");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    assert.deepEqual(da.value, {}, "a document never written is {}");
    assert.equal(da.version, 0);
    const committed = da.transact((tx) => {
      tx.set("/title", "hello");
      tx.set("/shapes", { a: { x: 1 } });
      return "result";
    });
    assert.deepEqual(da.value, { title: "hello", shapes: { a: { x: 1 } } }, "the optimistic view has it before the server answers");
    assert.equal(da.pendingCount, 1);
    assert.equal(await committed, "result");
    assert.equal(da.pendingCount, 0);
    assert.equal(da.version, 1);
    await waitFor(() => db.version === 1, "the change at b");
    assert.deepEqual(db.value, da.value);
  });

  test("read-modify-write transactions from two clients never lose an update", async () => {
    const id = docId("counter");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    const rounds = 15;
    const bump = (d: DocumentHandle) =>
      d.transact((tx) => tx.set("/n", (tx.getNumber("/n") ?? 0) + 1), { attempts: 100 });
    await Promise.all([
      (async () => { for (let i = 0; i < rounds; i++) await bump(da); })(),
      (async () => { for (let i = 0; i < rounds; i++) await bump(db); })(),
    ]);
    await waitFor(() => da.version === db.version && da.pendingCount === 0 && db.pendingCount === 0, "both replicas settled");
    assert.equal(da.get("/n"), rounds * 2);
    assert.deepEqual(db.value, da.value);
  });

  test("blind increments never conflict", async () => {
    const id = docId("incr");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    const runs: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) {
      runs.push(da.transact((tx) => tx.increment("/hits", 1), { attempts: 1 }));
      runs.push(db.transact((tx) => tx.increment("/hits", 2), { attempts: 1 }));
    }
    await Promise.all(runs); // attempts: 1 means any rejection would throw
    await waitFor(() => da.version === 40 && db.version === 40, "all 40 commits at both");
    assert.equal(da.get("/hits"), 60);
    assert.equal(db.get("/hits"), 60);
  });

  test("a conflict is rejected with its explanation after the change that caused it", async () => {
    const proxy = await FaultProxy.start(server.wsUrl);
    try {
      const id = docId("conflict");
      const a = await client();
      const b = await client(proxy.url);
      const [da, db] = [await a.open(id), await b.open(id)];
      await da.transact((tx) => tx.set("/x", 1));
      await waitFor(() => db.version === 1, "b at v1");
      // b runs while cut off, so it reads /x at v1; a then overwrites /x.
      proxy.setOnline(false);
      await waitFor(() => b.state === "reconnecting", "b offline");
      let runs = 0;
      const bRun = db.transact((tx) => {
        runs++;
        tx.set("/y", tx.getNumber("/x"));
      }, { attempts: 1 });
      assert.equal(db.get("/y"), 1, "optimistic while offline");
      await da.transact((tx) => tx.set("/x", 2));
      proxy.setOnline(true);
      const error = await bRun.then(() => null, (e: unknown) => e);
      assert.ok(error instanceof TransactionRejected, String(error));
      assert.equal(error.rejection.reason, "conflict");
      assert.equal(runs, 1);
      if (error.rejection.reason === "conflict") {
        assert.deepEqual(error.rejection.conflicts.map((c) => c.pointer), ["/x"]);
        assert.equal(error.rejection.conflicts[0]?.version, 2);
      }
      assert.equal(db.version, 2, "the replica is current when the rejection arrives");
      assert.equal(db.get("/y"), undefined, "the rejected write was rolled back");
      // With attempts to spare, the same function re-runs on the new state and commits.
      proxy.setOnline(false);
      await waitFor(() => b.state === "reconnecting", "b offline again");
      const again = db.transact((tx) => {
        runs++;
        tx.set("/y", tx.getNumber("/x"));
      });
      // The document just saw a rejection, so this first run waits out the
      // contention pause (session/pacing.ts) before it runs, on /x at v2.
      await waitFor(() => db.get("/y") === 2, "b's run after the contention pause");
      await da.transact((tx) => tx.set("/x", 3));
      proxy.setOnline(true);
      await again;
      assert.equal(runs, 3, "one rejected run, one that committed");
      assert.equal(db.get("/y"), 3);
    } finally {
      await proxy.close();
    }
  });

  test("retry() waits until something it read changes", async () => {
    const id = docId("retry");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    let runs = 0;
    const taken = db.transact((tx) => {
      runs++;
      const job = tx.get("/job");
      if (job === undefined) tx.retry();
      tx.remove("/job");
      return job;
    });
    await waitFor(() => runs === 1, "the first run");
    await da.transact((tx) => tx.set("/unrelated", true));
    await waitFor(() => db.version === 1, "the unrelated change at b");
    assert.equal(runs, 1, "an unrelated change does not wake the retry");
    await da.transact((tx) => tx.set("/job", { task: "paint" }));
    assert.deepEqual(await taken, { task: "paint" });
    assert.equal(runs, 2);
    await waitFor(() => da.get("/job") === undefined, "the job taken at a");
  });

  test("orElse falls through to the second branch and nested writes merge", async () => {
    const c = await client();
    const d = await c.open(docId("orelse"));
    await d.transact((tx) => tx.set("/stock", 0));
    const outcome = await d.transact((tx) =>
      tx.orElse(
        (tx) => {
          const n = tx.getNumber("/stock") ?? 0;
          if (n === 0) tx.retry();
          tx.set("/stock", n - 1);
          return "sold";
        },
        (tx) => {
          tx.increment("/backorders");
          return "backordered";
        },
      ),
    );
    assert.equal(outcome, "backordered");
    assert.deepEqual(d.value, { stock: 0, backorders: 1 });
  });

  test("a run reading a pending write waits for it, then commits on the confirmed state", async () => {
    const c = await client();
    const d = await c.open(docId("blocked"));
    const first = d.transact((tx) => tx.set("/a", 1));
    const second = d.transact((tx) => tx.set("/b", (tx.getNumber("/a") ?? 0) + 1));
    await Promise.all([first, second]);
    assert.deepEqual(d.value, { a: 1, b: 2 });
    assert.equal(d.version, 2);
  });

  test("read-only transactions never reach the server", async () => {
    const c = await client();
    const d = await c.open(docId("readonly"));
    await d.transact((tx) => tx.set("/v", 7));
    const version = d.version;
    const effects: string[] = [];
    const value = await d.transact((tx) => {
      tx.afterCommit(() => effects.push("ran"));
      return tx.get("/v");
    });
    assert.equal(value, 7);
    assert.deepEqual(effects, ["ran"]);
    assert.equal(d.version, version);
    assert.equal(d.pendingCount, 0);
  });

  test("keys named like prototype members are data end to end", async () => {
    const id = docId("proto");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    await da.transact((tx) => {
      tx.set(["__proto__"], { polluted: true });
      tx.set(["constructor"], { prototype: { polluted: true } });
    });
    await waitFor(() => db.version === 1, "the change at b");
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(JSON.stringify(db.value), '{"__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}}}');
    // A fresh snapshot carries them too.
    const c = await client();
    const dc = await c.open(id);
    assert.deepEqual(Object.keys(dc.value as object).sort(), ["__proto__", "constructor"]);
    assert.equal(Object.getPrototypeOf(dc.value), Object.prototype);
  });
});

describe("resume", () => {
  test("after a dropped connection the client gets only the missing changes", async () => {
    const id = docId("resume");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    await da.transact((tx) => tx.set("/n", 1));
    await waitFor(() => db.version === 1, "b at v1");
    const snapshots: string[] = [];
    db.on("change", (e) => snapshots.push(e.origin));
    b.dropConnection();
    await da.transact((tx) => tx.set("/n", 2));
    await da.transact((tx) => tx.set("/m", 3));
    // Written while b is away: pending at b, visible there at once.
    const offline = db.transact((tx) => tx.set("/fromB", true));
    assert.equal(db.get("/fromB"), true);
    await offline;
    await waitFor(() => da.get("/fromB") === true, "b's write at a");
    assert.deepEqual(db.value, { n: 2, m: 3, fromB: true });
    assert.deepEqual(da.value, db.value);
    assert.ok(!snapshots.includes("snapshot"), `b caught up from changes, not a snapshot: ${snapshots}`);
    assert.equal(db.version, 4);
  });

  test("a commit whose acknowledgement is lost commits exactly once", async () => {
    const proxy = await FaultProxy.start(server.wsUrl);
    try {
      const id = docId("lost-ack");
      const a = await client(proxy.url);
      const observer = await client();
      const da = await a.open(id);
      const dObs = await observer.open(id);
      let dropped = 0;
      proxy.downstream = (message) => {
        if (message.type === "committed" && dropped === 0) {
          dropped++;
          return "drop-and-disconnect";
        }
        return "forward";
      };
      const sessionBefore = a.session;
      await da.transact((tx) => tx.increment("/count", 1));
      assert.equal(dropped, 1, "the first acknowledgement was lost");
      assert.notEqual(a.session, sessionBefore, "the client reconnected");
      await waitFor(() => dObs.version === 1, "the observer at v1");
      assert.equal(dObs.get("/count"), 1);
      assert.equal(da.get("/count"), 1, "counted once, though submitted twice");
      assert.equal(da.version, 1);
      // And the document really is at version 1: one more commit makes 2.
      await da.transact((tx) => tx.increment("/count", 1));
      assert.equal(da.version, 2);
    } finally {
      await proxy.close();
    }
  });

  test("a lost acknowledgement whose id was forgotten is reported unknown, not committed twice", async () => {
    await withForgetfulPair("forgotten", async ({ forgetful, proxy, id, a, da, dObs, rejections }) => {
      const origins: string[] = [];
      da.on("change", (e) => origins.push(e.origin));

      // The increment commits; its acknowledgement is held, then lost.
      proxy.freeze();
      let runs = 0;
      const increment = da.transact((tx) => {
        runs++;
        tx.increment("/hits", 1);
      });
      const outcome = increment.then(() => null, (e: unknown) => e);
      const [sent] = da.pending();
      assert.ok(sent, "the increment is pending");
      assert.equal(sent.base, 0);
      await waitFor(() => dObs.version === 1, "the increment committed (the observer at v1)");
      await outlastTheDedupWindow(dObs);
      const sessionBefore = a.session;
      proxy.sever();

      // Resubmitted from a snapshot, the increment's id is unknown to the
      // server: committing it again would count it twice.
      const error = await outcome;
      assert.ok(error instanceof TransactionOutcomeUnknown, `expected TransactionOutcomeUnknown, got ${String(error)}`);
      assert.ok(!(error instanceof TransactionRejected), "told apart from a rejection");
      assert.equal(error.txId, sent.tx_id);
      assert.equal(error.rejection.reason, "outcome_unknown");
      assert.equal(error.rejection.base, 0);
      assert.ok(error.rejection.floor > 0, `floor ${error.rejection.floor}`);
      assert.match(error.message, /the outcome of a transaction sent before a disconnect is unknown/);
      assert.notEqual(a.session, sessionBefore, "the client reconnected");
      assert.equal(runs, 1, "not re-run");
      assert.deepEqual(rejections, ["outcome_unknown"]);
      const truth = await serverDocument(forgetful, id);
      assert.deepEqual(truth.value, { hits: 1, other: 5 }, "the increment counted once");
      assert.equal(truth.version, 6);
      // The replica shows what happened: the server's state, nothing pending.
      await waitFor(() => da.version === truth.version, "a's replica at the server's version");
      assert.deepEqual(da.value, truth.value);
      assert.equal(da.pendingCount, 0);
      assert.ok(origins.includes("snapshot"), `reloaded from a snapshot: ${origins}`);
    });
  });

  test("a first submission based before forgotten ids is re-run and commits once", async () => {
    await withForgetfulPair("behind", async ({ forgetful, proxy, id, da, dObs, rejections }) => {
      // a's replica stays at version 0 while the window forgets the ids of
      // the first versions, so its increment goes out based at 0.
      proxy.freeze();
      await outlastTheDedupWindow(dObs);
      let runs = 0;
      let firstRun!: () => void;
      const ranOnce = new Promise<void>((resolve) => (firstRun = resolve));
      const increment = da.transact((tx) => {
        runs++;
        firstRun();
        tx.increment("/hits", 1);
      });
      // Its first run is over, so its base is fixed at 0 (no change can
      // arrive while frozen), before the thaw lets the changes in.
      await ranOnce;
      assert.equal(da.version, 0);
      assert.equal(da.pending()[0]?.base, 0);
      proxy.thaw();

      // Never sent before, it cannot have committed: `outcome_unknown` is
      // only stale for it, and the re-run on the current replica commits.
      await increment;
      assert.equal(runs, 2, "one run rejected, one committed");
      assert.deepEqual(rejections, ["outcome_unknown"]);
      const truth = await serverDocument(forgetful, id);
      assert.deepEqual(truth.value, { hits: 1, other: 5 });
      assert.equal(truth.version, 6);
      assert.equal(da.version, 6);
      assert.deepEqual(da.value, truth.value);
    });
  });

  test("writes made offline stay visible and sync when the network returns", async () => {
    const proxy = await FaultProxy.start(server.wsUrl);
    try {
      const id = docId("offline");
      const a = await client(proxy.url);
      const other = await client();
      const da = await a.open(id);
      const dOther = await other.open(id);
      await da.transact((tx) => tx.set("/shapes", {}));
      await waitFor(() => dOther.version === 1, "the other client at v1");
      proxy.setOnline(false);
      await waitFor(() => a.state === "reconnecting", "a offline");
      const writes = [1, 2, 3].map((i) => da.transact((tx) => tx.set(["shapes", `s${i}`], { x: i })));
      const fromOther = dOther.transact((tx) => tx.set(["shapes", "o"], { x: 0 }));
      await fromOther;
      assert.equal(da.pendingCount, 3);
      assert.deepEqual(da.get("/shapes"), { s1: { x: 1 }, s2: { x: 2 }, s3: { x: 3 } });
      assert.ok(!da.live);
      proxy.setOnline(true);
      await Promise.all(writes);
      await waitFor(() => dOther.version === 5 && da.version === 5, "both at v5");
      assert.deepEqual(da.value, dOther.value);
      assert.deepEqual(Object.keys(da.get("/shapes") as object).sort(), ["o", "s1", "s2", "s3"]);
    } finally {
      await proxy.close();
    }
  });

  test("after a server restart the client reconnects and re-publishes its pending writes", async () => {
    // A server of its own: restarting it must not disturb the other tests.
    const own = await ConcordServer.start({ durable: true });
    try {
      const id = docId("restart");
      const a = await client(own.wsUrl);
      const da = await a.open(id);
      await da.transact((tx) => tx.set("/before", 1));
      await own.stop("SIGKILL");
      await waitFor(() => a.state === "reconnecting", "a offline");
      const pending = da.transact((tx) => tx.set("/during", 2));
      await own.restart();
      await pending;
      const b = await client(own.wsUrl);
      const db = await b.open(id);
      // The server is durable: what it acknowledged before the kill is still
      // there, and what the client held pending is published after it.
      assert.equal(db.get("/before"), 1);
      assert.equal(db.get("/during"), 2);
      await waitFor(() => da.version === db.version, "a caught up with the restarted server");
      assert.deepEqual(da.value, db.value);
    } finally {
      await own.stop();
    }
  });
});

describe("pub/sub, presence and RPC", () => {
  test("wildcard subscriptions, acknowledged publishes and echo control", async () => {
    const [a, b] = [await client(), await client()];
    const got: [string, Json][] = [];
    const mine: string[] = [];
    const unsubscribe = await b.subscribe("room.*.chat", (data, topic) => got.push([topic, data]));
    await b.subscribe("room.>", (_data, topic) => mine.push(topic));
    await a.publish("room.1.chat", { text: "hi" }, { ack: true });
    await a.publish("room.2.chat", { text: "there" }, { ack: true });
    await a.publish("room.2.other", 1, { ack: true });
    await waitFor(() => got.length === 2 && mine.length === 3, "three messages at b");
    assert.deepEqual(got, [["room.1.chat", { text: "hi" }], ["room.2.chat", { text: "there" }]]);
    unsubscribe();
    // echo: false keeps a publisher's own subscription quiet.
    const echoes: Json[] = [];
    await a.subscribe("self.topic", (data) => echoes.push(data));
    await a.publish("self.topic", "quiet", { ack: true, echo: false });
    await a.publish("self.topic", "loud", { ack: true });
    await waitFor(() => echoes.length >= 1, "the echoed message");
    assert.deepEqual(echoes, ["loud"]);
  });

  test("presence joins, updates and leaves with the session", async () => {
    const id = docId("presence");
    const [a, b] = [await client(), await client()];
    const [da, db] = [await a.open(id), await b.open(id)];
    const join = nextEvent<PresenceChange>((l) => db.on("presence", l), (e) => e.event === "join", "join at b");
    da.setPresence({ name: "Ada", x: 1 });
    assert.deepEqual((await join).state, { name: "Ada", x: 1 });
    const update = nextEvent<PresenceChange>((l) => db.on("presence", l), (e) => e.event === "update", "update at b");
    da.setPresence({ name: "Ada", x: 2 });
    assert.deepEqual((await update).state, { name: "Ada", x: 2 });
    assert.deepEqual([...db.presence.values()], [{ name: "Ada", x: 2 }]);
    // A late joiner hears about those already present.
    const c = await client();
    const dc = c.document(id);
    await nextEvent<PresenceChange>((l) => dc.on("presence", l), (e) => e.event === "join", "join at the late joiner");
    const leave = nextEvent<PresenceChange>((l) => db.on("presence", l), (e) => e.event === "leave", "leave at b");
    a.close();
    await leave;
    assert.equal(db.presence.size, 0);
  });

  test("calls reach a registered client and errors come back with their codes", async () => {
    const [callee, caller] = [await client(), await client()];
    const notes: Json[] = [];
    await callee.register("math.add", (params) => {
      const p = params as { a: number; b: number };
      return p.a + p.b;
    });
    await callee.register("math.fail", () => {
      throw new RpcError(-32001, "no such luck", { why: "test" });
    });
    await callee.register("note", (params) => {
      notes.push(params ?? null);
    });
    assert.equal(await caller.call("math.add", { a: 2, b: 40 }), 42);
    await assert.rejects(caller.call("math.fail"), (error: unknown) => error instanceof RpcError && error.code === -32001 && error.message === "no such luck");
    await assert.rejects(caller.call("nobody.home", {}, { timeoutMs: 5_000 }), (error: unknown) => error instanceof RpcError && error.code === -32601);
    caller.notify("note", { n: 1 });
    await waitFor(() => notes.length === 1, "the notification");
    assert.deepEqual(notes, [{ n: 1 }]);
  });
});

describe("the link", () => {
  test("a server gone silent is detected within the silence timeout; the client reconnects and resumes", async () => {
    const proxy = await FaultProxy.start(server.wsUrl);
    const silenceTimeoutMs = 400;
    const pingIntervalMs = 100;
    const a = await connect(proxy.url, {
      connectTimeoutMs: 10_000,
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
      pingIntervalMs,
      silenceTimeoutMs,
    });
    clients.push(a);
    try {
      const id = docId("silent");
      const da = await a.open(id);
      await da.transact((tx) => tx.set("/before", true));
      const sessions: boolean[] = [];
      a.on("session", (s) => sessions.push(s.resumed));
      // Pings go out and are answered (`pong`, or the `error` of a server
      // that does not know `ping`): a session that hears its server stays up
      // past the silence timeout.
      let answers = 0;
      proxy.downstream = (message) => {
        if (message.type === "pong" || (message.type === "error" && String(message.message).includes("`ping`"))) answers++;
        return "forward";
      };
      const enough = Math.ceil((2 * silenceTimeoutMs) / pingIntervalMs);
      await waitFor(() => answers >= enough, `${enough} pings answered`);
      assert.deepEqual(sessions, [], "no reconnect while the server answers");
      assert.equal(a.state, "open");
      // The network now holds everything the server sends (the server itself
      // is fine): to the client it is silent.
      const frozenAt = performance.now();
      proxy.freeze();
      const down = await nextEvent<string>((l) => a.on("state", l), (state) => state === "reconnecting", "the link reported down", 10_000);
      const detectedMs = performance.now() - frozenAt;
      assert.equal(down, "reconnecting");
      // Detection needs the silence timeout to pass since the last word heard
      // (at most a ping interval before the freeze), and comes at a ping.
      assert.ok(detectedMs >= silenceTimeoutMs - pingIntervalMs, `detected after ${detectedMs} ms, before the silence timeout`);
      assert.ok(detectedMs <= silenceTimeoutMs + 3 * pingIntervalMs + 1_000, `detected after ${detectedMs} ms`);
      await waitFor(() => a.state === "open", "the reconnected session");
      assert.deepEqual(sessions, [true], "one new session, resumed");
      await da.whenReady();
      await waitFor(() => da.live, "the document live again");
      await da.transact((tx) => tx.set("/after", true));
      assert.deepEqual(da.value, { before: true, after: true });
    } finally {
      a.close();
      await proxy.close();
    }
  });
});

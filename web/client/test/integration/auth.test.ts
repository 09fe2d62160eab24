// The TypeScript client against the real `concord` binary with
// authentication on (`serve --jwt-secret-file`): the token provider on
// every connect and reconnect, the identity from `welcome`, a refused token,
// an expiring one, a forbidden open and writes the token does not allow.
// Tokens are minted with the binary itself (`concord token`).

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";

import {
  AccessDeniedError,
  AuthError,
  Client,
  connect,
  ForbiddenError,
  type ConnectOptions,
  type DocumentHandle,
} from "../../src/node.js";
import { ConcordServer, concordBinary } from "../support/server.js";
import { nextEvent, waitFor } from "../support/wait.js";

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), "concord-auth-"));
const secretFile = join(dir, "secret");
const otherSecretFile = join(dir, "other-secret");
writeFileSync(secretFile, randomBytes(32).toString("hex"));
writeFileSync(otherSecretFile, randomBytes(32).toString("hex"));

let server: ConcordServer;
const clients: Client[] = [];
let docSeq = 0;

before(async () => {
  // No clock leeway and a short grace after `token_expired`, so the expiry
  // test sees a token end within seconds.
  server = await ConcordServer.start({
    args: ["--jwt-secret-file", secretFile, "--jwt-leeway-secs", "0", "--token-expiry-grace-ms", "200"],
  });
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

/** A token from `concord token` (`--sub`, `--ttl`, grants as flags). */
async function mint(args: string[], secret = secretFile): Promise<string> {
  const { stdout } = await run(concordBinary(), ["token", "--secret-file", secret, ...args]);
  return stdout.trim();
}

function docId(name: string): string {
  return `auth:${name}-${process.pid}-${++docSeq}`;
}

const fast: ConnectOptions = { reconnect: { initialDelayMs: 20, maxDelayMs: 200 }, connectTimeoutMs: 10_000 };

async function connected(token: () => Promise<string>): Promise<Client> {
  const client = await connect(server.wsUrl, { ...fast, token });
  clients.push(client);
  return client;
}

/** A provider minting a fresh token per call, counting the calls. */
function minting(args: string[]): { provider: () => Promise<string>; calls: () => number } {
  let calls = 0;
  return {
    provider: () => {
      calls++;
      return mint(args);
    },
    calls: () => calls,
  };
}

describe("authentication", () => {
  test("the token provider is asked on connect and on every reconnect; the session is who the token says", async () => {
    const id = docId("provider");
    const { provider, calls } = minting(["--sub", "alice", "--name", "Alice", "--ttl", "60s", "--write", "auth:*"]);
    const client = await connected(provider);
    assert.equal(calls(), 1);
    assert.deepEqual(client.identity, { sub: "alice", name: "Alice" });
    const doc = await client.open(id);
    await doc.transact((tx) => tx.set("/n", 1));
    const resumed = nextEvent<{ resumed: boolean; identity?: { sub: string } }>((l) => client.on("session", l), (e) => e.resumed, "the resumed session");
    client.dropConnection();
    const session = await resumed;
    assert.equal(calls(), 2, "asked again for the reconnect");
    assert.equal(session.identity?.sub, "alice");
    await waitFor(() => doc.live, "the document live again");
    await doc.transact((tx) => tx.increment("/n", 1));
    assert.deepEqual(doc.value, { n: 2 });
  });

  test("a refused token surfaces as an AuthError; the client keeps retrying, asking the provider again, and gets in once it gives a good one", async () => {
    let good = false;
    let calls = 0;
    const client = new Client(server.wsUrl, {
      ...fast,
      token: () => {
        calls++;
        return good ? mint(["--sub", "bob", "--ttl", "60s", "--read", "auth:*"]) : "not-a-jwt";
      },
    });
    clients.push(client);
    const error = await nextEvent<AuthError>((l) => client.on("auth_error", l), () => true, "auth_error");
    assert.ok(error instanceof AuthError);
    assert.equal(error.code, "unauthorized");
    assert.equal(client.authError, error);
    assert.notEqual(client.state, "open");
    await waitFor(() => calls >= 2, "the provider asked again for the retry");
    good = true;
    await client.ready(10_000);
    assert.equal(client.authError, undefined);
    assert.equal(client.identity?.sub, "bob");
  });

  test("connect() with a token signed by another secret rejects with an AuthError", async () => {
    await assert.rejects(
      connect(server.wsUrl, { ...fast, token: () => mint(["--sub", "mallory", "--write", "**"], otherSecretFile) }),
      (e: unknown) => e instanceof AuthError && e.code === "unauthorized",
    );
  });

  test("an expiring token is replaced with a fresh one: the client reconnects at once and resumes, with no auth error", async () => {
    const id = docId("expiry");
    const { provider, calls } = minting(["--sub", "carol", "--ttl", "2s", "--write", "auth:*"]);
    const client = await connected(provider);
    const failures: AuthError[] = [];
    client.on("auth_error", (e) => failures.push(e));
    const doc = await client.open(id);
    await doc.transact((tx) => tx.set("/before", true));
    const resumed = await nextEvent<{ resumed: boolean }>((l) => client.on("session", l), (e) => e.resumed, "a session after the token expired", 15_000);
    assert.ok(resumed.resumed);
    assert.ok(calls() >= 2, "a fresh token was asked for");
    await waitFor(() => doc.live, "the document live again");
    await doc.transact((tx) => tx.set("/after", true));
    assert.deepEqual(doc.value, { before: true, after: true });
    assert.deepEqual(failures, [], "an expiry is no auth failure");
  });
});

describe("permissions", () => {
  test("an open the token does not allow fails with AccessDeniedError; the session goes on", async () => {
    const secret = docId("secret");
    const open = docId("public");
    const client = await connected(() => mint(["--sub", "dave", "--ttl", "60s", "--read", "auth:public-*"]));
    const refused = await client.open(secret).then(() => null, (e: unknown) => e);
    assert.ok(refused instanceof AccessDeniedError, String(refused));
    assert.equal(refused.code, "forbidden");
    assert.equal(refused.doc, secret);
    const doc = await client.open(open);
    assert.ok(doc.live, "a document the token allows opens");
  });

  test("a write outside the token's scopes, and one to a document it may only read, fail with ForbiddenError; nothing changes", async () => {
    const id = docId("scoped");
    const admin = await connected(() => mint(["--sub", "admin", "--ttl", "60s", "--write", "auth:*"]));
    const adminDoc = await admin.open(id);
    await adminDoc.transact((tx) => {
      tx.set("/shapes", {});
      tx.set("/settings", { theme: "light" });
    });
    const before = { version: adminDoc.version, value: adminDoc.value };

    const scoped = await connected(() => mint(["--sub", "erin", "--ttl", "60s", "--write", `auth:*=/shapes`]));
    const scopedDoc = await scoped.open(id);
    let runs = 0;
    const reported: unknown[] = [];
    scopedDoc.on("error", (e) => reported.push(e));
    const error = await scopedDoc
      .transact((tx) => {
        runs++;
        tx.set("/settings/theme", "dark");
      })
      .then(() => null, (e: unknown) => e);
    assert.ok(error instanceof ForbiddenError, String(error));
    assert.equal(error.pointer, "/settings/theme");
    assert.equal(error.opIndex, 0);
    assert.ok(error.detail.length > 0, "the server says why");
    assert.equal(runs, 1, "never re-run");
    assert.deepEqual(reported, [error]);
    assert.deepEqual(scopedDoc.value, before.value, "rolled back");
    // Within its scope it writes.
    await scopedDoc.transact((tx) => tx.set("/shapes/a", { x: 1 }));

    const reader = await connected(() => mint(["--sub", "frank", "--ttl", "60s", "--read", "auth:*"]));
    const readerDoc: DocumentHandle = await reader.open(id);
    const readOnly = await readerDoc.transact((tx) => tx.set("/shapes/b", { x: 2 })).then(() => null, (e: unknown) => e);
    assert.ok(readOnly instanceof ForbiddenError, String(readOnly));
    assert.equal(readOnly.pointer, "/shapes/b");

    // Nothing but the allowed write committed: one version past `before`,
    // and the admin's next commit is the one after it.
    await waitFor(() => adminDoc.version === before.version + 1 && adminDoc.pendingCount === 0, "the allowed write at the admin");
    assert.deepEqual(adminDoc.value, { shapes: { a: { x: 1 } }, settings: { theme: "light" } });
    await adminDoc.transact((tx) => tx.set("/shapes/c", { x: 3 }));
    assert.equal(adminDoc.version, before.version + 2, "no refused write took a version");
    await waitFor(() => readerDoc.version === adminDoc.version, "the reader follows");
    assert.deepEqual(readerDoc.value, adminDoc.value);
  });
});

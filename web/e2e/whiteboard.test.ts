// End-to-end: the whiteboard in real headless Chromium (Debian's package,
// driven by playwright-core) against the real `concord` binary serving the
// built app. Two browser contexts are two people. Every wait is for a
// condition, with a timeout; screenshots of each step go to e2e/artifacts/.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

import { repoPath } from "../client/test/support/paths.js";
import { ConcordServer } from "../client/test/support/server.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const ARTIFACTS = repoPath("web", "e2e", "artifacts");
const DIST = repoPath("web", "whiteboard", "dist");
/** Spec: a shape drawn in one context shows in the other within this. */
const PROPAGATION_MS_MAX = 500;

let server: ConcordServer;
let browser: Browser;
const contexts: BrowserContext[] = [];
let boardSeq = 0;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await ConcordServer.start({ staticDir: DIST });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
});

after(async () => {
  for (const context of contexts) await context.close().catch(() => {});
  await browser?.close();
  await server?.stop();
});

function freshBoard(name: string): string {
  return `${name}-${process.pid}-${++boardSeq}`;
}

/** A person: a browser context with the board open and a name set. */
async function person(board: string, name: string, on: ConcordServer = server): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  contexts.push(context);
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`[${name}] page error:`, error));
  await page.goto(`${on.httpUrl}/#board=${board}`);
  await page.fill('[data-testid="name"]', name);
  await synced(page);
  return page;
}

/** A person opening the board with `?view` (view-only) on `on`. */
async function viewerPage(on: ConcordServer, board: string, name = "Viewer"): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  contexts.push(context);
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`[${name}] page error:`, error));
  await page.goto(`${on.httpUrl}/?view#board=${board}`);
  await page.fill('[data-testid="name"]', name);
  await synced(page);
  return page;
}

async function synced(page: Page, timeout = 10_000): Promise<void> {
  await page.waitForFunction(
    () => document.querySelector('[data-testid="connection"]')?.getAttribute("data-state") === "synced",
    undefined,
    { timeout, polling: 50 },
  );
}

/** Both pages hold the same confirmed version with nothing pending. */
async function converged(a: Page, b: Page, timeout = 10_000): Promise<void> {
  const state = (page: Page) =>
    page.evaluate(() => {
      const doc = (globalThis as unknown as { concord: { doc: { version: number; pendingCount: number } } }).concord.doc;
      return { version: doc.version, pending: doc.pendingCount };
    });
  const deadline = Date.now() + timeout;
  for (;;) {
    const [sa, sb] = [await state(a), await state(b)];
    if (sa.version === sb.version && sa.pending === 0 && sb.pending === 0) return;
    if (Date.now() > deadline) throw new Error(`replicas did not converge: ${JSON.stringify([sa, sb])}`);
    await a.waitForTimeout(20); // a poll interval, not a synchronisation
  }
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

/** Shapes as the page draws them: id → position, size, colour. */
async function drawn(page: Page): Promise<Record<string, { type: string; x: number; y: number; w: number; h: number; color: string }>> {
  return page.evaluate(() => {
    const out: Record<string, { type: string; x: number; y: number; w: number; h: number; color: string }> = {};
    for (const el of document.querySelectorAll<SVGGElement>('[data-testid="shape"]')) {
      const d = el.dataset;
      out[d.id as string] = { type: d.type as string, x: Number(d.x), y: Number(d.y), w: Number(d.w), h: Number(d.h), color: d.color as string };
    }
    return out;
  });
}

async function shapeCount(page: Page): Promise<number> {
  return page.locator('[data-testid="shape"]').count();
}

async function waitForShapes(page: Page, count: number, timeout = 5_000): Promise<void> {
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid="shape"]').length === n, count, { timeout, polling: "raf" });
}

/** The document as the page's replica holds it (optimistic view). */
async function docValue(page: Page): Promise<unknown> {
  return page.evaluate(() => (globalThis as unknown as { concord: { doc: { value: unknown } } }).concord.doc.value);
}

async function drawRect(page: Page, x: number, y: number, w: number, h: number, tool = "rect"): Promise<void> {
  await page.click(`[data-testid="tool-${tool}"]`);
  await page.mouse.move(x, y);
  await page.mouse.down();
  await page.mouse.move(x + w / 2, y + h / 2, { steps: 3 });
  await page.mouse.move(x + w, y + h, { steps: 3 });
  await page.mouse.up();
}

async function center(page: Page, id: string): Promise<{ x: number; y: number }> {
  const box = await page.locator(`[data-id="${id}"] .body`).boundingBox();
  assert.ok(box, `shape ${id} is on screen`);
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
}

async function drag(page: Page, from: { x: number; y: number }, to: { x: number; y: number }, steps = 8): Promise<void> {
  await page.mouse.move(from.x, from.y);
  await page.mouse.down();
  await page.mouse.move(to.x, to.y, { steps });
  await page.mouse.up();
}

describe("whiteboard", () => {
  test("shapes drawn in one context appear in the other within 500 ms", async () => {
    const board = freshBoard("draw");
    const alice = await person(board, "Alice");
    const bob = await person(board, "Bob");

    const timings: number[] = [];
    const expectAtBob = async (count: number) => {
      const start = Date.now();
      await waitForShapes(bob, count);
      timings.push(Date.now() - start);
    };

    await drawRect(alice, 300, 200, 160, 100, "rect");
    await expectAtBob(1);
    await drawRect(alice, 520, 200, 140, 100, "ellipse");
    await expectAtBob(2);
    // A freehand stroke.
    await alice.click('[data-testid="tool-stroke"]');
    await alice.mouse.move(320, 420);
    await alice.mouse.down();
    for (let i = 1; i <= 12; i++) await alice.mouse.move(320 + i * 15, 420 + Math.sin(i / 2) * 30);
    await alice.mouse.up();
    await expectAtBob(3);
    // A sticky note with text.
    await alice.click('[data-testid="tool-note"]');
    await alice.mouse.click(820, 300);
    await alice.waitForSelector('[data-testid="note-editor"]:not([hidden])');
    await alice.keyboard.type("Ship it on Friday");
    await alice.mouse.click(1000, 600); // blur saves the note
    await expectAtBob(4);
    await bob.waitForFunction(() => document.querySelector(".note-text")?.textContent === "Ship it on Friday", undefined, { timeout: 5_000 });
    // Recolour the note from Bob's side; Alice sees it.
    const noteId = await bob.locator('[data-type="note"]').getAttribute("data-id");
    await bob.click(`[data-id="${noteId}"] .body`);
    await bob.click('[data-testid="color"][data-color="#ef4444"]');
    await alice.waitForFunction((id) => document.querySelector(`[data-id="${id}"]`)?.getAttribute("data-color") === "#ef4444", noteId, { timeout: 5_000 });

    await converged(alice, bob);
    assert.deepEqual(await drawn(bob), await drawn(alice));
    assert.deepEqual(Object.values(await drawn(alice)).map((s) => s.type).sort(), ["ellipse", "note", "rect", "stroke"]);
    await shot(alice, "draw-alice");
    await shot(bob, "draw-bob");
    console.log(`propagation to the other context (ms): ${timings.join(", ")}`);
    for (const ms of timings) assert.ok(ms < PROPAGATION_MS_MAX, `a shape took ${ms} ms to appear (limit ${PROPAGATION_MS_MAX})`);
  });

  test("both drag the same shape at once and end on the same position", async () => {
    const board = freshBoard("drag");
    const alice = await person(board, "Alice");
    const bob = await person(board, "Bob");
    await drawRect(alice, 400, 300, 150, 100);
    await waitForShapes(bob, 1);
    const [id] = Object.keys(await drawn(alice));
    assert.ok(id);
    const startA = await center(alice, id);
    const startB = await center(bob, id);
    // Both press on the shape, then move in alternation, then release.
    await alice.mouse.move(startA.x, startA.y);
    await bob.mouse.move(startB.x, startB.y);
    await alice.mouse.down();
    await bob.mouse.down();
    for (let i = 1; i <= 15; i++) {
      await Promise.all([
        alice.mouse.move(startA.x + i * 12, startA.y + i * 2),
        bob.mouse.move(startB.x - i * 6, startB.y + i * 10),
      ]);
    }
    await Promise.all([alice.mouse.up(), bob.mouse.up()]);
    await converged(alice, bob);
    // Settled: both replicas hold the same document, and draw the same.
    const [valueA, valueB] = [await docValue(alice), await docValue(bob)];
    assert.deepEqual(valueA, valueB, "the replicas converged");
    const [shapeA, shapeB] = [(await drawn(alice))[id], (await drawn(bob))[id]];
    assert.deepEqual(shapeA, shapeB, "both draw the shape at the same place");
    assert.ok(shapeA && (shapeA.x !== 400 || shapeA.y !== 300), "the shape moved");
    await shot(alice, "drag-alice");
    await shot(bob, "drag-bob");
    // Resize from a corner handle: the other context follows.
    await alice.click(`[data-id="${id}"] .body`);
    // The selection's handles are drawn on the next animation frame, and
    // drawn anew on every render: read the box in the page, in one step,
    // once there is one (a locator's box is null if a render replaced the
    // element between finding it and measuring it).
    const handleBox = await alice.waitForFunction(
      () => {
        const r = document.querySelector('[data-testid="handle-se"]')?.getBoundingClientRect();
        return r && r.width > 0 ? { x: r.x, y: r.y, width: r.width, height: r.height } : null;
      },
      undefined,
      { timeout: 5_000 },
    );
    const handle = await handleBox.jsonValue();
    assert.ok(handle);
    await drag(alice, { x: handle.x + handle.width / 2, y: handle.y + handle.height / 2 }, { x: handle.x + 80, y: handle.y + 60 });
    const resized = (await drawn(alice))[id];
    assert.ok(resized && shapeA && resized.w > shapeA.w && resized.h > shapeA.h, "the shape grew");
    await bob.waitForFunction(([sid, w, h]) => {
      const el = document.querySelector(`[data-id="${sid}"]`);
      return el?.getAttribute("data-w") === String(w) && el?.getAttribute("data-h") === String(h);
    }, [id, resized?.w, resized?.h] as const, { timeout: 5_000 });
    await converged(alice, bob);
    assert.deepEqual(await drawn(bob), await drawn(alice));
    await shot(bob, "resize-bob");
  });

  test("cursors appear with their session and disappear with it", async () => {
    const board = freshBoard("cursors");
    const alice = await person(board, "Alice");
    const bob = await person(board, "Bob");
    await alice.mouse.move(500, 400);
    await alice.mouse.move(520, 410, { steps: 2 });
    await bob.waitForSelector('[data-testid="cursor"][data-name="Alice"]', { timeout: 5_000 });
    await bob.waitForFunction(() => document.querySelectorAll('[data-testid="person"]').length === 2, undefined, { timeout: 5_000 });
    await shot(bob, "cursor-visible");
    await alice.context().close();
    await bob.waitForSelector('[data-testid="cursor"][data-name="Alice"]', { state: "detached", timeout: 5_000 });
    await bob.waitForFunction(() => document.querySelectorAll('[data-testid="person"]').length === 1, undefined, { timeout: 5_000 });
    await shot(bob, "cursor-gone");
  });

  test("undo reverts one's own action and refuses when someone else changed the shape since", async () => {
    const board = freshBoard("undo");
    const alice = await person(board, "Alice");
    const bob = await person(board, "Bob");
    await drawRect(alice, 300, 250, 160, 100);
    await waitForShapes(bob, 1);
    const [id] = Object.keys(await drawn(alice));
    assert.ok(id);
    const created = (await drawn(alice))[id];
    // Alice moves her shape, then undoes the move: back where it was, for both.
    await drag(alice, await center(alice, id), { x: (await center(alice, id)).x + 200, y: (await center(alice, id)).y + 50 });
    await synced(alice);
    await bob.waitForFunction(([sid, x]) => document.querySelector(`[data-id="${sid}"]`)?.getAttribute("data-x") === String(x), [id, (created?.x ?? 0) + 200] as const, { timeout: 5_000 });
    await alice.click('[data-testid="undo"]');
    await bob.waitForFunction(([sid, x]) => document.querySelector(`[data-id="${sid}"]`)?.getAttribute("data-x") === String(x), [id, created?.x] as const, { timeout: 5_000 });
    assert.deepEqual((await drawn(alice))[id], created);
    // Redo moves it again.
    await alice.click('[data-testid="redo"]');
    await bob.waitForFunction(([sid, x]) => document.querySelector(`[data-id="${sid}"]`)?.getAttribute("data-x") === String(x), [id, (created?.x ?? 0) + 200] as const, { timeout: 5_000 });
    // Bob moves the shape after Alice: her undo must refuse, and say why.
    await synced(bob);
    const atBob = await center(bob, id);
    await drag(bob, atBob, { x: atBob.x - 100, y: atBob.y + 120 });
    await synced(bob);
    const moved = (await drawn(bob))[id];
    await alice.waitForFunction(([sid, y]) => document.querySelector(`[data-id="${sid}"]`)?.getAttribute("data-y") === String(y), [id, moved?.y] as const, { timeout: 5_000 });
    await alice.click('[data-testid="undo"]');
    const notice = alice.locator('[data-testid="notice"]').last();
    await notice.waitFor({ timeout: 5_000 });
    const text = await notice.textContent();
    assert.match(text ?? "", /Bob changed this shape since/);
    await shot(alice, "undo-refused");
    await synced(alice);
    assert.deepEqual((await drawn(alice))[id], moved, "the refused undo changed nothing");
    assert.deepEqual((await drawn(bob))[id], moved);
    // Bob can undo his own move; then Alice's shape is where her redo left it.
    await bob.click('[data-testid="undo"]');
    await alice.waitForFunction(([sid, x]) => document.querySelector(`[data-id="${sid}"]`)?.getAttribute("data-x") === String(x), [id, (created?.x ?? 0) + 200] as const, { timeout: 5_000 });
    // A deleted shape comes back with undo.
    await alice.click(`[data-id="${id}"] .body`);
    await alice.keyboard.press("Delete");
    await waitForShapes(bob, 0);
    await alice.click('[data-testid="undo"]');
    await waitForShapes(bob, 1);
    await shot(bob, "undo-restored");
  });

  test("a reload shows the same board", async () => {
    const board = freshBoard("reload");
    const alice = await person(board, "Alice");
    await drawRect(alice, 300, 250, 120, 90);
    await drawRect(alice, 500, 260, 120, 90, "ellipse");
    await waitForShapes(alice, 2);
    await synced(alice);
    const before = await drawn(alice);
    await alice.reload();
    await synced(alice);
    await waitForShapes(alice, 2);
    assert.deepEqual(await drawn(alice), before);
    await shot(alice, "reload");
  });

  test("a ?view board has every editing tool disabled and labelled, and an editor's shapes appear in it live", async () => {
    const board = freshBoard("view");
    const alice = await person(board, "Alice");
    const viewer = await viewerPage(server, board);
    const badge = viewer.locator('[data-testid="view-only"]');
    assert.ok(await badge.isVisible(), "the View only badge shows");
    assert.equal((await badge.textContent())?.trim(), "View only");
    assert.equal(await alice.locator('[data-testid="view-only"]').isVisible(), false, "an editor has no badge");
    const controls = await viewer.evaluate(() =>
      [...document.querySelectorAll<HTMLButtonElement>("#toolbar button, [data-testid=color]")].map((b) => ({
        what: b.dataset.testid ?? b.id,
        disabled: b.disabled,
        title: b.title,
      })),
    );
    for (const control of controls) {
      if (control.what === "tool-select") {
        assert.equal(control.disabled, false, "select (to pan) stays");
      } else {
        assert.equal(control.disabled, true, `${control.what} is disabled`);
      }
      if (control.what.startsWith("tool-") && control.what !== "tool-select") assert.match(control.title, /view only/, `${control.what} says why`);
    }
    // Alice draws: the viewer sees it live.
    await drawRect(alice, 300, 200, 160, 100, "rect");
    await waitForShapes(viewer, 1);
    await alice.click('[data-testid="tool-note"]');
    await alice.mouse.click(700, 300);
    await alice.waitForSelector('[data-testid="note-editor"]:not([hidden])');
    await alice.keyboard.type("Read me");
    await alice.mouse.click(1000, 600);
    await waitForShapes(viewer, 2);
    await viewer.waitForFunction(() => document.querySelector(".note-text")?.textContent === "Read me", undefined, { timeout: 5_000 });
    await converged(alice, viewer);
    const before = await docValue(alice);
    // The viewer tries everything an editor would: shortcuts to draw, a drag
    // on the canvas, a drag of a shape, Delete, undo, a double click on the note.
    const [rectId] = Object.entries(await drawn(viewer)).find(([, s]) => s.type === "rect") ?? [];
    assert.ok(rectId);
    await viewer.keyboard.press("r");
    await drag(viewer, { x: 200, y: 500 }, { x: 320, y: 600 });
    const at = await center(viewer, rectId);
    await drag(viewer, at, { x: at.x + 150, y: at.y + 120 });
    await viewer.mouse.click(at.x, at.y);
    await viewer.keyboard.press("Delete");
    await viewer.keyboard.press("Control+z");
    const noteAt = await center(viewer, Object.entries(await drawn(viewer)).find(([, s]) => s.type === "note")?.[0] ?? "");
    await viewer.mouse.dblclick(noteAt.x, noteAt.y);
    assert.equal(await viewer.locator('[data-testid="note-editor"]').isHidden(), true, "no note editor");
    const state = await viewer.evaluate(() => {
      const doc = (globalThis as unknown as { concord: { doc: { pendingCount: number; value: unknown } } }).concord.doc;
      return { pending: doc.pendingCount, value: doc.value };
    });
    assert.equal(state.pending, 0, "the viewer sent nothing");
    assert.deepEqual(state.value, before, "the viewer's board is unchanged");
    await converged(alice, viewer);
    assert.deepEqual(await docValue(alice), before, "the editor's board is unchanged");
    await shot(viewer, "view-only");
    // Alice keeps drawing: it still reaches the viewer.
    await drawRect(alice, 500, 450, 120, 80, "ellipse");
    await waitForShapes(viewer, 3);
  });

  test("the page recovers when the server restarts mid-session", async () => {
    // A server of its own, so the restart does not disturb other tests.
    const own = await ConcordServer.start({ staticDir: DIST, durable: true });
    try {
      const board = freshBoard("restart");
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      contexts.push(context);
      const alice = await context.newPage();
      await alice.goto(`${own.httpUrl}/#board=${board}`);
      await synced(alice);
      await drawRect(alice, 300, 250, 120, 90);
      await synced(alice);
      await own.stop("SIGKILL");
      await alice.waitForFunction(() => document.querySelector('[data-testid="connection"]')?.getAttribute("data-state") === "offline", undefined, { timeout: 10_000 });
      // Offline: drawing still works, and the change shows as pending.
      await drawRect(alice, 500, 250, 120, 90, "ellipse");
      await waitForShapes(alice, 2);
      await alice.waitForFunction(() => document.querySelector('[data-testid="connection"]')?.getAttribute("data-pending") === "1", undefined, { timeout: 5_000 });
      await shot(alice, "restart-offline");
      await own.restart();
      await synced(alice, 15_000);
      await shot(alice, "restart-recovered");
      // The server is durable: the rectangle it acknowledged before the kill
      // is still on the board, and the page re-published the ellipse it held
      // pending while offline.
      const bobContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      contexts.push(bobContext);
      const bob = await bobContext.newPage();
      await bob.goto(`${own.httpUrl}/#board=${board}`);
      await synced(bob);
      await bob.waitForFunction(() => document.querySelector('[data-testid="shape"][data-type="ellipse"]') !== null, undefined, { timeout: 5_000 });
      await waitForShapes(bob, 2);
      // The page works normally afterwards: a new shape reaches the other context.
      const count = await shapeCount(bob);
      assert.equal(count, 2, "both shapes survived the restart");
      await drawRect(alice, 300, 450, 100, 80);
      await waitForShapes(bob, count + 1);
      await converged(alice, bob);
      assert.deepEqual(await drawn(alice), await drawn(bob), "the two contexts agree");
      await shot(bob, "restart-other-context");
    } finally {
      await own.stop();
    }
  });
});

describe("whiteboard with demo auth (concord serve --demo-auth)", () => {
  let authServer: ConcordServer;

  before(async () => {
    authServer = await ConcordServer.start({ staticDir: DIST, args: ["--demo-auth"] });
  });

  after(async () => {
    await authServer?.stop();
  });

  interface PageIdentity {
    authOn: boolean;
    identity: { sub: string; name?: string } | undefined;
  }
  const identityOf = (page: Page) =>
    page.evaluate((): PageIdentity => {
      const c = (globalThis as unknown as { concord: { authOn: boolean; client: { identity?: { sub: string; name?: string } } } }).concord;
      return { authOn: c.authOn, identity: c.client.identity };
    });

  test("an editor draws; a ?view viewer follows live and cannot write: the server refuses a forced commit and nothing changes", async () => {
    const board = freshBoard("auth");
    const alice = await person(board, "Alice", authServer);
    const seen = await identityOf(alice);
    assert.equal(seen.authOn, true, "the page found demo auth on");
    assert.ok(seen.identity?.sub, "the session is someone");
    await drawRect(alice, 300, 200, 160, 100);
    const viewer = await viewerPage(authServer, board);
    assert.equal((await identityOf(viewer)).authOn, true);
    await waitForShapes(viewer, 1);
    await converged(alice, viewer);
    const before = await docValue(alice);
    // Past the page's own restraint: a commit straight through the client.
    const forced = await viewer.evaluate(async () => {
      const { doc } = (globalThis as unknown as { concord: { doc: { transact(fn: (tx: { set(p: string, v: unknown): void }) => void): Promise<void> } } }).concord;
      try {
        await doc.transact((tx) => tx.set("/shapes/forced", { type: "rect", x: 0, y: 0, w: 50, h: 50, color: "#ef4444", z: 1, by: "Viewer", byId: "v" }));
        return { committed: true } as const;
      } catch (e) {
        const error = e as { name: string; code?: string; pointer?: string; detail?: string };
        return { committed: false, name: error.name, code: error.code, pointer: error.pointer, detail: error.detail } as const;
      }
    });
    assert.equal(forced.committed, false, "the server refused the viewer's write");
    assert.equal(forced.name, "ForbiddenError");
    assert.equal(forced.code, "forbidden");
    assert.equal(forced.pointer, "/shapes/forced");
    const notice = viewer.locator('[data-testid="notice"]', { hasText: "refused" });
    await notice.first().waitFor({ timeout: 5_000 });
    await shot(viewer, "auth-view-refused");
    await converged(alice, viewer);
    assert.deepEqual(await docValue(viewer), before, "the viewer's replica rolled back");
    assert.deepEqual(await docValue(alice), before, "the board did not change");
    // The viewer still follows live after the refusal.
    await drawRect(alice, 520, 220, 120, 80, "ellipse");
    await waitForShapes(viewer, 2);
  });

  test("while no token can be had the page says it is not signed in, and it gets in once one can", async () => {
    const board = freshBoard("auth-down");
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    contexts.push(context);
    let refused = 0;
    await context.route("**/demo/token", (route) => {
      refused++;
      return route.fulfill({ status: 503, contentType: "text/plain", body: "the token service is down" });
    });
    const page = await context.newPage();
    page.on("pageerror", (error) => console.error("[down] page error:", error));
    await page.goto(`${authServer.httpUrl}/#board=${board}`);
    await page.waitForFunction(() => document.querySelector('[data-testid="connection"]')?.getAttribute("data-state") === "unauthorized", undefined, { timeout: 10_000, polling: 50 });
    assert.match((await page.locator('[data-testid="connection"] .label').textContent()) ?? "", /Not signed in/);
    // The board never opened: the loading screen, which covers the page, says why.
    const loading = page.locator('[data-testid="loading"]', { hasText: "Not signed in" });
    await loading.waitFor({ state: "visible", timeout: 5_000 });
    assert.match((await loading.textContent()) ?? "", /503/);
    assert.equal(await page.locator('[data-testid="notice"]', { hasText: "Not signed in" }).count() > 0, true, "and a notice");
    await shot(page, "auth-not-signed-in");
    assert.ok(refused >= 1);
    await context.unroute("**/demo/token");
    await synced(page, 15_000);
    await drawRect(page, 300, 200, 160, 100);
    await synced(page);
  });

  test("a reload is the same person: the page keeps its sub and gets a fresh token", async () => {
    const board = freshBoard("auth-reload");
    const alice = await person(board, "Alice", authServer);
    const first = await identityOf(alice);
    assert.ok(first.identity?.sub);
    await alice.reload();
    await synced(alice);
    const second = await identityOf(alice);
    assert.equal(second.identity?.sub, first.identity?.sub);
    await drawRect(alice, 300, 200, 160, 100);
    await synced(alice);
  });
});

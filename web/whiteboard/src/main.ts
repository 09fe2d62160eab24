// The whiteboard page: connects to the server that served it, opens the
// board named in the URL (`#board=<id>` or `?board=<id>`), and draws the
// shapes, the selection and everyone's cursors. All state goes through
// `Board` (board.ts); this file is input handling and rendering.
//
// `?view` in the URL opens the board view-only: every editing tool and
// action is disabled, and a badge says so. When the server runs in demo
// auth mode (`concord serve --demo-auth`; `GET /demo/config` says
// `{"auth": true}`), the page fetches a token from `POST /demo/token` on
// every (re)connect, asking for `read` access only when viewing, so the
// server enforces view-only too.

import { Client, ForbiddenError, InvalidError, sameOriginUrl, TransactionRejected, VetoedError, type ConnectOptions, type Json } from "@concord/client";

import { Board, type Edit, type Shape, type ShapeType } from "./board.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#6d5efc", "#3b82f6", "#06b6d4", "#22c55e", "#eab308", "#f97316", "#ef4444", "#ec4899", "#1f2937"];
const NOTE_COLORS: Record<string, string> = {
  "#6d5efc": "#e4e0ff", "#3b82f6": "#dbeafe", "#06b6d4": "#cffafe", "#22c55e": "#dcfce7", "#eab308": "#fef9c3",
  "#f97316": "#ffedd5", "#ef4444": "#fee2e2", "#ec4899": "#fce7f3", "#1f2937": "#f1f5f9",
};
const PRESENCE_INTERVAL_MS = 40;
const MIN_SIZE = 8;

type Tool = "select" | "rect" | "ellipse" | "stroke" | "note";

interface Presence {
  name: string;
  color: string;
  x: number | null;
  y: number | null;
  sel: string | null;
}

const $ = <T extends Element = HTMLElement>(selector: string) => document.querySelector(selector) as T;

// ---- who and where ----

function boardId(): string {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("board");
  const fromQuery = new URLSearchParams(location.search).get("board");
  const raw = (fromHash ?? fromQuery ?? "").trim();
  const clean = raw.replace(/[^A-Za-z0-9._-]/g, "").slice(0, 64);
  if (clean) return clean;
  const fresh = Math.random().toString(36).slice(2, 8) + Math.random().toString(36).slice(2, 6);
  history.replaceState(null, "", `${location.pathname}${location.search}#board=${fresh}`);
  return fresh;
}

function myName(): string {
  const saved = localStorage.getItem("concord.whiteboard.name");
  if (saved) return saved;
  const adjectives = ["Swift", "Calm", "Bright", "Bold", "Quiet", "Lucky", "Clever", "Brave", "Sunny", "Witty"];
  const animals = ["Otter", "Fox", "Heron", "Lynx", "Panda", "Koala", "Falcon", "Badger", "Seal", "Wren"];
  const pick = (list: string[]) => list[Math.floor(Math.random() * list.length)] as string;
  const name = `${pick(adjectives)} ${pick(animals)}`;
  localStorage.setItem("concord.whiteboard.name", name);
  return name;
}

/** `?view` (or `#...&view`): the board is open view-only. */
function isViewOnly(): boolean {
  return new URLSearchParams(location.search).has("view") || new URLSearchParams(location.hash.slice(1)).has("view");
}

const SUB_KEY = "concord.whiteboard.sub";

/** Whether the server wants tokens (`GET /demo/config`); a 404 or anything but `{"auth": true}` means an open server. */
async function demoAuthEnabled(): Promise<boolean> {
  try {
    const response = await fetch("/demo/config", { headers: { accept: "application/json" } });
    if (!response.ok) return false;
    const body = (await response.json()) as { auth?: unknown };
    return body.auth === true;
  } catch {
    return false;
  }
}

/**
 * The token provider of demo auth mode: a fresh token from `/demo/token` on
 * each (re)connect, for the name shown in the top bar and the `sub` this
 * browser keeps across reloads; `read` access only when viewing.
 */
function demoTokenProvider(access: "read" | "write", name: () => string): () => Promise<string> {
  return async () => {
    const sub = localStorage.getItem(SUB_KEY);
    const response = await fetch("/demo/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: clipBytes(name(), 64), access, ...(sub ? { sub } : {}) }),
    });
    if (!response.ok) {
      const text = await response.text().catch(() => "");
      throw new Error(`/demo/token answered ${response.status}${text ? `: ${text.slice(0, 200)}` : ""}`);
    }
    const body = (await response.json()) as { token?: unknown; sub?: unknown };
    if (typeof body.token !== "string") throw new Error("/demo/token answered without a token");
    if (typeof body.sub === "string") localStorage.setItem(SUB_KEY, body.sub);
    return body.token;
  };
}

/** `text` cut to at most `max` UTF-8 bytes, on a character boundary (the demo token endpoint takes names of up to 64 bytes). */
function clipBytes(text: string, max: number): string {
  const encoder = new TextEncoder();
  let out = "";
  for (const ch of text) {
    if (encoder.encode(out + ch).length > max) break;
    out += ch;
  }
  return out || "Anonymous";
}

function colorFor(text: string): string {
  let hash = 0;
  for (const ch of text) hash = (hash * 31 + ch.charCodeAt(0)) | 0;
  return COLORS[Math.abs(hash) % (COLORS.length - 1)] as string;
}

// ---- boot ----

const id = boardId();
const viewOnly = isViewOnly();
const me = { id: "", name: myName(), color: "" };
// The name field works from the first moment, also while the page asks the
// server whether auth is on (below): a name typed meanwhile is kept.
const nameInput = $<HTMLInputElement>("#name");
nameInput.value = me.name;
let booted = false;
nameInput.addEventListener("input", () => {
  const name = nameInput.value.trim() || "Anonymous";
  me.name = name;
  localStorage.setItem("concord.whiteboard.name", name);
  if (!booted) return;
  board.me = { ...me };
  publishPresence();
  scheduleRender();
});
const authOn = await demoAuthEnabled();
const options: ConnectOptions = authOn ? { token: demoTokenProvider(viewOnly ? "read" : "write", () => me.name) } : {};
const client = new Client(sameOriginUrl(), options);
const doc = client.document(`board:${id}`);
me.id = client.clientId;
me.color = colorFor(me.name + me.id);
const board = new Board(doc, me, { readOnly: viewOnly });
booted = true;

let tool: Tool = "select";
let color = COLORS[0] as string;
let selected: string | null = null;
let camera = { x: 0, y: 0 };
/** Display overrides while a gesture runs, so the shape follows the pointer between coalesced writes. */
const preview = new Map<string, Partial<Shape>>();
let pointer: { x: number; y: number } | null = null;

const stage = $("#stage");
const canvas = $<SVGSVGElement>("#canvas");
const world = $<SVGGElement>("#world");
const shapesLayer = $<SVGGElement>("#shapes");
const previewLayer = $<SVGGElement>("#preview");
const selectionLayer = $<SVGGElement>("#selection");
const cursorsLayer = $<SVGGElement>("#cursors");
const noteEditor = $<HTMLTextAreaElement>("#note-editor");

$("#board-id").textContent = id;
document.title = `${id} · Concord Whiteboard`;
$("#me-swatch").style.background = me.color;

(globalThis as unknown as { concord: unknown }).concord = { client, doc, board, viewOnly, authOn };

// ---- view-only ----

document.body.classList.toggle("view-only", viewOnly);
$("#view-only").hidden = !viewOnly;
if (viewOnly) {
  for (const button of document.querySelectorAll<HTMLButtonElement>("#toolbar button")) {
    // Selecting (to pan around) is all a viewer does.
    if (button.dataset.tool === "select") continue;
    button.disabled = true;
    button.title = `${button.title} · not available: view only`;
  }
  $("#empty-hint").textContent = "Nothing on this board yet. You are viewing it: what others draw appears here live.";
}

// ---- notices ----

function notice(message: string, kind: "info" | "warn" = "warn"): void {
  // The same message already on screen is not stacked again.
  for (const shown of document.querySelectorAll<HTMLElement>('[data-testid="notice"]')) {
    if (shown.textContent === message) return;
  }
  const el = document.createElement("div");
  el.className = `notice ${kind}`;
  el.dataset.testid = "notice";
  el.textContent = message;
  $("#notices").append(el);
  setTimeout(() => el.remove(), 6000);
}
board.onNotice = (message) => notice(message);
client.on("error", (error) => notice(`Server: ${error.message}`));
client.on("auth_error", (error) => {
  const message = `Not signed in: ${error.message}. Retrying…`;
  notice(message);
  // Before the board first opens, the loading screen covers the page: say it there too.
  $("#loading p").textContent = message;
  scheduleRender();
});
client.on("session", ({ identity }) => {
  $("#loading p").textContent = "Opening board…";
  if (identity) $("#me-swatch").title = `Signed in as ${identity.name ?? identity.sub} (${identity.sub})`;
});
doc.on("error", (error) => {
  if (error instanceof TransactionRejected) {
    notice(refusalNotice(error));
  } else if (error.code === "forbidden") {
    notice(`The server refused: ${error.message.replace(/^forbidden: /, "")}`);
  } else if (error.code !== "not_open") {
    notice(`Server: ${error.message}`);
  }
});

/** What to tell a person whose change the server refused. */
function refusalNotice(error: TransactionRejected): string {
  if (error instanceof ForbiddenError) {
    const why = viewOnly ? "this board is open view-only" : "you may not change that";
    return `The server refused a change: ${why} (${error.detail}).`;
  }
  if (error instanceof InvalidError) return `The server refused a change that breaks the board's rules at ${error.pointer}: ${error.detail}.`;
  if (error instanceof VetoedError) return `The server refused a change: ${error.detail}.`;
  return `A change did not go through: ${error.message}`;
}

// ---- rendering ----

let renderQueued = false;
function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

doc.on("change", scheduleRender);
doc.on("pending", scheduleRender);
doc.on("presence", scheduleRender);
doc.on("ready", scheduleRender);
client.on("state", scheduleRender);
board.onHistory = scheduleRender;

function displayed(idOf: string, shape: Shape): Shape {
  const override = preview.get(idOf);
  return override ? { ...shape, ...override } : shape;
}

const elements = new Map<string, SVGGElement>();

function render(): void {
  world.setAttribute("transform", `translate(${-camera.x} ${-camera.y})`);
  const shapes = board.shapes();
  const pendingIds = pendingShapeIds();
  const ordered = Object.entries(shapes).sort((a, b) => a[1].z - b[1].z || (a[0] < b[0] ? -1 : 1));
  const seen = new Set<string>();
  for (const [shapeId, stored] of ordered) {
    seen.add(shapeId);
    const shape = displayed(shapeId, stored);
    let el = elements.get(shapeId);
    if (!el || el.dataset.type !== shape.type) {
      el?.remove();
      el = createShapeElement(shapeId, shape.type);
      elements.set(shapeId, el);
    }
    updateShapeElement(el, shape);
    el.classList.toggle("pending", pendingIds.has(shapeId));
    shapesLayer.append(el); // keeps z order; a no-op move when already in place
  }
  for (const [shapeId, el] of elements) {
    if (!seen.has(shapeId)) {
      el.remove();
      elements.delete(shapeId);
    }
  }
  if (selected && !shapes[selected]) selected = null;
  renderSelection();
  renderCursors();
  renderPeople();
  renderStatus();
  $("#empty-hint").hidden = ordered.length > 0 || !doc.live;
  ($("#undo") as HTMLButtonElement).disabled = viewOnly || !board.canUndo;
  ($("#redo") as HTMLButtonElement).disabled = viewOnly || !board.canRedo;
  ($("#delete") as HTMLButtonElement).disabled = viewOnly || selected === null;
}

/** Shapes that pending (unconfirmed) transactions write, drawn dashed. */
function pendingShapeIds(): Set<string> {
  const ids = new Set<string>();
  for (const tx of doc.pending()) {
    for (const op of tx.writes) {
      const match = /^\/shapes\/([^/]+)/.exec(op.path);
      if (match) ids.add((match[1] as string).replace(/~1/g, "/").replace(/~0/g, "~"));
    }
  }
  return ids;
}

function createShapeElement(shapeId: string, type: ShapeType): SVGGElement {
  const g = document.createElementNS(SVG, "g");
  g.classList.add("shape");
  g.dataset.id = shapeId;
  g.dataset.type = type;
  g.dataset.testid = "shape";
  if (type === "rect" || type === "note") {
    const rect = document.createElementNS(SVG, "rect");
    rect.classList.add("body");
    g.append(rect);
    if (type === "note") {
      const fo = document.createElementNS(SVG, "foreignObject");
      const div = document.createElement("div");
      div.className = "note-text";
      fo.append(div);
      g.append(fo);
    }
  } else if (type === "ellipse") {
    const ellipse = document.createElementNS(SVG, "ellipse");
    ellipse.classList.add("body");
    g.append(ellipse);
  } else {
    // A wide transparent twin makes thin strokes easy to grab.
    const hit = document.createElementNS(SVG, "path");
    hit.setAttribute("stroke", "transparent");
    hit.setAttribute("stroke-width", "14");
    hit.setAttribute("fill", "none");
    const path = document.createElementNS(SVG, "path");
    path.classList.add("body");
    g.append(hit, path);
  }
  return g;
}

function updateShapeElement(g: SVGGElement, s: Shape): void {
  g.dataset.x = String(Math.round(s.x));
  g.dataset.y = String(Math.round(s.y));
  g.dataset.w = String(Math.round(s.w));
  g.dataset.h = String(Math.round(s.h));
  g.dataset.color = s.color;
  g.dataset.by = s.by;
  if (s.type === "rect" || s.type === "note") {
    const rect = g.querySelector("rect") as SVGRectElement;
    setAttrs(rect, { x: s.x, y: s.y, width: s.w, height: s.h, rx: s.type === "note" ? 4 : 10 });
    if (s.type === "note") {
      setAttrs(rect, { fill: NOTE_COLORS[s.color] ?? "#fef9c3", stroke: s.color, "stroke-width": 1.5 });
      const fo = g.querySelector("foreignObject") as SVGForeignObjectElement;
      setAttrs(fo, { x: s.x, y: s.y, width: s.w, height: s.h });
      const div = fo.firstElementChild as HTMLDivElement;
      if (div.textContent !== (s.text ?? "")) div.textContent = s.text ?? "";
    } else {
      setAttrs(rect, { fill: s.color, "fill-opacity": 0.9, stroke: shade(s.color), "stroke-width": 2 });
    }
  } else if (s.type === "ellipse") {
    const el = g.querySelector("ellipse") as SVGEllipseElement;
    setAttrs(el, { cx: s.x + s.w / 2, cy: s.y + s.h / 2, rx: s.w / 2, ry: s.h / 2, fill: s.color, "fill-opacity": 0.9, stroke: shade(s.color), "stroke-width": 2 });
  } else {
    const d = strokePath(s);
    for (const path of g.querySelectorAll("path")) path.setAttribute("d", d);
    const body = g.querySelector("path.body") as SVGPathElement;
    setAttrs(body, { stroke: s.color, "stroke-width": 3.5, fill: "none", "stroke-linecap": "round", "stroke-linejoin": "round" });
  }
}

function strokePath(s: Shape): string {
  const p = s.points ?? [];
  let d = "";
  for (let i = 0; i + 1 < p.length; i += 2) {
    const x = s.x + (p[i] as number) * s.w;
    const y = s.y + (p[i + 1] as number) * s.h;
    d += `${i === 0 ? "M" : "L"}${x.toFixed(1)} ${y.toFixed(1)}`;
  }
  return d || `M${s.x} ${s.y}`;
}

function renderSelection(): void {
  selectionLayer.replaceChildren();
  renderOthersSelections();
  if (!selected) return;
  const stored = board.shape(selected);
  if (!stored) return;
  const s = displayed(selected, stored);
  const pad = 4;
  const box = document.createElementNS(SVG, "rect");
  box.classList.add("selection-box");
  setAttrs(box, { x: s.x - pad, y: s.y - pad, width: s.w + pad * 2, height: s.h + pad * 2, rx: 4 });
  box.dataset.testid = "selection";
  selectionLayer.append(box);
  const corners: [string, number, number][] = [
    ["nw", s.x - pad, s.y - pad],
    ["ne", s.x + s.w + pad, s.y - pad],
    ["sw", s.x - pad, s.y + s.h + pad],
    ["se", s.x + s.w + pad, s.y + s.h + pad],
  ];
  for (const [corner, x, y] of corners) {
    const handle = document.createElementNS(SVG, "rect");
    handle.classList.add("handle");
    handle.dataset.corner = corner;
    handle.dataset.testid = `handle-${corner}`;
    setAttrs(handle, { x: x - 5, y: y - 5, width: 10, height: 10, rx: 2 });
    selectionLayer.append(handle);
  }
}

/** Outlines the shapes other people have selected, in their colour. */
function renderOthersSelections(): void {
  for (const raw of doc.presence.values()) {
    const p = raw as unknown as Presence;
    if (!p || typeof p !== "object" || typeof p.sel !== "string") continue;
    const stored = board.shape(p.sel);
    if (!stored) continue;
    const s = displayed(p.sel, stored);
    const fill = typeof p.color === "string" ? p.color : "#6d5efc";
    const outline = document.createElementNS(SVG, "rect");
    setAttrs(outline, { x: s.x - 7, y: s.y - 7, width: s.w + 14, height: s.h + 14, rx: 6, fill: "none", stroke: fill, "stroke-width": 2, opacity: 0.8 });
    outline.style.pointerEvents = "none";
    const tag = document.createElementNS(SVG, "text");
    setAttrs(tag, { x: s.x - 6, y: s.y - 12, fill, "font-size": 11, "font-weight": 600 });
    tag.textContent = String(p.name ?? "");
    tag.style.pointerEvents = "none";
    selectionLayer.append(outline, tag);
  }
}

function renderCursors(): void {
  const present = new Set<string>();
  for (const [session, raw] of doc.presence) {
    const p = raw as unknown as Presence;
    if (!p || typeof p !== "object" || p.x === null || p.y === null || typeof p.x !== "number") continue;
    present.add(session);
    let el = cursorsLayer.querySelector<SVGGElement>(`g[data-session="${CSS.escape(session)}"]`);
    if (!el) {
      el = document.createElementNS(SVG, "g");
      el.classList.add("cursor");
      el.dataset.session = session;
      el.dataset.testid = "cursor";
      const arrow = document.createElementNS(SVG, "path");
      arrow.setAttribute("d", "M0 0 L0 16 L4.5 12 L7.5 19 L10 18 L7 11 L12.5 11 Z");
      arrow.setAttribute("stroke", "#fff");
      arrow.setAttribute("stroke-width", "1.2");
      const label = document.createElementNS(SVG, "rect");
      setAttrs(label, { x: 12, y: 18, height: 20, rx: 10 });
      const text = document.createElementNS(SVG, "text");
      setAttrs(text, { x: 20, y: 32 });
      el.append(arrow, label, text);
      cursorsLayer.append(el);
    }
    const name = String(p.name ?? "Someone");
    const fill = typeof p.color === "string" ? p.color : "#6d5efc";
    el.dataset.name = name;
    el.setAttribute("transform", `translate(${p.x} ${p.y})`);
    (el.querySelector("path") as SVGPathElement).setAttribute("fill", fill);
    const label = el.querySelector("rect") as SVGRectElement;
    label.setAttribute("fill", fill);
    label.setAttribute("width", String(name.length * 7 + 16));
    const text = el.querySelector("text") as SVGTextElement;
    if (text.textContent !== name) text.textContent = name;
  }
  for (const el of [...cursorsLayer.children] as SVGGElement[]) {
    if (!present.has(el.dataset.session ?? "")) el.remove();
  }
}

function renderPeople(): void {
  const people = $("#people");
  const list: { name: string; color: string; me: boolean }[] = [{ name: me.name, color: me.color, me: true }];
  for (const raw of doc.presence.values()) {
    const p = raw as unknown as Presence;
    if (p && typeof p === "object") list.push({ name: String(p.name ?? "?"), color: String(p.color ?? "#999"), me: false });
  }
  const key = JSON.stringify(list);
  if (people.dataset.key === key) return;
  people.dataset.key = key;
  people.replaceChildren(
    ...list.map((person) => {
      const el = document.createElement("span");
      el.className = "avatar";
      el.style.background = person.color;
      el.title = person.me ? `${person.name} (you)` : person.name;
      el.textContent = person.name.split(/\s+/).map((w) => w[0]).join("").slice(0, 2);
      el.dataset.testid = "person";
      return el;
    }),
  );
}

function renderStatus(): void {
  const status = $("#status");
  const pending = doc.pendingCount;
  let state: string;
  let label: string;
  if (client.authError && client.state !== "open") {
    state = "unauthorized";
    label = "Not signed in · retrying…";
  } else if (client.state === "open" && doc.live) {
    state = pending > 0 ? "syncing" : "synced";
    label = pending > 0 ? `Saving ${pending} change${pending === 1 ? "" : "s"}…` : "All changes saved";
  } else if (client.state === "connecting" && !doc.live && doc.version === 0 && pending === 0) {
    state = "connecting";
    label = "Connecting…";
  } else {
    state = "offline";
    label = pending > 0 ? `Offline · ${pending} unsaved change${pending === 1 ? "" : "s"} will sync` : "Offline · reconnecting…";
  }
  status.dataset.state = state;
  status.dataset.pending = String(pending);
  (status.querySelector(".label") as HTMLElement).textContent = label;
}

// ---- presence ----

let presenceTimer: ReturnType<typeof setTimeout> | undefined;
let presenceDirty = false;
function publishPresence(): void {
  presenceDirty = true;
  if (presenceTimer) return;
  const flush = () => {
    presenceTimer = undefined;
    if (!presenceDirty) return;
    presenceDirty = false;
    const state: Presence = { name: me.name, color: me.color, x: pointer?.x ?? null, y: pointer?.y ?? null, sel: selected };
    doc.setPresence(state);
    presenceTimer = setTimeout(flush, PRESENCE_INTERVAL_MS);
  };
  flush();
}


// ---- tools and palette ----

function setTool(next: Tool): void {
  if (viewOnly && next !== "select") return;
  tool = next;
  stage.dataset.tool = next;
  for (const button of document.querySelectorAll<HTMLButtonElement>("#toolbar [data-tool]")) {
    button.classList.toggle("active", button.dataset.tool === next);
  }
}
setTool("select");
for (const button of document.querySelectorAll<HTMLButtonElement>("#toolbar [data-tool]")) {
  button.dataset.testid = `tool-${button.dataset.tool}`;
  button.addEventListener("click", () => setTool(button.dataset.tool as Tool));
}

const palette = $("#palette");
for (const c of COLORS) {
  const button = document.createElement("button");
  button.style.background = c;
  button.title = `Colour ${c}`;
  button.dataset.color = c;
  button.dataset.testid = "color";
  button.disabled = viewOnly;
  button.addEventListener("click", () => {
    if (viewOnly) return;
    color = c;
    for (const b of palette.children) b.classList.toggle("active", (b as HTMLElement).dataset.color === c);
    if (selected && board.shape(selected)?.color !== c) board.update(selected, { color: c }, "recolour");
  });
  palette.append(button);
}
(palette.firstElementChild as HTMLElement).classList.add("active");

$("#undo").addEventListener("click", () => void board.undo());
$("#redo").addEventListener("click", () => void board.redo());
$("#delete").addEventListener("click", deleteSelected);
$("#share").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(location.href);
    notice("Link copied: send it to anyone to draw together.", "info");
  } catch {
    notice(`Share this link: ${location.href}`, "info");
  }
});

function deleteSelected(): void {
  if (!selected || viewOnly) return;
  board.remove(selected);
  selected = null;
  publishPresence();
  scheduleRender();
}

// ---- pointer input ----

type Gesture =
  | { kind: "move"; edit: Edit; dx: number; dy: number }
  | { kind: "resize"; edit: Edit; corner: string; anchor: { x: number; y: number } }
  | { kind: "draw"; type: "rect" | "ellipse" | "note"; start: { x: number; y: number }; el: SVGElement }
  | { kind: "pen"; points: number[]; el: SVGPathElement }
  | { kind: "pan"; start: { x: number; y: number }; camera: { x: number; y: number }; moved: boolean };

let gesture: Gesture | null = null;

function worldPoint(event: PointerEvent | MouseEvent): { x: number; y: number } {
  const box = canvas.getBoundingClientRect();
  return { x: event.clientX - box.left + camera.x, y: event.clientY - box.top + camera.y };
}

canvas.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || !noteEditor.hidden) return;
  const at = worldPoint(event);
  const target = event.target as Element;
  canvas.setPointerCapture(event.pointerId);
  if (tool === "select" && viewOnly) {
    // A viewer pans; shapes are not theirs to pick up.
    gesture = { kind: "pan", start: { x: event.clientX, y: event.clientY }, camera: { ...camera }, moved: false };
    return;
  }
  if (tool === "select") {
    const handle = target.closest<SVGElement>(".handle");
    if (handle && selected) {
      const shape = board.shape(selected);
      const edit = board.edit(selected, "resize");
      if (shape && edit) {
        const corner = handle.dataset.corner as string;
        const anchor = {
          x: corner.includes("w") ? shape.x + shape.w : shape.x,
          y: corner.includes("n") ? shape.y + shape.h : shape.y,
        };
        gesture = { kind: "resize", edit, corner, anchor };
      }
      return;
    }
    const hit = target.closest<SVGGElement>(".shape");
    if (hit) {
      const shapeId = hit.dataset.id as string;
      selected = shapeId;
      const shape = board.shape(shapeId);
      const edit = board.edit(shapeId, "move");
      if (shape && edit) gesture = { kind: "move", edit, dx: at.x - shape.x, dy: at.y - shape.y };
      publishPresence();
      scheduleRender();
      return;
    }
    gesture = { kind: "pan", start: { x: event.clientX, y: event.clientY }, camera: { ...camera }, moved: false };
    return;
  }
  if (tool === "stroke") {
    const el = document.createElementNS(SVG, "path");
    setAttrs(el, { stroke: color, "stroke-width": 3.5, fill: "none", "stroke-linecap": "round", "stroke-linejoin": "round" });
    previewLayer.append(el);
    gesture = { kind: "pen", points: [at.x, at.y], el };
    return;
  }
  const el = document.createElementNS(SVG, tool === "ellipse" ? "ellipse" : "rect");
  setAttrs(el, { fill: tool === "note" ? NOTE_COLORS[color] ?? "#fef9c3" : color, "fill-opacity": 0.5, stroke: color, "stroke-dasharray": "4 3" });
  previewLayer.append(el);
  gesture = { kind: "draw", type: tool, start: at, el };
});

canvas.addEventListener("pointermove", (event) => {
  const at = worldPoint(event);
  pointer = at;
  publishPresence();
  if (!gesture) return;
  switch (gesture.kind) {
    case "move": {
      const fields = { x: Math.round(at.x - gesture.dx), y: Math.round(at.y - gesture.dy) };
      preview.set(gesture.edit.id, { ...preview.get(gesture.edit.id), ...fields });
      gesture.edit.set(fields);
      break;
    }
    case "resize": {
      const box = boxFrom(gesture.anchor, at);
      preview.set(gesture.edit.id, box);
      gesture.edit.set(box);
      break;
    }
    case "draw": {
      const box = boxFrom(gesture.start, at);
      if (gesture.el.tagName === "ellipse") {
        setAttrs(gesture.el, { cx: box.x + box.w / 2, cy: box.y + box.h / 2, rx: box.w / 2, ry: box.h / 2 });
      } else {
        setAttrs(gesture.el, { x: box.x, y: box.y, width: box.w, height: box.h, rx: 8 });
      }
      break;
    }
    case "pen": {
      const p = gesture.points;
      const lx = p[p.length - 2] as number;
      const ly = p[p.length - 1] as number;
      if (Math.hypot(at.x - lx, at.y - ly) >= 2) p.push(at.x, at.y);
      let d = "";
      for (let i = 0; i < p.length; i += 2) d += `${i === 0 ? "M" : "L"}${p[i]} ${p[i + 1]}`;
      gesture.el.setAttribute("d", d);
      break;
    }
    case "pan": {
      camera = { x: gesture.camera.x - (event.clientX - gesture.start.x), y: gesture.camera.y - (event.clientY - gesture.start.y) };
      gesture.moved ||= Math.hypot(event.clientX - gesture.start.x, event.clientY - gesture.start.y) > 3;
      stage.classList.toggle("panning", gesture.moved);
      break;
    }
  }
  scheduleRender();
});

canvas.addEventListener("pointerup", (event) => finishGesture(event));
canvas.addEventListener("pointercancel", (event) => finishGesture(event));
canvas.addEventListener("pointerleave", () => {
  if (gesture) return;
  pointer = null;
  publishPresence();
});

function finishGesture(event: PointerEvent): void {
  const g = gesture;
  gesture = null;
  if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
  if (!g) return;
  const at = worldPoint(event);
  switch (g.kind) {
    case "move":
    case "resize":
      g.edit.end();
      preview.delete(g.edit.id);
      break;
    case "draw": {
      g.el.remove();
      let box = boxFrom(g.start, at);
      if (box.w < MIN_SIZE * 2 && box.h < MIN_SIZE * 2) {
        const size = g.type === "note" ? { w: 180, h: 140 } : { w: 140, h: 96 };
        box = { x: g.start.x - size.w / 2, y: g.start.y - size.h / 2, ...size };
      }
      const fields = { type: g.type, ...roundBox(box), color } as Omit<Shape, "by" | "byId" | "z">;
      if (g.type === "note") fields.text = "";
      selected = board.create(fields, g.type === "note" ? "add note" : `draw ${g.type === "rect" ? "rectangle" : "ellipse"}`);
      setTool("select");
      if (g.type === "note") openNoteEditor(selected);
      break;
    }
    case "pen": {
      g.el.remove();
      const stroke = normalizeStroke(g.points);
      if (stroke) selected = board.create({ type: "stroke", ...stroke, color }, "draw stroke");
      break;
    }
    case "pan":
      stage.classList.remove("panning");
      if (!g.moved) selected = null;
      break;
  }
  publishPresence();
  scheduleRender();
}

canvas.addEventListener("dblclick", (event) => {
  const hit = (event.target as Element).closest<SVGGElement>(".shape");
  if (hit?.dataset.type === "note") openNoteEditor(hit.dataset.id as string);
});

function boxFrom(a: { x: number; y: number }, b: { x: number; y: number }) {
  return {
    x: Math.round(Math.min(a.x, b.x)),
    y: Math.round(Math.min(a.y, b.y)),
    w: Math.max(MIN_SIZE, Math.round(Math.abs(a.x - b.x))),
    h: Math.max(MIN_SIZE, Math.round(Math.abs(a.y - b.y))),
  };
}

function roundBox(box: { x: number; y: number; w: number; h: number }) {
  return { x: Math.round(box.x), y: Math.round(box.y), w: Math.round(box.w), h: Math.round(box.h) };
}

/** A stroke's bounding box, and its points as fractions of it (so resizing scales the drawing). */
function normalizeStroke(points: number[]): { x: number; y: number; w: number; h: number; points: number[] } | null {
  if (points.length < 4) return null;
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (let i = 0; i < points.length; i += 2) {
    minX = Math.min(minX, points[i] as number);
    maxX = Math.max(maxX, points[i] as number);
    minY = Math.min(minY, points[i + 1] as number);
    maxY = Math.max(maxY, points[i + 1] as number);
  }
  const w = Math.max(1, maxX - minX);
  const h = Math.max(1, maxY - minY);
  const normalized = points.map((v, i) => Math.round(((i % 2 === 0 ? v - minX : v - minY) / (i % 2 === 0 ? w : h)) * 1000) / 1000);
  return { x: Math.round(minX), y: Math.round(minY), w: Math.round(w), h: Math.round(h), points: normalized };
}

// ---- notes ----

let editing: string | null = null;
function openNoteEditor(shapeId: string): void {
  const shape = board.shape(shapeId);
  if (!shape || viewOnly) return;
  editing = shapeId;
  const box = canvas.getBoundingClientRect();
  const stageBox = stage.getBoundingClientRect();
  Object.assign(noteEditor.style, {
    left: `${shape.x - camera.x + box.left - stageBox.left}px`,
    top: `${shape.y - camera.y + box.top - stageBox.top}px`,
    width: `${Math.max(shape.w, 160)}px`,
    height: `${Math.max(shape.h, 100)}px`,
  });
  noteEditor.value = shape.text ?? "";
  noteEditor.placeholder = "Type a note…";
  noteEditor.hidden = false;
  noteEditor.focus();
}

function closeNoteEditor(save: boolean): void {
  if (editing === null) return;
  const shapeId = editing;
  editing = null;
  noteEditor.hidden = true;
  if (save && board.shape(shapeId) && board.shape(shapeId)?.text !== noteEditor.value) {
    board.update(shapeId, { text: noteEditor.value }, "edit note");
  }
  scheduleRender();
}
noteEditor.addEventListener("blur", () => closeNoteEditor(true));
noteEditor.addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeNoteEditor(false);
  else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) closeNoteEditor(true);
  event.stopPropagation();
});

// ---- keyboard ----

window.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
  const mod = event.ctrlKey || event.metaKey;
  if (viewOnly) {
    // Nothing to edit: only Escape (clear the selection) does anything.
    if (event.key === "Escape") {
      selected = null;
      scheduleRender();
    }
    return;
  }
  if (mod && event.key.toLowerCase() === "z") {
    event.preventDefault();
    void (event.shiftKey ? board.redo() : board.undo());
  } else if (mod && event.key.toLowerCase() === "y") {
    event.preventDefault();
    void board.redo();
  } else if (event.key === "Delete" || event.key === "Backspace") {
    deleteSelected();
  } else if (event.key === "Escape") {
    selected = null;
    scheduleRender();
  } else if (!mod) {
    const tools: Record<string, Tool> = { v: "select", r: "rect", o: "ellipse", p: "stroke", n: "note" };
    const next = tools[event.key.toLowerCase()];
    if (next) setTool(next);
  }
});

// ---- start ----

function shade(hex: string): string {
  const n = parseInt(hex.slice(1), 16);
  const f = (v: number) => Math.max(0, Math.round(v * 0.75));
  return `rgb(${f(n >> 16)}, ${f((n >> 8) & 255)}, ${f(n & 255)})`;
}

function setAttrs(el: Element, attrs: Record<string, string | number>): void {
  for (const [name, value] of Object.entries(attrs)) {
    const text = String(value);
    if (el.getAttribute(name) !== text) el.setAttribute(name, text);
  }
}

async function start(): Promise<void> {
  scheduleRender();
  await doc.whenReady();
  $("#loading").hidden = true;
  publishPresence();
  await board.init(); // nothing on a view-only board
  scheduleRender();
}

start().catch((error: unknown) => {
  $("#loading").hidden = true;
  notice(`Could not open the board: ${(error as Error).message}`);
});

window.addEventListener("hashchange", () => location.reload());

export type { Json };

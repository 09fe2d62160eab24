// The whiteboard's model: shapes in one Concord document, the edits a person
// makes to them, and undo/redo of one's own edits. No DOM here, so the same
// code runs in the page and in Node tests.
//
// Document layout: `{"shapes": {"<id>": Shape}}`. Shapes live in an object
// keyed by id, never an array, so edits of different shapes touch disjoint
// keys and never conflict. Edits are blind writes (they read nothing), so
// they never conflict either and never wait for one another: the server's
// commit order decides, and every replica converges on it. Only undo and
// redo read: they are guarded transactions that refuse when someone else
// changed the shape since.

import { ForbiddenError, InvalidError, jsonEqual, PatchError, Pointer, VetoedError, type DocumentHandle, type Json, type Tx } from "@concord/client";

export type ShapeType = "rect" | "ellipse" | "stroke" | "note";

export interface Shape {
  type: ShapeType;
  x: number;
  y: number;
  w: number;
  h: number;
  color: string;
  /** Stacking order: higher draws on top. */
  z: number;
  /** For strokes: flat list of x,y pairs, each in 0..1 of the box. */
  points?: number[];
  /** For notes. */
  text?: string;
  /** Display name of the last editor. */
  by: string;
  /** Client id of the last editor (names can repeat). */
  byId: string;
}

export type ShapeFields = Partial<Omit<Shape, "by" | "byId">>;

export interface Me {
  id: string;
  name: string;
  color: string;
}

/** One undoable action: the shape before and after it (`undefined` = absent). */
interface Entry {
  id: string;
  label: string;
  before: Shape | undefined;
  after: Shape | undefined;
}

export type UndoResult = { ok: true; label: string } | { ok: false; reason: string };

/** Most undo steps kept. */
const UNDO_DEPTH_MAX = 200;

const SHAPES = "shapes";

export function shapePath(id: string, field?: string): Pointer {
  return Pointer.fromTokens(field === undefined ? [SHAPES, id] : [SHAPES, id, field]);
}

/** A fresh shape id: unique enough across clients without coordination. */
export function newShapeId(): string {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return "s" + Date.now().toString(36) + Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 8);
}

export class Board {
  readonly doc: DocumentHandle;
  me: Me;
  #undo: Entry[] = [];
  #redo: Entry[] = [];
  /** Reports problems a person should see (a refused undo, a failed write). */
  onNotice: (message: string) => void = () => {};
  /** Called when the undo/redo stacks change. */
  onHistory: () => void = () => {};

  /**
   * A view-only board (`?view`) writes nothing: every edit is refused here,
   * with a notice, before it reaches the document. (With authentication on,
   * the server refuses a viewer's writes too: its token grants only `read`.)
   */
  readonly readOnly: boolean;

  constructor(doc: DocumentHandle, me: Me, options: { readOnly?: boolean } = {}) {
    this.doc = doc;
    this.me = me;
    this.readOnly = options.readOnly ?? false;
  }

  /** Makes sure the document has its `shapes` object (read-only when it has; nothing on a view-only board). */
  async init(): Promise<void> {
    if (this.readOnly) return;
    await this.doc.transact((tx) => {
      if (tx.get(`/${SHAPES}`) === undefined) tx.set(`/${SHAPES}`, {});
    });
  }

  /** The shapes in the optimistic view, by id. */
  shapes(): Readonly<Record<string, Shape>> {
    const value = this.doc.value as { shapes?: Record<string, Shape> };
    return value.shapes ?? {};
  }

  shape(id: string): Shape | undefined {
    return this.shapes()[id];
  }

  get canUndo(): boolean {
    return !this.readOnly && this.#undo.length > 0;
  }

  get canRedo(): boolean {
    return !this.readOnly && this.#redo.length > 0;
  }

  /** Adds a shape; returns its id. Throws on a view-only board (whose page offers no way to draw). */
  create(fields: Omit<Shape, "by" | "byId" | "z"> & { z?: number }, label = "create"): string {
    if (this.readOnly) throw new Error(VIEW_ONLY);
    const id = newShapeId();
    const shape: Shape = { ...fields, z: fields.z ?? Date.now() + Math.random(), by: this.me.name, byId: this.me.id };
    this.#write((tx) => {
      try {
        // The common case: a blind write that never conflicts.
        tx.set(shapePath(id), shape);
      } catch (error) {
        if (!(error instanceof PatchError) || error.error.reason !== "path_not_found") throw error;
        // No `shapes` object yet (a fresh board, or a server that lost its
        // data): create it, guarded by a read so that a concurrent creation
        // makes this run again rather than be overwritten.
        if (tx.get(`/${SHAPES}`) !== undefined) throw error;
        tx.set(`/${SHAPES}`, { [id]: shape });
      }
    }, `add the ${shape.type}`);
    this.#record({ id, label, before: undefined, after: this.shape(id) });
    return id;
  }

  /** Deletes a shape. */
  remove(id: string): void {
    const before = this.shape(id);
    if (!before || this.#refuseReadOnly()) return;
    this.#write((tx) => tx.remove(shapePath(id)), "delete the shape");
    this.#record({ id, label: "delete", before, after: undefined });
  }

  /** Changes some fields of a shape at once (recolour, edit text). */
  update(id: string, fields: ShapeFields, label = "edit"): void {
    const edit = this.edit(id, label);
    if (!edit) return;
    edit.set(fields);
    edit.end();
  }

  /**
   * Starts a continuous edit of one shape (a drag or a resize): `set` as often
   * as the pointer moves; writes are coalesced so at most one is in flight,
   * and `end` records one undo step for the whole gesture.
   */
  edit(id: string, label = "move"): Edit | undefined {
    const before = this.shape(id);
    if (!before || this.#refuseReadOnly()) return undefined;
    return new Edit(this, id, label, structuredClone(before));
  }

  /** @internal Writes fields of a shape blindly, marking this person as its last editor. */
  _writeFields(id: string, fields: ShapeFields): Promise<void> {
    return this.#write((tx) => {
      for (const [key, value] of Object.entries(fields)) tx.set(shapePath(id, key), value);
      tx.set(shapePath(id, "by"), this.me.name);
      tx.set(shapePath(id, "byId"), this.me.id);
    }, "change the shape");
  }

  /** @internal */
  _record(entry: Entry): void {
    this.#record(entry);
  }

  /**
   * Undoes this person's latest action, unless someone else changed the
   * shape since: then nothing changes and the reason comes back.
   */
  undo(): Promise<UndoResult> {
    return this.#travel(this.#undo, this.#redo, "undo");
  }

  redo(): Promise<UndoResult> {
    return this.#travel(this.#redo, this.#undo, "redo");
  }

  async #travel(from: Entry[], to: Entry[], verb: "undo" | "redo"): Promise<UndoResult> {
    if (this.#refuseReadOnly()) return { ok: false, reason: VIEW_ONLY };
    const entry = from.pop();
    if (!entry) return { ok: false, reason: `nothing to ${verb}` };
    this.onHistory();
    const expected = verb === "undo" ? entry.after : entry.before;
    const target = verb === "undo" ? entry.before : entry.after;
    let outcome: UndoResult;
    try {
      outcome = await this.doc.transact((tx): UndoResult => {
        // The guard: a recorded read of the whole shape. If anyone changes it
        // between this run and the commit, the server rejects the commit and
        // this function runs again on the new state, and refuses.
        const current = tx.get<Json>(shapePath(entry.id)) as Shape | undefined;
        if (!jsonEqual(current as Json | undefined, expected as Json | undefined)) {
          return { ok: false, reason: refusal(verb, entry.label, current) };
        }
        if (target === undefined) tx.remove(shapePath(entry.id));
        else tx.set(shapePath(entry.id), target);
        return { ok: true, label: entry.label };
      });
    } catch (error) {
      outcome = { ok: false, reason: `could not ${verb}: ${(error as Error).message}` };
    }
    if (outcome.ok) to.push(entry);
    else this.onNotice(outcome.reason);
    this.onHistory();
    return outcome;
  }

  #record(entry: Entry): void {
    if (jsonEqual(entry.before as Json | undefined, entry.after as Json | undefined)) return;
    this.#undo.push(entry);
    if (this.#undo.length > UNDO_DEPTH_MAX) this.#undo.shift();
    this.#redo = [];
    this.onHistory();
  }

  #write(fn: (tx: Tx) => void, what: string): Promise<void> {
    const done = this.doc.transact(fn);
    return done.catch((error: Error) => {
      // The server's refusals (access, schema, guards) are reported by the
      // document's `error` event, which the page shows: not twice.
      if (error instanceof ForbiddenError || error instanceof InvalidError || error instanceof VetoedError) return;
      this.onNotice(`Could not ${what}: ${friendly(error)}`);
    });
  }

  /** True, after a notice, when the board is view-only. */
  #refuseReadOnly(): boolean {
    if (this.readOnly) this.onNotice(VIEW_ONLY);
    return this.readOnly;
  }
}

/** A continuous edit of one shape; see `Board.edit`. */
export class Edit {
  #latest: ShapeFields | undefined;
  #inFlight = false;
  #ended = false;
  #wrote = false;

  constructor(
    readonly board: Board,
    readonly id: string,
    readonly label: string,
    readonly before: Shape,
  ) {}

  /** The fields this gesture set so far on top of the shape as it was (for drawing a preview). */
  set(fields: ShapeFields): void {
    if (this.#ended) return;
    this.#latest = { ...this.#latest, ...fields };
    this.#pump();
  }

  /** Ends the gesture: writes what is left and records one undo step. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#latest) {
      // Written now even if an earlier write is still in flight (offline):
      // the final position must not wait for the network.
      const fields = this.#latest;
      this.#latest = undefined;
      this.#wrote = true;
      void this.board._writeFields(this.id, fields);
    }
    if (this.#wrote) {
      this.board._record({ id: this.id, label: this.label, before: this.before, after: this.board.shape(this.id) });
    }
  }

  #pump(): void {
    if (this.#inFlight || !this.#latest || this.#ended) return;
    const fields = this.#latest;
    this.#latest = undefined;
    this.#inFlight = true;
    this.#wrote = true;
    void this.board._writeFields(this.id, fields).finally(() => {
      this.#inFlight = false;
      this.#pump();
    });
  }
}

const VIEW_ONLY = "This board is open view-only: it cannot be changed here.";

function refusal(verb: string, label: string, current: Shape | undefined): string {
  const what = `Can't ${verb} ${label}`;
  if (current === undefined) return `${what}: someone else deleted the shape since.`;
  return `${what}: ${current.by || "someone else"} changed this shape since.`;
}

function friendly(error: Error): string {
  if (/path .* does not exist|path_not_found/.test(error.message)) return "someone else deleted it";
  return error.message;
}

// JSON Pointers (RFC 6901), parsed and validated once; mirrors
// engine/src/pointer.rs. A `Pointer` holds its reference tokens unescaped, so
// patch code walks tokens without re-parsing strings.

import { utf8Length } from "./json.js";

/** Longest pointer accepted, in bytes of its string form (as the engine). */
export const POINTER_LEN_MAX = 4096;

export class InvalidPointer extends Error {
  override name = "InvalidPointer";
}

/**
 * Pointers parsed recently, by their string form. Every incoming change
 * names its paths as strings, and a board's changes name the same few paths
 * over and over; a `Pointer` is immutable, so one parse can serve them all.
 * Emptied whole when full, so it stays bounded whatever the input.
 */
const PARSED_POINTERS_MAX = 4096;
const parsedPointers = new Map<string, Pointer>();

/** Anything that names a location: a pointer string (`"/a/0"`), a token list (`["a", 0]`) or a `Pointer`. */
export type Path = string | readonly (string | number)[] | Pointer;

/** A JSON Pointer: `""` names the whole document, `/a/0` element 0 of member `a`. */
export class Pointer {
  readonly tokens: readonly string[];
  #text: string | undefined;
  /** The parent, made on first use (patch code asks at every op) and shared from then on. */
  #parent: Pointer | undefined;

  private constructor(tokens: readonly string[], text?: string) {
    this.tokens = tokens;
    this.#text = text;
  }

  static readonly root = new Pointer([], "");

  /** Parses the string form, e.g. `"/shapes/a~1b/0"`. */
  static parse(raw: string): Pointer {
    // Only valid pointers are remembered, so a known one needs no checks.
    const known = parsedPointers.get(raw);
    if (known !== undefined) return known;
    if (typeof raw !== "string") throw new InvalidPointer("a JSON Pointer must be a string");
    if (raw.length > POINTER_LEN_MAX || utf8Length(raw) > POINTER_LEN_MAX) {
      throw new InvalidPointer(`JSON Pointer is ${utf8Length(raw)} bytes, over the limit`);
    }
    if (raw === "") return Pointer.root;
    if (!raw.startsWith("/")) throw new InvalidPointer("a JSON Pointer must be empty or start with '/'");
    const tokens = Object.freeze(raw.slice(1).split("/").map(unescape));
    const pointer = new Pointer(tokens, raw);
    if (parsedPointers.size >= PARSED_POINTERS_MAX) parsedPointers.clear();
    parsedPointers.set(raw, pointer);
    return pointer;
  }

  /** Builds a pointer from unescaped tokens. */
  static fromTokens(tokens: readonly (string | number)[]): Pointer {
    return new Pointer(tokens.map(String));
  }

  /** Accepts any `Path` form. */
  static from(path: Path): Pointer {
    if (path instanceof Pointer) return path;
    if (typeof path === "string") return Pointer.parse(path);
    return Pointer.fromTokens(path);
  }

  get isRoot(): boolean {
    return this.tokens.length === 0;
  }

  /** Number of reference tokens (0 for the root). */
  get depth(): number {
    return this.tokens.length;
  }

  /** The parent pointer, or `undefined` for the root. */
  parent(): Pointer | undefined {
    if (this.isRoot) return undefined;
    return (this.#parent ??= new Pointer(Object.freeze(this.tokens.slice(0, -1))));
  }

  /** The last token, or `undefined` for the root. */
  last(): string | undefined {
    return this.tokens[this.tokens.length - 1];
  }

  /** A child pointer, one token deeper. */
  child(token: string | number): Pointer {
    return new Pointer([...this.tokens, String(token)]);
  }

  /** True when `this` is `other` or one of its ancestors. */
  isPrefixOf(other: Pointer): boolean {
    if (this.tokens.length > other.tokens.length) return false;
    // A plain loop: `every` on the frozen token arrays of parsed pointers takes a slow path in V8.
    for (let i = 0; i < this.tokens.length; i++) {
      if (this.tokens[i] !== other.tokens[i]) return false;
    }
    return true;
  }

  /** True when one is a prefix of the other: a write to one conflicts with a read of the other. */
  overlaps(other: Pointer): boolean {
    return this.isPrefixOf(other) || other.isPrefixOf(this);
  }

  equals(other: Pointer): boolean {
    return this.tokens.length === other.tokens.length && this.isPrefixOf(other);
  }

  toString(): string {
    if (this.#text === undefined) {
      this.#text = this.tokens.map((t) => "/" + t.replace(/~/g, "~0").replace(/\//g, "~1")).join("");
    }
    return this.#text;
  }

  toJSON(): string {
    return this.toString();
  }
}

/**
 * Parses an array index token as RFC 6901 allows it: `0` or digits without a
 * leading zero. `-` (past the end) is handled by callers.
 */
export function parseArrayIndex(token: string): number | undefined {
  if (!/^(0|[1-9][0-9]*)$/.test(token)) return undefined;
  const index = Number(token);
  return Number.isSafeInteger(index) ? index : undefined;
}

function unescape(token: string): string {
  if (!token.includes("~")) return token;
  let out = "";
  for (let i = 0; i < token.length; i++) {
    const c = token[i];
    if (c !== "~") {
      out += c;
      continue;
    }
    const next = token[++i];
    if (next === "0") out += "~";
    else if (next === "1") out += "/";
    else throw new InvalidPointer("'~' in a JSON Pointer must be followed by '0' or '1'");
  }
  return out;
}

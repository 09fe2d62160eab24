// JSON values and the few operations on them that must be safe for any key.
//
// Documents are plain JSON: objects are ordinary JS objects, but every member
// is read with an own-property check and written with `defineProperty`, so a
// key such as `__proto__` or `constructor` is data like any other and never
// reaches an object's prototype. Every function here follows that rule; code
// outside this file reaches members only through them.

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | JsonObject;
/** A JSON object. */
export interface JsonObject {
  [key: string]: Json;
}

const hasOwn = Object.prototype.hasOwnProperty;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The member `key` of `object`, or `undefined` when it has none. */
export function getMember(object: JsonObject, key: string): Json | undefined {
  return hasOwn.call(object, key) ? object[key] : undefined;
}

export function hasMember(object: JsonObject, key: string): boolean {
  return hasOwn.call(object, key);
}

/**
 * Sets a member as plain data: `__proto__` becomes an own property. It is
 * the only accessor on `Object.prototype`; for every other key, assignment
 * already makes (or overwrites) an own data property, and is much cheaper.
 */
export function setMember(object: JsonObject, key: string, value: Json): void {
  if (key !== "__proto__") {
    object[key] = value;
    return;
  }
  Object.defineProperty(object, key, {
    value,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

export function deleteMember(object: JsonObject, key: string): void {
  delete object[key];
}

/** Own member names, in insertion order as JS keeps it. */
export function memberNames(object: JsonObject): string[] {
  return Object.keys(object);
}

/** A deep copy. Refuses values that are not JSON (undefined, NaN, functions, cycles by depth). */
export function cloneJson(value: Json): Json {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(cloneJson);
  const out: JsonObject = {};
  for (const key of Object.keys(value)) setMember(out, key, cloneJson(value[key] as Json));
  return out;
}

/**
 * Checks that `value` is JSON and returns a private deep copy of it. Used
 * where user values enter a document: `undefined`, functions, non-finite
 * numbers and class instances have no JSON form, and accepting them would
 * make the local view differ from what the server stores.
 */
export function toJson(value: unknown, depthMax = 256): Json {
  return toJsonAt(value, depthMax, "");
}

function toJsonAt(value: unknown, depthLeft: number, at: string): Json {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`not JSON at '${at}': non-finite number`);
    return value;
  }
  if (typeof value !== "object") throw new TypeError(`not JSON at '${at}': ${typeof value}`);
  if (depthLeft <= 0) throw new TypeError(`not JSON at '${at}': nested too deep (or a cycle)`);
  if (Array.isArray(value)) return value.map((item, i) => toJsonAt(item, depthLeft - 1, `${at}/${i}`));
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw new TypeError(`not JSON at '${at}': an instance of ${proto?.constructor?.name ?? "a class"}`);
  }
  const out: JsonObject = {};
  for (const key of Object.keys(value)) {
    const member = (value as Record<string, unknown>)[key];
    if (member === undefined) continue; // as JSON.stringify drops it
    setMember(out, key, toJsonAt(member, depthLeft - 1, `${at}/${key}`));
  }
  return out;
}

/**
 * JSON equality as the `test` op uses it: numbers by value, objects by
 * member set regardless of order.
 */
export function jsonEqual(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => jsonEqual(item, b[i]));
  }
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => hasOwn.call(b, key) && jsonEqual(a[key], b[key]));
}

/** Recursively freezes a value (used for the read-only snapshots handed to callers). */
export function deepFreeze<T extends Json>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const key of Object.keys(value)) deepFreeze((value as JsonObject)[key] as Json);
  }
  return value;
}

const encoder = new TextEncoder();

/** Length of a string in UTF-8 bytes, as the engine (Rust `str::len`) counts it. */
export function utf8Length(text: string): number {
  // Fast path for ASCII, which is nearly every key.
  let ascii = true;
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) > 0x7f) {
      ascii = false;
      break;
    }
  }
  return ascii ? text.length : encoder.encode(text).length;
}

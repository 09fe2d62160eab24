// The session's source of randomness: a seeded xoshiro128** generator, a
// port of engine/src/session/rng.rs.
//
// Randomness is a parameter like time: a `ClientSession` draws every jitter
// from this generator, seeded by its shell, so a seed replays a run bit for
// bit. It works on 32-bit words only (seeded through splitmix32), which
// JavaScript reproduces exactly with `Math.imul` and unsigned shifts: the
// shared trace vectors hold the Rust and the TypeScript machine to the same
// pauses.

/** xoshiro128** (Blackman and Vigna): small, fast, good enough for jitter; not for secrets. */
export class SessionRng {
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  /** A generator whose state is four splitmix32 outputs from `seed` (taken as an unsigned 32-bit integer). */
  constructor(seed: number) {
    let x = seed >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#s0 = next();
    this.#s1 = next();
    this.#s2 = next();
    this.#s3 = next();
    if ((this.#s0 | this.#s1 | this.#s2 | this.#s3) === 0) {
      // The one state xoshiro cannot leave.
      this.#s0 = 1;
    }
  }

  /** The next unsigned 32-bit draw. */
  nextU32(): number {
    const s1 = this.#s1;
    const result = Math.imul(rotl(Math.imul(s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (s1 << 9) >>> 0;
    this.#s2 = (this.#s2 ^ this.#s0) >>> 0;
    this.#s3 = (this.#s3 ^ this.#s1) >>> 0;
    this.#s1 = (this.#s1 ^ this.#s2) >>> 0;
    this.#s0 = (this.#s0 ^ this.#s3) >>> 0;
    this.#s2 = (this.#s2 ^ t) >>> 0;
    this.#s3 = rotl(this.#s3, 11);
    return result;
  }

  /**
   * A draw in `0..=max` (`max` an unsigned 32-bit integer), by remainder as
   * in Rust: its bias is at most `max / 2^32`, immaterial for jitter, and it
   * is exact in both languages.
   */
  upTo(max: number): number {
    const span = (max >>> 0) + 1;
    const draw = this.nextU32();
    return span > 0xffffffff ? draw : draw % span;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

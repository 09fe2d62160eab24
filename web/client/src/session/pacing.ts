// Pacing: when a transaction may run, and when the client reconnects. A port
// of engine/src/session/pacing.rs.
//
// ## Contention pacing
// Per-transaction exponential backoff alone is unfair under contention: a
// client whose transaction just committed starts its next one at once, on a
// replica that is current, while the clients it beat sit in ever longer
// pauses; the winner keeps winning and the others starve. So the pause is
// driven by a *contention level* per document, shared by all of one client's
// transactions on it: each rejection raises it, each commit lowers it, and
// idle time lets it decay. While it is above zero every re-run after a
// rejection waits a uniformly random pause within a window of
// `max(round trip, initial) · 2^level` (initial 10 ms). Under steady
// contention all contenders thus draw from the same window, and a quiet
// document costs no pause at all. A first run is not paused: pausing it too
// left clients idle that had nothing to retry (see the Rust module).
//
// The window is measured in round trips (a moving average of how long this
// client's transactions on the document took to be answered) because a
// collision is two commits landing within one round trip of each other.
//
// ## Units
// Times are microseconds (as the machine's `Time`). Durations are kept in
// nanoseconds, as Rust's `Duration` is: the moving average divides, and its
// remainders must round exactly as there for both machines to draw the same
// pauses. Every value stays far below 2^53.

import type { SessionRng } from "./rng.js";

/** Nanoseconds per microsecond. */
export const NS_PER_US = 1_000;

/**
 * Highest contention level: a window of at most 32 round trips, room for
 * about as many contenders. More contenders cost more rejections rather than
 * ever longer pauses.
 */
export const CONTENTION_LEVEL_MAX = 5;
/** Idle round trips that lower the contention level by one. */
const DECAY_ROUND_TRIPS = 64;
/** Idle time that lowers the contention level by one, at least (250 ms, in ns). */
const DECAY_MIN_NS = 250_000_000;
/** Weight of a new round-trip sample in the moving average, as 1/N. */
const ROUND_TRIP_SMOOTHING = 4;
/** Largest draw of the generator (`u32::MAX`). */
const U32_MAX = 0xffffffff;

/** One document's contention, as this client has seen it. */
export class Contention {
  #level = 0;
  /** When the level or the round trip last changed (µs). */
  #updated = 0;
  /** The moving average of round trips (ns). */
  #roundTripNs = 0;

  /**
   * The pause (µs) before a run at `nowUs`, if the document is contended:
   * random within `max(round trip, initial) · 2^level`, at most `max`.
   */
  pause(nowUs: number, initialNs: number, maxNs: number, rng: SessionRng): number | undefined {
    this.#decay(nowUs);
    if (this.#level === 0) return undefined;
    const windowNs = Math.min(Math.max(this.#roundTripNs, initialNs) * 2 ** this.#level, maxNs);
    const micros = Math.min(Math.floor(windowNs / NS_PER_US), U32_MAX);
    return rng.upTo(micros);
  }

  /** A submitted run was rejected at `nowUs`, `roundTripUs` after it started. */
  onRejected(nowUs: number, roundTripUs: number): void {
    this.#sample(nowUs, roundTripUs * NS_PER_US);
    this.#level = Math.min(this.#level + 1, CONTENTION_LEVEL_MAX);
  }

  /** A submitted run committed at `nowUs`, `roundTripUs` after it started. */
  onCommitted(nowUs: number, roundTripUs: number): void {
    this.#sample(nowUs, roundTripUs * NS_PER_US);
    this.#level = Math.max(this.#level - 1, 0);
  }

  /** The current level (for tests and statistics). */
  get level(): number {
    return this.#level;
  }

  #sample(nowUs: number, sampleNs: number): void {
    this.#decay(nowUs);
    this.#roundTripNs =
      this.#roundTripNs === 0 ? sampleNs : Math.floor((this.#roundTripNs * (ROUND_TRIP_SMOOTHING - 1) + sampleNs) / ROUND_TRIP_SMOOTHING);
    this.#updated = nowUs;
  }

  /** Lowers the level by one per decay period idle since the last update. */
  #decay(nowUs: number): void {
    const periodNs = Math.max(this.#roundTripNs * DECAY_ROUND_TRIPS, DECAY_MIN_NS);
    const idleUs = Math.max(0, nowUs - this.#updated);
    const periods = Math.min(Math.floor(idleUs / Math.floor(periodNs / NS_PER_US)), CONTENTION_LEVEL_MAX);
    if (periods > 0) {
      this.#level = Math.max(this.#level - periods, 0);
      this.#updated = nowUs;
    }
  }
}

/** Most doublings of a backoff's ceiling, so it cannot overflow. */
const DOUBLINGS_MAX = 20;

/**
 * Jittered exponential backoff for reconnecting: each delay is drawn from the
 * upper half of a ceiling that doubles per failure up to `max`.
 */
export class Backoff {
  readonly #initialNs: number;
  readonly #maxNs: number;
  #failures = 0;

  /** Delays in microseconds. */
  constructor(initialUs: number, maxUs: number) {
    this.#initialNs = initialUs * NS_PER_US;
    this.#maxNs = Math.max(maxUs, initialUs) * NS_PER_US;
  }

  /** The next delay, in nanoseconds (add it to a time with `addNs`). */
  nextDelayNs(rng: SessionRng): number {
    const ceilingNs = Math.min(this.#initialNs * 2 ** Math.min(this.#failures, DOUBLINGS_MAX), this.#maxNs);
    this.#failures++;
    const halfNs = Math.floor(ceilingNs / 2);
    const micros = Math.min(Math.floor(halfNs / NS_PER_US), U32_MAX);
    return halfNs + rng.upTo(micros) * NS_PER_US;
  }

  reset(): void {
    this.#failures = 0;
  }

  /** A copy with the same settings and failures (Rust's `clone`). */
  clone(): Backoff {
    const copy = new Backoff(this.#initialNs / NS_PER_US, this.#maxNs / NS_PER_US);
    copy.#failures = this.#failures;
    return copy;
  }
}

/** `timeUs + durationNs`, as Rust's `Time + Duration` (whole microseconds of the duration). */
export function addNs(timeUs: number, durationNs: number): number {
  return timeUs + Math.floor(durationNs / NS_PER_US);
}

// Small statistics helpers: percentiles over raw samples, medians over runs.

import { performance } from "node:perf_hooks";

/** The p-th percentile (0–100) of `samples` by nearest rank; NaN when empty. */
export function percentile(samples, p) {
  if (samples.length === 0) return NaN;
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

export function median(values) {
  const finite = values.filter((v) => typeof v === "number" && !Number.isNaN(v));
  if (finite.length === 0) return NaN;
  const sorted = [...finite].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** A growable Float64 sample buffer (latencies in ms). */
export class Samples {
  #buf = new Float64Array(1024);
  #len = 0;
  push(v) {
    if (this.#len === this.#buf.length) {
      const next = new Float64Array(this.#buf.length * 2);
      next.set(this.#buf);
      this.#buf = next;
    }
    this.#buf[this.#len++] = v;
  }
  get length() {
    return this.#len;
  }
  values() {
    return this.#buf.subarray(0, this.#len);
  }
  p(pct) {
    return percentile(this.values(), pct);
  }
}

/**
 * Milliseconds on the process-wide monotonic clock: the same in every worker
 * thread, unlike `performance.now()`, which counts from each thread's start.
 */
export const clockMs = (() => {
  const offset = Number(process.hrtime.bigint()) / 1e6 - performance.now();
  return () => performance.now() + offset;
})();

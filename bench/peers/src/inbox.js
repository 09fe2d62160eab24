// Messages from a worker thread (or, inside one, from its parent), taken in
// order with `await next()` rather than through callbacks.

/**
 * Returns `next()`, which resolves with the next message `port` delivers.
 * For a `Worker`, `failed(message)` makes the error `next()` rejects with
 * when the worker reports `{ type: "failed", message }`, throws or exits.
 */
export function inbox(port, failed = (message) => new Error(message)) {
  const items = [];
  const waiting = [];
  const deliver = (item) => (waiting.length > 0 ? waiting.shift()(item) : items.push(item));
  port.on("message", (msg) => deliver(msg?.type === "failed" ? failed(msg.message) : msg));
  port.on("error", (error) => deliver(failed(error?.stack ?? String(error))));
  port.on("exit", (code) => deliver(failed(`exited (code ${code})`)));
  return async () => {
    const item = items.length > 0 ? items.shift() : await new Promise((resolve) => waiting.push(resolve));
    if (item instanceof Error) throw item;
    return item;
  };
}

// A minimal typed event emitter that works the same in browsers and Node.
// A listener that throws does not stop the others: the error is reported
// through `onListenerError` (console by default), because the emitter runs
// inside protocol handling that must not be derailed by application code.

export type Listener<T> = (event: T) => void;

export class Emitter<Events extends object> {
  /**
   * Each event's listeners in the order added. A list is replaced, never
   * changed, so `emit` walks the list it started with without copying it:
   * a listener added meanwhile waits for the next event, one removed still
   * gets this one.
   */
  #listeners = new Map<keyof Events, readonly Listener<never>[]>();
  onListenerError: (error: unknown) => void = (error) => console.error("concord: a listener threw", error);

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    const listeners = this.#listeners.get(name) ?? [];
    if (!listeners.includes(listener as Listener<never>)) {
      this.#listeners.set(name, [...listeners, listener as Listener<never>]);
    }
    return () => this.off(name, listener);
  }

  /** Adds a listener that removes itself after one event. */
  once<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(name, (event) => {
      off();
      listener(event);
    });
    return off;
  }

  off<K extends keyof Events>(name: K, listener: Listener<Events[K]>): void {
    const listeners = this.#listeners.get(name);
    if (listeners?.includes(listener as Listener<never>)) {
      this.#listeners.set(name, listeners.filter((l) => l !== listener));
    }
  }

  /** @internal */
  emit<K extends keyof Events>(name: K, event: Events[K]): void {
    const listeners = this.#listeners.get(name);
    if (!listeners) return;
    for (const listener of listeners) {
      try {
        (listener as Listener<Events[K]>)(event);
      } catch (error) {
        this.onListenerError(error);
      }
    }
  }
}

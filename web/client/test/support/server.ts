// Starts the real `concord` binary for integration and end-to-end tests:
// `concord serve --listen 127.0.0.1:0` picks a free port and prints its URL
// as the first line of standard output, which is parsed here. No fixed ports.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

import { repoPath } from "./paths.js";

export interface ServerOptions {
  /** Directory served at `/` (`--static`). */
  staticDir?: string;
  /** Extra arguments for `concord serve`. */
  args?: string[];
  /** Keep a data directory (kept across `restart`); default in memory. */
  durable?: boolean;
  /** Listen address; default `127.0.0.1:0` (a free port). */
  listen?: string;
}

/** The binary: $CONCORD_BIN, else the workspace's debug build. */
export function concordBinary(): string {
  const bin = process.env.CONCORD_BIN ?? repoPath("target", "debug", "concord");
  if (!existsSync(bin)) {
    throw new Error(`concord binary not found at ${bin}: build it with 'cargo build -p concord-server --bin concord' (web/test.sh does)`);
  }
  return bin;
}

export class ConcordServer {
  #child: ChildProcess | undefined;
  #stderr: string[] = [];
  /** e.g. `http://127.0.0.1:41234` */
  httpUrl = "";
  /** e.g. `ws://127.0.0.1:41234/ws` */
  wsUrl = "";
  /** `127.0.0.1:41234` */
  address = "";

  /**
   * Each server gets its own fresh data directory (the binary is durable by
   * default), kept across `restart` so a restarted server has its documents.
   */
  readonly dataDir = mkdtempSync(join(tmpdir(), "concord-test-"));

  private constructor(readonly options: ServerOptions) {}

  static async start(options: ServerOptions = {}): Promise<ConcordServer> {
    const server = new ConcordServer(options);
    await server.#spawn(options.listen ?? "127.0.0.1:0");
    return server;
  }

  async #spawn(listen: string): Promise<void> {
    // Durable only where a test restarts the server and checks what survived;
    // the other suites keep the in-memory server they were written against.
    const storage = this.options.durable ? ["--data", this.dataDir] : ["--memory"];
    const args = ["serve", "--listen", listen, ...storage, ...(this.options.args ?? [])];
    if (this.options.staticDir) args.push("--static", this.options.staticDir);
    const child = spawn(concordBinary(), args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
    this.#child = child;
    child.stderr?.on("data", (chunk: Buffer) => {
      this.#stderr.push(chunk.toString());
      if (this.#stderr.length > 200) this.#stderr.shift();
    });
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`concord did not print its URL within 20 s; stderr:\n${this.#stderr.join("")}`)), 20_000);
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`concord exited with ${code} before listening; stderr:\n${this.#stderr.join("")}`));
      });
      lines.on("line", (line) => {
        const match = /(https?:\/\/[^\s)]+)/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match[1] as string);
        }
      });
    });
    this.httpUrl = url.replace(/\/$/, "");
    this.address = new URL(this.httpUrl).host;
    this.wsUrl = this.httpUrl.replace(/^http/, "ws") + "/ws";
  }

  /** Recent standard error of the server, for failure messages. */
  get log(): string {
    return this.#stderr.join("");
  }

  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it to exit. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill(signal);
    });
  }

  /** Kills the server and starts a new one on the same address and data directory. */
  async restart(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.stop(signal);
    const address = this.address;
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await this.#spawn(address);
        return;
      } catch (error) {
        // The port may linger for a moment after the kill; the OS chose it, so retry binding it.
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

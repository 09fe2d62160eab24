// Server processes: spawn, wait for the printed address (no fixed ports, no
// sleeps), read CPU time and memory from /proc, stop.

import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

let clockTicks;
/** Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat. */
function ticksPerSecond() {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU seconds (user + system) the process has used so far. */
export function cpuSeconds(pid) {
  const { user, system } = cpuSplit(pid);
  return user + system;
}

/** CPU seconds the process has used so far, in user space and in the kernel. */
export function cpuSplit(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may contain spaces; fields after it are fixed.
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state); utime is field 14, stime field 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return { user: utime / ticksPerSecond(), system: stime / ticksPerSecond() };
}

/** Resident set size and its peak (VmHWM), in bytes. */
export function memory(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
    return m ? Number(m[1]) * 1024 : NaN;
  };
  return { rss: field("VmRSS"), hwm: field("VmHWM") };
}

/** Servers still running: killed if this process exits without stopping them (a crash). */
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Spawns a server and resolves once it printed a line that `parse` turns into
 * a URL. Rejects (with its stderr) if it exits first or says nothing in 30 s.
 */
export async function startServer(name, command, args, parse, env = {}) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  running.add(child);
  child.once("exit", () => running.delete(child));
  const stderr = [];
  child.stderr.on("data", (chunk) => {
    stderr.push(chunk.toString());
    if (stderr.length > 100) stderr.shift();
  });
  const lines = createInterface({ input: child.stdout });
  let onEarlyExit;
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} server printed no address within 30 s; stderr:\n${stderr.join("")}`)), 30_000);
    onEarlyExit = (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} server exited (${code ?? signal}) before listening; stderr:\n${stderr.join("")}`));
    };
    child.once("exit", onEarlyExit);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`${name} server could not start: ${error.message}`));
    });
    lines.on("line", (line) => {
      const url = parse(line);
      if (url) {
        clearTimeout(timer);
        resolve(url);
      }
    });
  });
  child.off("exit", onEarlyExit);
  // Keep draining stdout so the server never blocks on a full pipe.
  lines.on("line", () => {});
  let exited = false;
  child.once("exit", () => {
    exited = true;
  });
  return {
    name,
    url,
    pid: child.pid,
    get alive() {
      return !exited;
    },
    log: () => stderr.join(""),
    cpuSeconds: () => cpuSeconds(child.pid),
    cpuSplit: () => cpuSplit(child.pid),
    memory: () => memory(child.pid),
    async stop() {
      if (exited) return;
      await new Promise((resolve) => {
        const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
        child.once("exit", () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill("SIGTERM");
      });
    },
  };
}

/**
 * Starts one of the peers' servers, `servers/<name>.js`: a Node script that
 * listens on 127.0.0.1:0 and prints `PORT <n>`. Resolves with its ws:// URL.
 */
export function startPeerServer(name) {
  const script = fileURLToPath(new URL(`../servers/${name}.js`, import.meta.url));
  return startServer(name, process.execPath, [script], (line) => {
    const m = /^PORT (\d+)/.exec(line);
    return m ? `ws://127.0.0.1:${m[1]}` : undefined;
  });
}

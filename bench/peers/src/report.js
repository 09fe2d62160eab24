// Turns a results file from src/main.js into the Markdown section between
// `<!-- peers:begin -->` and `<!-- peers:end -->` of docs/benchmarks.md, and
// SVG plots in docs/img/peers-*.svg. Only that region of the file is
// rewritten; the file is read fresh just before writing.
//
//   node src/report.js results/<run>.json [--docs ../../docs]

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { median } from "./stats.js";
import { barChart, formatValue } from "./svg.js";

const { values: opt, positionals } = parseArgs({ allowPositionals: true, options: { docs: { type: "string" } } });
if (positionals.length !== 1) {
  console.error("usage: node src/report.js RESULTS.json [--docs DIR]");
  process.exit(2);
}
const run = JSON.parse(readFileSync(positionals[0], "utf8"));
const docsDir = opt.docs ?? fileURLToPath(new URL("../../../docs/", import.meta.url));
const imgDir = join(docsDir, "img");

const NAMES = { concord: "Concord", sharedb: "ShareDB", yjs: "Yjs" };
const systems = [...new Set(run.results.map((r) => r.system))];
const of = (system) => run.results.filter((r) => r.system === system);
/** Median over repetitions of `pick(result)`. */
const med = (system, pick) => median(of(system).map((r) => {
  try {
    return pick(r);
  } catch {
    return NaN;
  }
}));
const perJoin = (values) => median(values ?? []);

const m = {};
for (const s of systems) {
  m[s] = {
    w1Ops: med(s, (r) => r.w1.opsPerSec),
    w1AckP50: med(s, (r) => r.w1.ackP50),
    w1AckP99: med(s, (r) => r.w1.ackP99),
    w1FanP50: med(s, (r) => r.w1.fanP50),
    w1FanP99: med(s, (r) => r.w1.fanP99),
    w1Cpu: med(s, (r) => r.w1.serverCpuPerOpUs),
    w1Kernel: med(s, (r) => r.w1.serverKernelCpuPerOpUs),
    w1Rss: med(s, (r) => r.w1.serverRss / 2 ** 20),
    w1Lg: med(s, (r) => (r.w1.loadgenCpuSeconds / r.w1.ops) * 1e6),
    w1Total: med(s, (r) => ((r.w1.loadgenCpuSeconds + r.w1.serverCpuSeconds) / r.w1.ops) * 1e6),
    w2aOps: med(s, (r) => r.w2a.opsPerSec),
    w2aP99: med(s, (r) => r.w2a.ackP99),
    w2aCpu: med(s, (r) => r.w2a.serverCpuPerOpUs),
    w2aFinal: of(s).map((r) => r.w2a?.final),
    w2aExpected: of(s)[0]?.w2a?.expected,
    w2bOps: med(s, (r) => r.w2b.opsPerSec),
    w2bP99: med(s, (r) => r.w2b.ackP99),
    w2bCpu: med(s, (r) => r.w2b.serverCpuPerOpUs),
    w2bFinal: of(s).map((r) => r.w2b?.final),
    w2bExpected: of(s)[0]?.w2b?.expected,
    w2bRuns: med(s, (r) => r.w2b.runsPerOp),
    w2bRunsMax: Math.max(...of(s).map((r) => r.w2b?.runsMax ?? NaN)),
    w2bRejections: med(s, (r) => r.w2b.rejectionRate),
    w3Ms: med(s, (r) => perJoin(r.w3.timesMs)),
    w3Bytes: med(s, (r) => perJoin(r.w3.bytes)),
    w3Cpu: med(s, (r) => r.w3.serverCpuMsPerJoin),
    w3Rss: med(s, (r) => r.w3.serverRss / 2 ** 20),
  };
}

const f = formatValue;
const C = run.params.clients;
const K = run.params.ops;
const KC = run.params.counterOps;
const finals = (list, expected) => {
  const uniq = [...new Set(list)];
  return `${uniq.map((v) => (v === undefined ? "–" : v.toLocaleString("en-US"))).join(" / ")} of ${expected?.toLocaleString("en-US")}`;
};
const row = (cells) => `| ${cells.join(" | ")} |`;

// ---- goals ----
const c = m.concord ?? {};
const sd = m.sharedb ?? {};
const y = m.yjs ?? {};
const ratio = (a, b) => a / b;
const goals = [];
function goal(text, value, met, detail) {
  goals.push(row([text, Number.isFinite(value) ? `${f(value)}${detail ?? ""}` : "not measured", Number.isFinite(value) ? (met ? "**met**" : "**missed**") : "–"]));
}
if (m.concord && m.sharedb) {
  goal(`W1 at ${C} clients: ops/s ≥ 10× ShareDB`, ratio(c.w1Ops, sd.w1Ops), ratio(c.w1Ops, sd.w1Ops) >= 10, "×");
}
if (m.concord && m.yjs) goal(`W1: ops/s ≥ 5× Yjs`, ratio(c.w1Ops, y.w1Ops), ratio(c.w1Ops, y.w1Ops) >= 5, "×");
if (m.concord && m.sharedb) goal(`W1: server CPU per op < 1/10 of ShareDB's`, ratio(c.w1Cpu, sd.w1Cpu), ratio(c.w1Cpu, sd.w1Cpu) < 0.1, "× ShareDB's");
if (m.concord) goal(`W1: p99 ack latency < 10 ms`, c.w1AckP99, c.w1AckP99 < 10, " ms");
if (m.concord) {
  const exact = of("concord").every((r) => r.w2a?.exact && r.w2b?.exact);
  goals.push(row(["W2: exact final value, (a) and (b)", `(a) ${finals(c.w2aFinal, c.w2aExpected)}; (b) ${finals(c.w2bFinal, c.w2bExpected)}`, exact ? "**met**" : "**missed**"]));
}
if (m.concord && m.sharedb) {
  goal(`W2 (a): ops/s ≥ 5× ShareDB's (a)`, ratio(c.w2aOps, sd.w2aOps), ratio(c.w2aOps, sd.w2aOps) >= 5, "×");
  goal(`W2 (b): ops/s ≥ ShareDB's (a)`, ratio(c.w2bOps, sd.w2aOps), ratio(c.w2bOps, sd.w2aOps) >= 1, "×");
  goal(`W3: join time ≤ ½ ShareDB's (${run.params.shapes.toLocaleString("en-US")} shapes)`, ratio(c.w3Ms, sd.w3Ms), ratio(c.w3Ms, sd.w3Ms) <= 0.5, "× ShareDB's");
  goal(`W3: bytes ≤ ShareDB's`, ratio(c.w3Bytes, sd.w3Bytes), ratio(c.w3Bytes, sd.w3Bytes) <= 1, "× ShareDB's");
}

// ---- plots ----
mkdirSync(imgDir, { recursive: true });
const bars = (pick) => systems.map((s) => ({ series: NAMES[s], value: pick(m[s]) }));
const plots = {
  "peers-w1-throughput.svg": barChart({ title: `W1 whiteboard, ${C} clients × ${K} moves`, unit: "moves/s (higher is better)", groups: [{ label: "throughput", bars: bars((x) => x.w1Ops) }] }),
  "peers-w1-latency.svg": barChart({
    title: `W1 latency, ${C} clients`,
    unit: "ms (lower is better)",
    groups: [
      { label: "ack p50", bars: bars((x) => x.w1AckP50) },
      { label: "ack p99", bars: bars((x) => x.w1AckP99) },
      { label: "fan-out p50", bars: bars((x) => x.w1FanP50) },
      { label: "fan-out p99", bars: bars((x) => x.w1FanP99) },
    ],
  }),
  "peers-w1-cpu.svg": barChart({ title: `W1 server CPU per move, ${C} clients`, unit: "µs of server CPU per move (lower is better)", groups: [{ label: "server CPU / op", bars: bars((x) => x.w1Cpu) }] }),
  "peers-w2.svg": barChart({
    title: `W2 hot counter, ${C} clients × ${KC} increments`,
    unit: "increments/s (higher is better)",
    groups: [
      { label: "(a) commutative add", bars: bars((x) => x.w2aOps) },
      { label: "(b) read-modify-write", bars: bars((x) => x.w2bOps) },
    ],
    note: "(b): only Concord's final value is exact; ShareDB and Yjs lose increments (see the table).",
  }),
  "peers-w3.svg": barChart({
    title: `W3 late joiner, ${run.params.shapes.toLocaleString("en-US")} shapes`,
    unit: "ms to load (lower is better)",
    groups: [{ label: "join time", bars: bars((x) => x.w3Ms) }],
  }),
  "peers-w3-bytes.svg": barChart({
    title: `W3 late joiner, ${run.params.shapes.toLocaleString("en-US")} shapes`,
    unit: "KiB received on the socket (lower is better)",
    groups: [{ label: "bytes received", bars: bars((x) => x.w3Bytes / 1024) }],
  }),
};
for (const [file, svg] of Object.entries(plots)) writeFileSync(join(imgDir, file), svg);

// ---- markdown ----
const mach = run.machine;
const la = (l) => l.map((v) => v.toFixed(2)).join(", ");
const lines = [];
const L = (s = "") => lines.push(s);
L(`<!-- Generated by bench/peers/src/report.js from a run of ${run.date}; rewrite by re-running, not by hand. -->`);
L();
L("```sh");
L(run.command);
L("```");
L();
L(`Machine: ${mach.cpus} cores, ${mach.cpuModel}, ${mach.memGiB.toFixed(0)} GiB RAM, ${mach.platform}, Node ${mach.node}. ` +
  `Load average (1, 5, 15 min) at the start ${la(mach.loadavgStart)}, at the end ${la(mach.loadavgEnd)}; ` +
  `the machine was shared with other builds, so treat absolute figures with care: the ratios come from the same run, systems interleaved.`);
if (run.versions) L(`Versions: ${Object.entries(run.versions).map(([k, v]) => `${k} ${v}`).join(", ")}.`);
L(`Parameters: W1 ${C} clients × ${K} moves; W2 ${C} clients × ${KC} increments; the clients of both spread over ${run.params.threads ?? 1} load-generator thread${(run.params.threads ?? 1) === 1 ? "" : "s"}; W3 ${run.params.shapes.toLocaleString("en-US")} shapes, ${run.params.joins} joins per repetition; ` +
  `${run.params.reps} repetitions${run.params.warmup ? ", each on a fresh server after an unrecorded warm-up at a fifth of the work" : ""}. Figures are medians over repetitions ` +
  `(W3: of each repetition's median join). Whole run: ${f(run.wallSeconds)} s.`);
L();
L("### Goals");
L();
L(row(["goal", "Concord ÷ peer (or value)", ""]));
L(row(["---", "---:", "---"]));
for (const g of goals) L(g);
L();
L(`### W1 whiteboard (${C} clients, each moves its own shape ${K} times, closed loop)`);
L();
L(row(["", "moves/s", "ack p50 ms", "ack p99 ms", "fan-out p50 ms", "fan-out p99 ms", "server CPU µs/move", "of which kernel", "load generator CPU µs/move", "both, µs/move", "server RSS MiB"]));
L(row(["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]));
for (const s of systems) {
  const x = m[s];
  L(row([NAMES[s], f(x.w1Ops), f(x.w1AckP50), f(x.w1AckP99), f(x.w1FanP50), f(x.w1FanP99), f(x.w1Cpu), f(x.w1Kernel), f(x.w1Lg), f(x.w1Total), f(x.w1Rss)]));
}
L();
L(`The load generator runs all ${C} clients of a system in one Node process, spread over ${run.params.threads ?? 1} worker thread${(run.params.threads ?? 1) === 1 ? "" : "s"}, ` +
  `on the same ${mach.cpus} cores as the server, and every move is delivered to ${C - 1} other clients, so the client library's CPU per move counts as much as the server's. ` +
  `Moves/s is capped by the cores: at most about ${mach.cpus} × 10⁶ ÷ the "both" column, and for ShareDB and Yjs, whose servers run their JavaScript on one thread, ` +
  `at most about 10⁶ ÷ their server CPU per move.`);
L();
L(`![W1 throughput](img/peers-w1-throughput.svg) ![W1 latency](img/peers-w1-latency.svg) ![W1 server CPU](img/peers-w1-cpu.svg)`);
L();
L(`### W2 hot counter (${C} clients × ${KC} increments of one counter, closed loop)`);
L();
L(row(["", "(a) add/s", "(a) final", "(a) ack p99 ms", "(a) server CPU µs/op", "(b) RMW/s", "(b) final", "(b) runs per op", "(b) most runs of one op", "(b) rejected runs", "(b) ack p99 ms", "(b) server CPU µs/op"]));
L(row(["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]));
for (const s of systems) {
  const x = m[s];
  L(row([NAMES[s], f(x.w2aOps), finals(x.w2aFinal, x.w2aExpected), f(x.w2aP99), f(x.w2aCpu), f(x.w2bOps), finals(x.w2bFinal, x.w2bExpected), f(x.w2bRuns), Number.isFinite(x.w2bRunsMax) ? String(x.w2bRunsMax) : "–", `${f(x.w2bRejections * 100)}%`, f(x.w2bP99), f(x.w2bCpu)]));
}
L();
L(`![W2](img/peers-w2.svg)`);
L();
L(`### W3 late joiner (${run.params.shapes.toLocaleString("en-US")}-shape board)`);
L();
L(row(["", "join ms", "bytes received", "server CPU ms per join (mean)", "server RSS MiB after"]));
L(row(["---", "---:", "---:", "---:", "---:"]));
for (const s of systems) {
  const x = m[s];
  L(row([NAMES[s], f(x.w3Ms), Math.round(x.w3Bytes).toLocaleString("en-US"), f(x.w3Cpu), f(x.w3Rss)]));
}
L();
L(`![W3 time](img/peers-w3.svg) ![W3 bytes](img/peers-w3-bytes.svg)`);
L();
L("### Fairness notes");
L();
for (const note of [
  "All three servers keep documents in memory only: Concord `serve --memory`, ShareDB's `MemoryDB`/`MemoryPubSub` (which ShareDB documents as not for production), y-websocket without persistence. Each runs in its own process, started fresh for every repetition and warmed up (JIT, allocator) with a fifth of the work on other documents before measuring.",
  "Concord runs with its production defaults, including the per-session rate limit (500 messages/s, bursts of 1,000); the clients use `@concord/client`'s `transact` with reconnection off, so a dropped connection fails the run instead of being resumed. Read-modify-write uses `transact` with up to 1,000,000 attempts (the default is 10), so that every increment lands; its re-runs wait out the client's contention pause for the document (shared by its transactions there, growing with rejections and shrinking with commits).",
  "ShareDB: json0, its own client (`sharedb/lib/client`) over `ws` and `@teamwork/websocket-json-stream`, as in its examples. (a) is json0's `na`. (b) is what a ShareDB app writes for read-modify-write, `od`/`oi` of n + 1: ShareDB validates no reads, OT makes the later replace win, and increments are lost (the final value shows how many); it never rejects, so it never re-runs.",
  "Yjs: `y-websocket`'s `WebsocketProvider` (BroadcastChannel off, else clients in one process would sync without the server) and the y-websocket server's `setupWSConnection` on `ws` 8. y-websocket has no acknowledgement: a client's move counts as acknowledged when the server's broadcast of it comes back to the sender, found by parsing each incoming update's metadata (`Y.parseUpdateMeta`), a cost only the Yjs clients pay. Yjs has no numeric add: (a) is a per-client counter (each client writes its own `Y.Map` key; the value is the sum, a G-counter); (b) writes one key, last writer wins, so increments are lost. Awareness stays on, as in a real whiteboard.",
  "The load generator runs the clients of W1 and W2 on the same number of worker threads for every system (one per core by default), kept for the whole repetition, so the warm-up warms them too. " +
    "A second thread takes CPU from a server on the same cores: in a side-by-side check (docs/benchmarks.md, \"Two generator threads, longer runs\") ShareDB's W1 lost 5–8% with two threads against one, Yjs gained 30–50% and Concord about half.",
  "Bytes (W3) are everything the joining client's TCP socket received, from the HTTP upgrade response to the loaded document; no system compresses (the servers do not negotiate permessage-deflate). Server CPU is utime + stime of the server process from /proc/<pid>/stat (10 ms ticks), so it includes the kernel's TCP work, which on loopback includes delivering into the receiving socket.",
]) L(`- ${note}`);
L();
L("### Every repetition");
L();
L(row(["rep", "system", "load avg (1 min) start → end", "W1 moves/s", "W1 ack p99 ms", "W1 CPU µs/move", "W2a /s", "W2b /s", "W3 join ms (each join)", "server-reported errors", "checks"]));
L(row(["---:", "---", "---", "---:", "---:", "---:", "---:", "---:", "---", "---", "---"]));
for (const r of run.results) {
  L(row([
    r.rep + 1,
    NAMES[r.system],
    `${r.loadavgStart[0].toFixed(2)} → ${r.loadavgEnd[0].toFixed(2)}`,
    f(r.w1?.opsPerSec),
    f(r.w1?.ackP99),
    f(r.w1?.serverCpuPerOpUs),
    f(r.w2a?.opsPerSec),
    f(r.w2b?.opsPerSec),
    (r.w3?.timesMs ?? []).map((t) => t.toFixed(0)).join(", "),
    Object.keys(r.diagnostics ?? {}).length === 0 ? "none" : Object.entries(r.diagnostics).map(([k, v]) => `${k}: ${v}`).join(", "),
    r.errors.length === 0 ? "ok" : r.errors.map((e) => e.replace(/\|/g, "/").split("\n")[0]).join("; "),
  ]));
}
L();
if (run.failures.length > 0) {
  L(`**Failed checks:** ${run.failures.map((e) => e.split("\n")[0]).join("; ")}`);
  L();
}
const section = lines.join("\n");

const mdPath = join(docsDir, "benchmarks.md");
const BEGIN = "<!-- peers:begin -->";
const END = "<!-- peers:end -->";
const text = readFileSync(mdPath, "utf8"); // fresh: another section may have changed meanwhile
const b = text.indexOf(BEGIN);
const e = text.indexOf(END);
if (b < 0 || e < b || text.indexOf(BEGIN, b + 1) >= 0) {
  console.error(`${mdPath}: expected exactly one ${BEGIN} … ${END} region`);
  process.exit(1);
}
writeFileSync(mdPath, `${text.slice(0, b + BEGIN.length)}\n${section}\n${text.slice(e)}`);
console.error(`wrote the peers section of ${relative(process.cwd(), mdPath)} and ${Object.keys(plots).length} plots in ${relative(process.cwd(), imgDir)}`);

// Summarises a V8 .cpuprofile (node --cpu-prof): self time per function and
// inclusive time for functions matching a filter.
//   node src/profile-top.js FILE.cpuprofile [N] [FILTER]

import { readFileSync } from "node:fs";

const [file, nArg, filter] = process.argv.slice(2);
const n = Number(nArg ?? 30);
const prof = JSON.parse(readFileSync(file, "utf8"));
const byId = new Map(prof.nodes.map((node) => [node.id, node]));
const self = new Map();
const counts = new Map();
for (const id of prof.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
const total = prof.samples.length;
const key = (node) => {
  const cf = node.callFrame;
  const url = cf.url.replace(/^.*\/(node_modules|web\/client)\//, "$1/");
  return `${cf.functionName || "(anonymous)"} ${url}:${cf.lineNumber + 1}`;
};
for (const [id, c] of counts) {
  const k = key(byId.get(id));
  self.set(k, (self.get(k) ?? 0) + c);
}
// Inclusive: walk parents.
const parent = new Map();
for (const node of prof.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
const incl = new Map();
for (const [id, c] of counts) {
  const seen = new Set();
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const k = key(byId.get(cur));
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + c);
  }
}
const pct = (c) => ((100 * c) / total).toFixed(1).padStart(5);
console.log(`${total} samples`);
console.log("self:");
for (const [k, c] of [...self].sort((a, b) => b[1] - a[1]).slice(0, n)) console.log(`${pct(c)}%  ${k}`);
console.log("inclusive:");
for (const [k, c] of [...incl].sort((a, b) => b[1] - a[1]).filter(([k]) => !filter || k.includes(filter)).slice(0, n)) console.log(`${pct(c)}%  ${k}`);

// Hand-written SVG bar charts (no dependencies): grouped vertical bars with
// value labels, one colour per system.

const COLORS = { Concord: "#1b7f5f", ShareDB: "#c0392b", Yjs: "#2c6fbb" };
const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function formatValue(v) {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/**
 * groups: [{ label, bars: [{ series, value }] }]; one chart, one unit.
 * Returns an SVG document as a string.
 */
export function barChart({ title, unit, groups, note }) {
  const series = [...new Set(groups.flatMap((g) => g.bars.map((b) => b.series)))];
  const barW = 46;
  const gap = 10;
  const groupGap = 36;
  const left = 70;
  const top = 48;
  const plotH = 220;
  const groupW = series.length * barW + (series.length - 1) * gap;
  const width = Math.max(420, left + groups.length * (groupW + groupGap) + 20);
  const height = top + plotH + 70 + (note ? 16 : 0);
  const max = niceMax(Math.max(...groups.flatMap((g) => g.bars.map((b) => (Number.isFinite(b.value) ? b.value : 0)))));
  const y = (v) => Math.round((top + plotH - (v / max) * plotH) * 10) / 10;
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="${left}" y="36" fill="#555">${esc(unit)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const yy = y(v);
    out.push(`<line x1="${left}" x2="${width - 10}" y1="${yy}" y2="${yy}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${left - 6}" y="${yy + 4}" text-anchor="end" fill="#555">${esc(formatValue(v))}</text>`);
  }
  groups.forEach((g, gi) => {
    const gx = left + 16 + gi * (groupW + groupGap);
    g.bars.forEach((b) => {
      const si = series.indexOf(b.series);
      const x = gx + si * (barW + gap);
      const v = Number.isFinite(b.value) ? b.value : 0;
      const yy = y(v);
      out.push(`<rect x="${x}" y="${yy}" width="${barW}" height="${top + plotH - yy}" fill="${COLORS[b.series] ?? "#888"}"/>`);
      out.push(`<text x="${x + barW / 2}" y="${yy - 4}" text-anchor="middle" font-size="11">${esc(formatValue(b.value))}</text>`);
    });
    out.push(`<text x="${gx + groupW / 2}" y="${top + plotH + 18}" text-anchor="middle">${esc(g.label)}</text>`);
  });
  out.push(`<line x1="${left}" x2="${width - 10}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`);
  let lx = left;
  const ly = top + plotH + 42;
  for (const s of series) {
    out.push(`<rect x="${lx}" y="${ly - 10}" width="12" height="12" fill="${COLORS[s] ?? "#888"}"/>`);
    out.push(`<text x="${lx + 16}" y="${ly}">${esc(s)}</text>`);
    lx += 30 + s.length * 8;
  }
  if (note) out.push(`<text x="${left}" y="${ly + 20}" fill="#555" font-size="11">${esc(note)}</text>`);
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

// Builds the whiteboard into dist/: one ES module bundle (with
// @concord/client compiled from its TypeScript sources), the page and its
// stylesheet. `concord serve --static web/whiteboard/dist` serves the result.

import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

await build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(dist, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  // Resolve @concord/client to its sources: no separate client build needed.
  conditions: ["source"],
  sourcemap: true,
  minify: true,
  legalComments: "none",
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(dist, "index.html"));
copyFileSync(join(here, "src", "style.css"), join(dist, "style.css"));
console.log(`whiteboard built into ${dist}`);

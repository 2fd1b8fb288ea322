// Builds the pages' vendor bundles into ../static/vendor/ from the packages in package-lock.json (`make assets`).
import { build } from "esbuild";
import { copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static", "vendor");
const require = createRequire(import.meta.url);
const pkgDir = (name) => dirname(require.resolve(`${name}/package.json`));

await mkdir(out, { recursive: true });

// CodeMirror: our entry point bundled into one minified IIFE with a global `CM`.
await build({
  entryPoints: [join(here, "src", "codemirror.js")],
  outfile: join(out, "codemirror.js"),
  bundle: true,
  minify: true,
  format: "iife",
  globalName: "CM",
  target: "es2020",
  legalComments: "eof",
  logLevel: "info",
});

// uPlot and Swagger UI ship minified browser builds: copied as published.
await copyFile(join(pkgDir("uplot"), "dist", "uPlot.iife.min.js"), join(out, "uplot.js"));
await copyFile(join(pkgDir("uplot"), "dist", "uPlot.min.css"), join(out, "uplot.css"));
const swagger = pkgDir("swagger-ui-dist");
// The bundle ends with a sourceMappingURL comment for a map we do not ship; drop it so browsers do not ask for it.
const bundle = await readFile(join(swagger, "swagger-ui-bundle.js"), "utf8");
await writeFile(join(out, "swagger-ui.js"), bundle.replace(/\n\/\/# sourceMappingURL=\S+\s*$/, "\n"));
const css = await readFile(join(swagger, "swagger-ui.css"), "utf8");
await writeFile(join(out, "swagger-ui.css"), css.replace(/\s*\/\*# sourceMappingURL=[^*]*\*\/\s*$/, "\n"));

// One file naming every bundled package, its version and license, for whoever ships the pages.
const lock = JSON.parse(await readFile(join(here, "package-lock.json"), "utf8"));
const lines = Object.entries(lock.packages)
  .filter(([path, meta]) => path.startsWith("node_modules/") && !meta.dev)
  .map(([path, meta]) => `${path.slice("node_modules/".length)} ${meta.version} ${meta.license || "see package"}`)
  .sort();
await writeFile(join(out, "LICENSES.txt"), `Packages bundled into static/vendor/ (from web/package-lock.json):\n${lines.join("\n")}\n`);

// Gzipped twins of the large files: aiohttp's static handler sends `x.js.gz` to browsers that accept gzip (3.4 MB of
// bundles travel as 0.8 MB). Node writes no timestamp into the gzip header, so rebuilding gives the same bytes.
for (const name of await readdir(out)) {
  if (!/\.(js|css)$/.test(name)) continue;
  const data = await readFile(join(out, name));
  if (data.length > 10_000) await writeFile(join(out, `${name}.gz`), gzipSync(data, { level: 9 }));
}

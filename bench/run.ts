// `npm run bench`: every service benchmark in turn, each printing its own figures and ratios.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
let failed = 0;
for (const name of ['iam', 'audit', 'kms', 'obs', 'vault', 'privacy']) {
  if (only.length && !only.includes(name)) continue;
  const file = path.join(here, `${name}.js`);
  if (!existsSync(file)) continue;
  console.log(`\n### bench/${name}`);
  // The verification benchmark holds a million traces in memory.
  const r = spawnSync(process.execPath, [...(name === 'audit' ? ['--max-old-space-size=6000'] : []), file], { stdio: 'inherit' });
  if (r.status !== 0) failed++;
}
process.exit(failed ? 1 : 0);

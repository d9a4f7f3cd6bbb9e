#!/usr/bin/env node
// Runs the compiled test suite once per database: SQLite always, PostgreSQL when it is reachable
// (or required: CI=true or CUSTOS_TEST_POSTGRES=1 make an unreachable PostgreSQL a failure).
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const testDir = path.join(root, 'dist', 'test');
const filter = process.argv.slice(2);

function findTests(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...findTests(p));
    else if (e.name.endsWith('.test.js')) out.push(p);
  }
  return out.sort();
}

function reachable(host, port) {
  return new Promise((resolve) => {
    const s = connect({ host, port, timeout: 1500 }, () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
    s.on('timeout', () => { s.destroy(); resolve(false); });
  });
}

const files = findTests(testDir).filter((f) => filter.length === 0 || filter.some((x) => f.includes(x)));
if (files.length === 0) {
  console.error('no test files found under dist/test');
  process.exit(1);
}
const pgUrl = process.env.CUSTOS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const pgRequired = process.env.CI === 'true' || process.env.CUSTOS_TEST_POSTGRES === '1';
const pgHost = new URL(pgUrl);
const pgUp = process.env.CUSTOS_TEST_POSTGRES === '0' ? false : await reachable(pgHost.hostname, Number(pgHost.port || 5432));
const dbs = ['sqlite'];
if (pgUp) dbs.push('postgres');
else if (pgRequired) {
  console.error(`PostgreSQL is required (CI=true or CUSTOS_TEST_POSTGRES=1) but ${pgHost.hostname}:${pgHost.port || 5432} is not reachable`);
  process.exit(1);
} else console.error('PostgreSQL not reachable: running the suite on SQLite only (set CUSTOS_TEST_POSTGRES=1 to require it)');

let passed = 0;
let failed = 0;
let skipped = 0;
const work = mkdtempSync(path.join(tmpdir(), 'custos-tests-'));
for (const db of dbs) {
  console.log(`\n=== test suite on ${db} (${files.length} files) ===`);
  const tap = path.join(work, `${db}.tap`);
  const r = spawnSync(process.execPath, [
    '--test', '--test-concurrency=2',
    '--test-reporter=spec', '--test-reporter-destination=stdout',
    '--test-reporter=tap', `--test-reporter-destination=${tap}`,
    ...files,
  ], { stdio: 'inherit', env: { ...process.env, CUSTOS_TEST_DB: db, CUSTOS_TEST_PG_URL: pgUrl } });
  const text = readFileSync(tap, 'utf8');
  const num = (k) => Number((text.match(new RegExp(`^# ${k} (\\d+)$`, 'm')) ?? [])[1] ?? 0);
  passed += num('pass');
  failed += num('fail') + num('cancelled');
  skipped += num('skipped');
  if (r.status !== 0 && num('fail') + num('cancelled') === 0) failed += 1; // the runner itself failed
  console.log(`${db}: ${num('pass')} passed, ${num('fail') + num('cancelled')} failed, ${num('skipped')} skipped`);
}
rmSync(work, { recursive: true, force: true });
console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);

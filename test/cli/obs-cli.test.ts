// `custos obs` as a tenant uses it: make a bucket, copy a file up and down, list, delete.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PASSWORD, startTestServer } from '../helpers.js';
import { CLI_MAIN } from '../process.js';

const run = promisify(execFile);

test('custos obs: mb, cp up and down with progress, ls, rm, and clear errors', { timeout: 120_000 }, async () => {
  const s = await startTestServer();
  const home = mkdtempSync(path.join(tmpdir(), 'custos-obs-cli-'));
  const env = { ...process.env, CUSTOS_PROFILES_FILE: path.join(home, 'profiles.json'), CUSTOS_PASSWORD: PASSWORD, CUSTOS_OBS_ENDPOINT: s.custos.obsUrl };
  const custos = (...args: string[]) => run(process.execPath, [CLI_MAIN, ...args], { env });
  try {
    const t = await s.createTenant();
    await custos('login', '--endpoint', s.url, '--account', t.name, '--user', 'admin');
    assert.match((await custos('obs', 'mb', 's3://cli-files', '--region', t.projects[0]!.name)).stderr, /made bucket cli-files/);
    const data = randomBytes(3 * 1024 * 1024 + 17);
    writeFileSync(path.join(home, 'big.bin'), data);
    const up = await custos('obs', 'cp', path.join(home, 'big.bin'), 's3://cli-files/backups/');
    assert.match(up.stderr, /upload .*big\.bin: 3145745 bytes in/, 'a progress summary');
    const listed = JSON.parse((await custos('obs', 'ls', 's3://cli-files/backups/', '-o', 'json')).stdout) as { key: string; size: number }[];
    assert.deepEqual(listed.map((o) => [o.key, o.size]), [['backups/big.bin', data.length]]);
    assert.match((await custos('obs', 'ls')).stdout, /cli-files/);
    await custos('obs', 'cp', 's3://cli-files/backups/big.bin', path.join(home, 'back.bin'));
    assert.ok(readFileSync(path.join(home, 'back.bin')).equals(data));
    await assert.rejects(custos('obs', 'cp', 's3://cli-files/nope.bin', path.join(home, 'nope.bin')), (e: { code: number; stderr: string }) => e.code === 3 && /NoSuchKey/.test(e.stderr));
    assert.equal(existsSync(path.join(home, 'nope.bin')) || existsSync(path.join(home, 'nope.bin.custos-partial')), false, 'no partial file is left');
    await custos('obs', 'rm', 's3://cli-files/backups/big.bin');
    assert.deepEqual(JSON.parse((await custos('obs', 'ls', 's3://cli-files', '--recursive', '-o', 'json')).stdout), []);
    assert.match((await custos('obs', 'cp', '--help')).stdout, /progress/);
  } finally {
    rmSync(home, { recursive: true, force: true });
    await s.close();
  }
});

// `custos kms` as a tenant administrator uses it: keys, encryption with a context, data keys, deletion.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PASSWORD, startTestServer } from '../helpers.js';
import { CLI_MAIN } from '../process.js';

const run = promisify(execFile);

test('custos kms: create, list, encrypt/decrypt a file with a context, data keys, rotation and deletion', { timeout: 120_000 }, async () => {
  const s = await startTestServer();
  const home = mkdtempSync(path.join(tmpdir(), 'custos-kms-cli-'));
  const env = { ...process.env, CUSTOS_PROFILES_FILE: path.join(home, 'profiles.json'), CUSTOS_PASSWORD: PASSWORD };
  const custos = async (...args: string[]) => (await run(process.execPath, [CLI_MAIN, ...args], { env })).stdout;
  try {
    const t = await s.createTenant();
    await custos('login', '--endpoint', s.url, '--account', t.name, '--user', 'admin');
    const project = t.projects[0]!.name;
    await assert.rejects(custos('kms', 'keys', 'list'), (e: { code: number; stderr: string }) => e.code === 2 && /give --project/.test(e.stderr));
    const [created] = JSON.parse(await custos('kms', 'keys', 'create', '--alias', 'files', '--project', project, '-o', 'json')) as { id: string }[];
    assert.match(created!.id, /^[0-9a-f-]{36}$/);
    assert.match(await custos('kms', 'keys', 'list', '--project', project), /files/);

    writeFileSync(path.join(home, 'note.txt'), 'the launch code is 0000');
    const ct = await custos('kms', 'encrypt', '--key-id', created!.id, '--in', path.join(home, 'note.txt'), '--context', 'purpose=notes', '--project', project);
    writeFileSync(path.join(home, 'note.enc'), ct);
    await custos('kms', 'decrypt', '--in', path.join(home, 'note.enc'), '--context', 'purpose=notes', '--out', path.join(home, 'note.out'), '--project', project);
    assert.equal(readFileSync(path.join(home, 'note.out'), 'utf8'), 'the launch code is 0000');
    await assert.rejects(custos('kms', 'decrypt', '--in', path.join(home, 'note.enc'), '--project', project), (e: { code: number; stderr: string }) => e.code === 1 && /KMS\.0206/.test(e.stderr));

    const [dk] = JSON.parse(await custos('kms', 'datakey', '--key-id', created!.id, '--project', project, '-o', 'json')) as { plain_text: string; cipher_text: string }[];
    assert.match(dk!.plain_text, /^[0-9a-f]{64}$/);
    const [rot] = JSON.parse(await custos('kms', 'keys', 'rotation', '--key-id', created!.id, '--on', '--interval', '90', '--project', project, '-o', 'json')) as { rotation: boolean; interval_days: number }[];
    assert.deepEqual([rot!.rotation, rot!.interval_days], [true, 90]);
    const [sched] = JSON.parse(await custos('kms', 'keys', 'schedule-deletion', '--key-id', created!.id, '--days', '7', '--project', project, '-o', 'json')) as { state: string }[];
    assert.equal(sched!.state, 'pending deletion');
    const [back] = JSON.parse(await custos('kms', 'keys', 'cancel-deletion', '--key-id', created!.id, '--project', project, '-o', 'json')) as { state: string }[];
    assert.equal(back!.state, 'disabled');
    assert.match(await custos('kms', '--help'), /encrypt/);
  } finally {
    rmSync(home, { recursive: true, force: true });
    await s.close();
  }
});

// `custos privacy` as a privacy officer uses it: purposes, consent, a request from receipt to its archive.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { strFromU8, unzipSync } from 'fflate';
import { PASSWORD, startTestServer } from '../helpers.js';
import { CLI_MAIN } from '../process.js';

const run = promisify(execFile);

test('custos privacy: purposes, consent, requests with deadlines, an access archive', { timeout: 300_000 }, async () => {
  const s = await startTestServer();
  const home = mkdtempSync(path.join(tmpdir(), 'custos-privacy-cli-'));
  const env = { ...process.env, CUSTOS_PROFILES_FILE: path.join(home, 'profiles.json'), CUSTOS_PASSWORD: PASSWORD };
  const custos = async (...args: string[]) => (await run(process.execPath, [CLI_MAIN, ...args], { env })).stdout;
  const json = async (...args: string[]) => JSON.parse(await custos(...args, '-o', 'json')) as Record<string, any>[];
  try {
    const t = await s.createTenant();
    await custos('login', '--endpoint', s.url, '--account', t.name, '--user', 'admin');
    await custos('privacy', 'purposes', 'set', 'newsletter', '--basis', 'consent', '--description', 'monthly news');
    assert.match(await custos('privacy', 'purposes', 'list'), /newsletter .*consent/s);
    await assert.rejects(custos('privacy', 'purposes', 'set', 'x', '--basis', 'whim'), (e: { code: number; stderr: string }) => e.code === 1 && /400/.test(e.stderr));

    // A record in the vault for the subject.
    const c = await s.api('POST', '/v1/vault/collections', {
      token: t.token,
      body: { name: 'readers', project_id: t.projects[0]!.id, access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write'] }], properties: [{ name: 'email', pii_type: 'email', purposes: ['newsletter'], collection_method: 'form', deletion: { on_event: 'consent_withdrawn' } }] },
    });
    assert.equal(c.status, 201, c.text);
    assert.equal((await s.api('POST', '/v1/vault/collections/readers/records', { token: t.token, body: { subject_id: 'r1', fields: { email: 'reader@example.com' } } })).status, 201);

    await custos('privacy', 'consent', 'grant', 'r1', 'newsletter', '--source', 'signup form', '--notice', 'v3');
    const [cur] = await json('privacy', 'consent', 'show', 'r1');
    assert.deepEqual([cur!.purpose, cur!.status, cur!.notice_version], ['newsletter', 'granted', 'v3']);

    const [req] = await json('privacy', 'requests', 'create', 'r1', 'access');
    assert.equal(req!.status, 'received');
    await assert.rejects(custos('privacy', 'requests', 'execute', req!.id), (e: { stderr: string }) => /409 NotVerified/.test(e.stderr));
    await custos('privacy', 'requests', 'verify', req!.id, '--method', 'video call', '--reference', 'case 12');
    const [ext] = await json('privacy', 'requests', 'extend', req!.id, '--months', '1', '--reason', 'large export');
    assert.equal(ext!.extended, true);
    const zipFile = path.join(home, 'r1.zip');
    const [done] = await json('privacy', 'requests', 'execute', req!.id, '--out', zipFile);
    assert.equal(done!.status, 'completed');
    const files = unzipSync(new Uint8Array(readFileSync(zipFile)));
    assert.match(strFromU8(files['vault.csv']!), /readers,.*,email,reader@example\.com/);
    assert.match(strFromU8(files['consents.csv']!), /newsletter,granted,signup form,v3/);
    assert.match(await custos('privacy', 'requests', 'show', req!.id), /extended/);
    assert.match(await custos('privacy', 'requests', 'list', '--status', 'completed'), /access/);

    await assert.rejects(custos('privacy', 'deregistration'), (e: { code: number; stderr: string }) => e.code === 1 && /404/.test(e.stderr));
    await assert.rejects(custos('privacy', 'deregister', '--confirm', t.name), (e: { code: number; stderr: string }) => e.code === 1 && /403 MfaRequired/.test(e.stderr));

    await custos('privacy', 'consent', 'withdraw', 'r1', 'newsletter', '--source', 'unsubscribe link');
    const hist = await json('privacy', 'consent', 'show', 'r1', '--history');
    assert.deepEqual(hist.map((h) => h.status), ['granted', 'withdrawn']);
  } finally {
    await s.close();
    rmSync(home, { recursive: true, force: true });
  }
});

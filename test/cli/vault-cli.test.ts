// `custos vault` as a privacy engineer uses it: a collection from a schema file, the whitelist, records
// (one by one and imported with progress), masked reads, search, tokens, events, the inventory.
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

test('custos vault: collections, whitelist, records, search, tokens, events, inventory', { timeout: 300_000 }, async () => {
  const s = await startTestServer();
  const home = mkdtempSync(path.join(tmpdir(), 'custos-vault-cli-'));
  const env = { ...process.env, CUSTOS_PROFILES_FILE: path.join(home, 'profiles.json'), CUSTOS_PASSWORD: PASSWORD };
  const custos = async (...args: string[]) => (await run(process.execPath, [CLI_MAIN, ...args], { env })).stdout;
  const json = async (...args: string[]) => JSON.parse(await custos(...args, '-o', 'json')) as Record<string, any>[];
  try {
    const t = await s.createTenant();
    await custos('login', '--endpoint', s.url, '--account', t.name, '--user', 'admin');
    const file = (name: string, content: unknown) => {
      const p = path.join(home, name);
      writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
      return p;
    };
    const schema = file('schema.json', {
      description: 'newsletter subscribers',
      properties: [
        { name: 'email', pii_type: 'email', mandatory: true, searchable: true, purposes: ['newsletter'], collection_method: 'sign-up form', deletion: { on_event: 'consent_withdrawn' } },
        { name: 'phone', pii_type: 'phone_number', purposes: ['newsletter'], collection_method: 'sign-up form', deletion: { after: 'P2Y' } },
      ],
    });
    const [c] = await json('vault', 'collections', 'create', 'subscribers', '--file', schema, '--project', t.projects[0]!.id);
    assert.equal(c!.version, 1);
    assert.match(await custos('vault', 'collections', 'list'), /subscribers/);
    assert.match(await custos('vault', 'collections', 'get', 'subscribers'), /consent_withdrawn/);

    // Not whitelisted yet: the records are out of reach, even for the administrator.
    await assert.rejects(custos('vault', 'records', 'put', 'subscribers', '--subject', 's1', '--fields', '{"email":"a@example.com"}'), (e: { code: number; stderr: string }) => e.code === 1 && /404/.test(e.stderr));
    await custos('vault', 'access', 'set', 'subscribers', '--file', file('access.json', [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write', 'search', 'detokenize', 'delete'], unmask: ['email'] }]));
    assert.match(await custos('vault', 'access', 'get', 'subscribers'), /detokenize/);

    const [r1] = await json('vault', 'records', 'put', 'subscribers', '--subject', 's1', '--fields', '{"email":"ann@example.com","phone":"+44 20 7946 0958"}');
    const lines = Array.from({ length: 25 }, (_, i) => JSON.stringify({ subject_id: `bulk-${i}`, fields: { email: `user${i}@example.com` } })).join('\n');
    const imported = await run(process.execPath, [CLI_MAIN, 'vault', 'records', 'import', 'subscribers', '--file', file('records.jsonl', `${lines}\n`), '-o', 'json'], { env });
    assert.equal((JSON.parse(imported.stdout) as unknown[]).length, 25);
    assert.match(imported.stderr, /imported 25 records in/);
    await assert.rejects(run(process.execPath, [CLI_MAIN, 'vault', 'records', 'import', 'subscribers', '--file', file('bad.jsonl', '{"subject_id":"x","fields":{"email":"b@example.com"}}\n{"subject_id":"y","fields":{"email":"nope"}}\n')], { env }),
      (e: { code: number; stderr: string }) => e.code === 1 && /line 2: 400 InvalidRecord: property email: not a valid email \(1 records stored before it\)/.test(e.stderr));

    const [masked] = await json('vault', 'records', 'get', 'subscribers', r1!.id, '--reason', 'newsletter');
    assert.equal(masked!.email, 'a***@example.com');
    assert.equal(masked!.phone, '+44 20****0958');
    const [plain] = await json('vault', 'records', 'get', 'subscribers', r1!.id, '--reason', 'newsletter', '--unmask', 'email');
    assert.equal(plain!.email, 'ann@example.com');
    await assert.rejects(custos('vault', 'records', 'get', 'subscribers', r1!.id, '--reason', 'newsletter', '--unmask', 'phone'), (e: { stderr: string }) => /403 UnmaskNotAllowed/.test(e.stderr));
    const found = await json('vault', 'records', 'search', 'subscribers', '--reason', 'newsletter', '--match', 'email=user7@example.com');
    assert.deepEqual(found.map((r) => r.subject), ['bulk-7']);
    const [tok] = await json('vault', 'records', 'get', 'subscribers', r1!.id, '--reason', 'newsletter', '--props', 'email', '--transform', 'email:tokenize');
    const [detok] = await json('vault', 'detokenize', 'subscribers', tok!.email, '--reason', 'newsletter');
    assert.equal(detok!.value, 'ann@example.com');

    const [ev] = await json('vault', 'event', 's1', 'consent_withdrawn');
    assert.deepEqual(ev, { scheduled: 1, deleted_values: 1, deleted_records: 0 });
    const after = await json('vault', 'records', 'list', 'subscribers', '--subject', 's1', '--reason', 'newsletter');
    assert.equal(after[0]!.email, null);

    const md = await custos('vault', 'inventory');
    assert.match(md, /\| subscribers \| email \| sign-up form \| Yes \| Yes \| when consent withdrawn \| newsletter \|/);
    await custos('vault', 'inventory', '--format', 'csv', '--out', path.join(home, 'inv.csv'));
    assert.match(readFileSync(path.join(home, 'inv.csv'), 'utf8'), /subscribers,phone,sign-up form,Yes,No,2 years after collection,newsletter/);
    await assert.rejects(custos('vault', 'inventory', '--format', 'xml'), (e: { code: number }) => e.code === 2);

    await assert.rejects(custos('vault', 'collections', 'delete', 'subscribers'), (e: { stderr: string }) => /409 CollectionNotEmpty/.test(e.stderr));
    await custos('vault', 'collections', 'delete', 'subscribers', '--force');
    assert.match(await custos('vault', 'collections', 'list'), /\(none\)/);
  } finally {
    await s.close();
    rmSync(home, { recursive: true, force: true });
  }
});

// Encryption at rest: personal data planted through the API never appears in the SQLite file or its
// WAL, in PostgreSQL's data as pg_dump sees it, in the data directory, or in the logs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { DB, freshDatabase, startTestServer } from '../helpers.js';

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

test('planted personal data is never stored, logged or traced in the clear', { timeout: 60_000 }, async () => {
  const database = await freshDatabase();
  const s = await startTestServer({ database, config: { logLevel: 'debug' } });
  try {
    const t = await s.createTenant();
    const tag = randomBytes(6).toString('hex');
    const canaries = { email: `canary.${tag}@example.com`, full_name: `Canary ${tag}`, note: `canary-note-${tag} ${'lorem ipsum '.repeat(20)}`, national_id: `CN${tag.toUpperCase()}` };
    const api = (method: string, p: string, body?: unknown) => s.api(method, p, { token: t.token, ...(body !== undefined ? { body } : {}) });
    const c = await api('POST', '/v1/vault/collections', {
      name: 'people', project_id: t.projects[0]!.id,
      access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write', 'search', 'detokenize'], unmask: ['*'] }],
      properties: [
        { name: 'email', pii_type: 'email', searchable: true, purposes: ['support'], collection_method: 'form', deletion: { after: 'P1Y' } },
        { name: 'full_name', pii_type: 'person_name', searchable: true, stable_tokens: true, purposes: ['support'], collection_method: 'form', deletion: { after: 'P1Y' } },
        { name: 'note', pii_type: 'free_text', purposes: ['support'], collection_method: 'support', deletion: { after: 'P1Y' } },
        { name: 'national_id', pii_type: 'national_id', searchable: true, purposes: ['support'], collection_method: 'form', deletion: { after: 'P1Y' } },
      ],
    });
    assert.equal(c.status, 201, c.text);
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await api('POST', '/v1/vault/collections/people/records', { subject_id: `subject-${i}`, fields: canaries });
      assert.equal(r.status, 201, r.text);
      ids.push(r.json.id);
    }
    // Read, search, tokenize and rectify: the values pass through the server every way they can.
    const read = await api('GET', `/v1/vault/collections/people/records/${ids[0]}?reason=support&unmask=*`);
    assert.equal(read.json.fields.email, canaries.email, 'the vault returns what was stored');
    const found = await api('POST', '/v1/vault/collections/people/search', { reason: 'support', match: { email: canaries.email, full_name: canaries.full_name } });
    assert.equal(found.json.records.length, 20);
    const tok = await api('GET', `/v1/vault/collections/people/records/${ids[1]}?reason=support&transform=full_name:tokenize`);
    const detok = await api('POST', '/v1/vault/collections/people/detokenize', { reason: 'support', tokens: [tok.json.fields.full_name] });
    assert.equal(detok.json.values[0].value, canaries.full_name);
    assert.equal((await api('PATCH', `/v1/vault/collections/people/records/${ids[2]}`, { fields: { note: `${canaries.note} (corrected)` } })).status, 200);
    const bad = await api('POST', '/v1/vault/collections/people/records', { subject_id: 'x', fields: { email: `${canaries.full_name} is not an email` } });
    assert.equal(bad.status, 400);

    const needles = [canaries.email, canaries.email.toLowerCase(), `Canary ${tag}`, `canary-note-${tag}`, canaries.national_id, tag];
    const check = (where: string, haystack: Buffer | string) => {
      const text = typeof haystack === 'string' ? haystack : haystack.toString('latin1');
      for (const n of needles) assert.ok(!text.includes(n), `${where} holds a planted value (${n.slice(0, 12)}…)`);
    };
    check('the log', s.logs());
    if (DB === 'sqlite') {
      // Every file of the data directory: the database, its WAL (still holding the recent pages), blobs, keys.
      const files = filesUnder(s.dataDir);
      assert.ok(files.some((f) => f.endsWith('custos.db-wal')), 'the WAL is there to check');
      for (const f of files) check(f, readFileSync(f));
    } else {
      const dump = execFileSync('pg_dump', ['--no-owner', '--data-only', database.url!], { maxBuffer: 512 * 1024 * 1024 });
      assert.ok(dump.includes(Buffer.from('vault_records')), 'the dump holds the vault tables');
      check('pg_dump', dump);
    }
  } finally {
    await s.close();
  }
});

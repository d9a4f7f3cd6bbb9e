// The per-node cache of KMS key rows: every method that writes a key's row invalidates it; a state
// change applies to the next request on the node that made it, and within the poll interval on others.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { KEY_ROW_WRITERS } from '../../src/kms/kms.js';
import { IAM_EPOCH_POLL_MS } from '../../src/server/index.js';
import { DB, startTestServer, withTwoNodes, type TestServer, type Tenant } from '../helpers.js';

const SOURCE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../src/kms/kms.ts');

const kms = (s: TestServer, t: Tenant, op: string, body: unknown) => s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/${op}`, { token: t.token, body });

describe('KMS key-row cache', () => {
  test('every KmsService method that writes a key row or its versions is declared as invalidating', () => {
    const src = readFileSync(SOURCE, 'utf8');
    const starts = [...src.matchAll(/^ {2}(?:private |static )?(?:async )?([a-zA-Z]+)\(/gm)];
    const writers: string[] = [];
    starts.forEach((m, i) => {
      const body = src.slice(m.index, starts[i + 1]?.index ?? src.length);
      // update() is the helper the listed methods write through: its callers are what is checked.
      if (/(insertInto|updateTable|deleteFrom)\('kms_key(s|_versions)'\)|this\.update\(|sql`(insert|update|delete)[^`]*kms_key/i.test(body) && m[1] !== 'constructor' && m[1] !== 'update') writers.push(m[1]!);
    });
    assert.ok(writers.length >= 15, `found ${writers.length} writing methods: ${writers.join(', ')}`);
    assert.deepEqual(writers.filter((w) => !(KEY_ROW_WRITERS as readonly string[]).includes(w)), [], 'undeclared writers of kms_keys');
  });

  test('on one node: disabling, scheduling deletion and moving an alias apply to the next request', async () => {
    const s = await startTestServer();
    try {
      const t = await s.createTenant();
      const a = (await kms(s, t, 'create-key', { key_alias: 'orders' })).json.key_info.key_id as string;
      const b = (await kms(s, t, 'create-key', { key_alias: 'invoices' })).json.key_info.key_id as string;
      const enc = async (keyId: string) => kms(s, t, 'encrypt-data', { key_id: keyId, plain_text: 'x' });
      const hits = async () => Number(/^custos_kms_key_cache_hits_total (\d+)/m.exec((await s.api('GET', '/metrics')).text)?.[1] ?? NaN);
      const before = await hits();
      for (let i = 0; i < 3; i++) assert.equal((await enc(a)).status, 200);
      assert.ok((await hits()) >= before + 2, 'repeated use of a key is served from the cache');
      assert.equal((await kms(s, t, 'disable-key', { key_id: a })).status, 200);
      assert.equal((await enc(a)).status, 400, 'disabled at once');
      assert.equal((await kms(s, t, 'enable-key', { key_id: a })).status, 200);
      assert.equal((await enc(a)).status, 200);
      assert.equal((await kms(s, t, 'schedule-key-deletion', { key_id: a, pending_days: '7' })).status, 200);
      assert.equal((await enc(a)).status, 400, 'pending deletion at once');
      // A lookup by alias (as OBS and the vault make them) follows the alias when it moves.
      const scope = { accountId: t.accountId, projectId: t.projects[0]!.id, region: '' };
      const byAlias = async (alias: string) => (await s.custos.kms.findKey(scope, alias))?.id;
      for (let i = 0; i < 2; i++) assert.equal(await byAlias('invoices'), b);
      assert.equal((await kms(s, t, 'update-key-alias', { key_id: b, key_alias: 'invoices-old' })).status, 200);
      assert.equal(await byAlias('invoices'), undefined);
      assert.equal((await kms(s, t, 'update-key-alias', { key_id: a, key_alias: 'invoices' })).status, 200);
      assert.equal(await byAlias('invoices'), a);
      // Other nodes are told of changes only: a refused one leaves the shared epoch as it was, so no
      // tenant can empty every node's key cache by sending requests that fail.
      const epoch = async () => (await sql<{ value: string }>`select value from settings where name = 'kms.epoch'`.execute(s.custos.store.db)).rows[0]?.value;
      const epochBefore = await epoch();
      assert.equal((await kms(s, t, 'schedule-key-deletion', { key_id: b, pending_days: '3' })).status, 400);
      assert.equal((await kms(s, t, 'update-key-alias', { key_id: b, key_alias: 'invoices' })).status, 409);
      assert.equal(await epoch(), epochBefore, 'refusals do not move the epoch');
      assert.equal((await kms(s, t, 'disable-key', { key_id: b })).status, 200);
      assert.notEqual(await epoch(), epochBefore, 'a change does');
    } finally {
      await s.close();
    }
  });

  test('across nodes: a key disabled on one node is refused on the other within the poll interval', { skip: DB === 'sqlite' ? 'several nodes need PostgreSQL' : false }, () =>
    withTwoNodes(async (n1, n2) => {
      const t = await n1.createTenant();
      const id = (await kms(n1, t, 'create-key', { key_alias: 'shared' })).json.key_info.key_id as string;
      // Warm node 2's cache with the enabled row.
      for (let i = 0; i < 3; i++) assert.equal((await kms(n2, t, 'encrypt-data', { key_id: id, plain_text: 'x' })).status, 200);
      assert.equal((await kms(n1, t, 'disable-key', { key_id: id })).status, 200);
      await new Promise((r) => setTimeout(r, IAM_EPOCH_POLL_MS * 2 + 100));
      assert.equal((await kms(n2, t, 'encrypt-data', { key_id: id, plain_text: 'x' })).status, 400, 'the disable reached node 2');
      // Node 2 now holds the disabled row. Enabled on node 1, the key is not refused on node 2 even
      // before its next poll: a refusal is checked again against the database.
      assert.equal((await kms(n1, t, 'enable-key', { key_id: id })).status, 200);
      assert.equal((await kms(n2, t, 'encrypt-data', { key_id: id, plain_text: 'x' })).status, 200, 'the enable applies at once');
      // A write decides on the current row, not the cached one: disabling on node 2 a key that node 2
      // cached as disabled (node 1 enabled it meanwhile) really disables it.
      const cachedDisabled = await kms(n2, t, 'describe-key', { key_id: id });
      assert.equal(cachedDisabled.status, 200);
      assert.equal((await kms(n1, t, 'disable-key', { key_id: id })).status, 200);
      await new Promise((r) => setTimeout(r, IAM_EPOCH_POLL_MS * 2 + 100));
      assert.equal((await kms(n2, t, 'describe-key', { key_id: id })).json.key_info.key_state, '3', 'node 2 sees it disabled');
      assert.equal((await kms(n1, t, 'enable-key', { key_id: id })).status, 200);
      assert.equal((await kms(n2, t, 'disable-key', { key_id: id })).status, 200);
      assert.equal((await kms(n2, t, 'encrypt-data', { key_id: id, plain_text: 'x' })).status, 400, 'disabled for real');
      await new Promise((r) => setTimeout(r, IAM_EPOCH_POLL_MS * 2 + 100));
      assert.equal((await kms(n1, t, 'encrypt-data', { key_id: id, plain_text: 'x' })).status, 400, 'on node 1 too');
      // A rotation on node 1: its new ciphertexts decrypt on node 2 at once, though node 2 cached version 1.
      await kms(n1, t, 'enable-key', { key_id: id });
      await kms(n2, t, 'encrypt-data', { key_id: id, plain_text: 'x' });
      const row = await n1.custos.kms.getKey({ accountId: t.accountId, projectId: t.projects[0]!.id, region: '' }, id);
      assert.equal(await n1.custos.kms.rotate(row), true);
      const fresh = await kms(n1, t, 'encrypt-data', { key_id: id, plain_text: 'after rotation' });
      assert.equal(Buffer.from(fresh.json.cipher_text, 'base64').readUInt32BE(17), 2);
      const opened = await kms(n2, t, 'decrypt-data', { cipher_text: fresh.json.cipher_text });
      assert.equal(opened.status, 200, opened.text);
      assert.equal(opened.json.plain_text, 'after rotation');
    }));

  test('across nodes: the vault stops using a collection secret it holds once the collection\'s key is disabled elsewhere', { skip: DB === 'sqlite' ? 'several nodes need PostgreSQL' : false }, () =>
    withTwoNodes(async (n1, n2) => {
      const t = await n1.createTenant();
      const V = '/v1/vault/collections/people';
      const col = await n1.api('POST', '/v1/vault/collections', {
        token: t.token,
        body: { name: 'people', project_id: t.projects[0]!.id, access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write'] }], properties: [{ name: 'email', pii_type: 'email', purposes: ['support'], collection_method: 'form', deletion: { after: 'P1Y' } }] },
      });
      assert.equal(col.status, 201, col.text);
      const rec = await n1.api('POST', `${V}/records`, { token: t.token, body: { subject_id: 's1', fields: { email: 'ann@example.com' } } });
      assert.equal(rec.status, 201, rec.text);
      const read = (n: TestServer) => n.api('GET', `${V}/records/${rec.json.id}?reason=support`, { token: t.token });
      // Node 2 unwraps the collection secret and caches the key's row.
      for (let i = 0; i < 3; i++) assert.equal((await read(n2)).status, 200);
      assert.equal((await kms(n1, t, 'disable-key', { key_id: col.json.kms_key_id })).status, 200);
      assert.equal((await read(n1)).status, 409, 'refused at once on the node that disabled it');
      await new Promise((r) => setTimeout(r, IAM_EPOCH_POLL_MS * 2 + 100));
      const refused = await read(n2);
      assert.equal(refused.status, 409, refused.text);
      assert.equal(refused.json.error.code, 'KeyUnavailable');
      assert.equal((await n2.api('POST', `${V}/records`, { token: t.token, body: { subject_id: 's2', fields: { email: 'bo@example.com' } } })).status, 409, 'writes too');
      // Enabled on node 1: node 2 holds the disabled row, and its refusal is checked against the database.
      assert.equal((await kms(n1, t, 'enable-key', { key_id: col.json.kms_key_id })).status, 200);
      assert.equal((await read(n2)).status, 200, 'the enable applies at once');
    }));
});

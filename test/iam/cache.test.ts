// The IAM cache must never let a change go unseen: every writing method is declared, changes on the
// same node apply to the very next request, and changes on another node within the poll interval.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MUTATING_METHODS, NON_INVALIDATING_WRITES } from '../../src/iam/iam.js';
import { IAM_EPOCH_POLL_MS } from '../../src/server/index.js';
import { DB, PASSWORD, startTestServer, withTwoNodes } from '../helpers.js';

const SOURCE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../src/iam/iam.ts');

describe('IAM cache', () => {
  test('every IamService method that writes is declared as invalidating or harmless', () => {
    const src = readFileSync(SOURCE, 'utf8');
    const starts = [...src.matchAll(/^ {2}(?:private |static )?(?:async )?([a-zA-Z]+)\(/gm)];
    const writers: string[] = [];
    starts.forEach((m, i) => {
      const body = src.slice(m.index, starts[i + 1]?.index ?? src.length);
      if (/insertInto\(|updateTable\(|deleteFrom\(/.test(body) && m[1] !== 'constructor') writers.push(m[1]!);
    });
    const declared = new Set<string>([...MUTATING_METHODS, ...NON_INVALIDATING_WRITES]);
    assert.ok(writers.length > 20, `found ${writers.length} writing methods`);
    assert.deepEqual(writers.filter((w) => !declared.has(w)), [], 'undeclared writing methods');
  });

  test('on one node: a detached policy, a removed group member and a revoked token apply to the next request', async () => {
    const s = await startTestServer();
    try {
      const a = await s.createTenant();
      await s.api('POST', '/v3.0/OS-USER/users', { token: a.token, body: { user: { domain_id: a.accountId, name: 'bob', password: PASSWORD } } });
      const bob = (await s.api('GET', '/v3/users?name=bob', { token: a.token })).json.users[0].id;
      const g = (await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'readers' } } })).json.group.id;
      const role = (await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'list-users', policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:listUsers'] }] } } } })).json.role.id;
      await s.api('PUT', `/v3/domains/${a.accountId}/groups/${g}/roles/${role}`, { token: a.token });
      await s.api('PUT', `/v3/groups/${g}/users/${bob}`, { token: a.token });
      const tb = await s.token(a.name, 'bob', PASSWORD);
      for (let i = 0; i < 3; i++) assert.equal((await s.api('GET', '/v3/users', { token: tb })).status, 200);
      assert.equal((await s.api('DELETE', `/v3/domains/${a.accountId}/groups/${g}/roles/${role}`, { token: a.token })).status, 204);
      assert.equal((await s.api('GET', '/v3/users', { token: tb })).status, 403, 'detached at once');
      await s.api('PUT', `/v3/domains/${a.accountId}/groups/${g}/roles/${role}`, { token: a.token });
      assert.equal((await s.api('GET', '/v3/users', { token: tb })).status, 200);
      assert.equal((await s.api('DELETE', `/v3/groups/${g}/users/${bob}`, { token: a.token })).status, 204);
      assert.equal((await s.api('GET', '/v3/users', { token: tb })).status, 403, 'membership removed at once');
      assert.equal((await s.api('DELETE', '/v3/auth/tokens', { token: a.token, headers: { 'x-subject-token': tb } })).status, 204);
      assert.equal((await s.api('GET', '/v3/users', { token: tb })).status, 401, 'revoked at once');
    } finally {
      await s.close();
    }
  });

  test('across nodes: a revocation and a policy change on one node reach the other within the poll interval', { skip: DB === 'sqlite' ? 'several nodes need PostgreSQL' : false }, () =>
    withTwoNodes(async (n1, n2) => {
      const a = await n1.createTenant();
      const t2 = await n1.token(a.name, 'admin', PASSWORD);
      const role = (await n1.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'no-users', policy: { Version: '1.1', Statement: [{ Effect: 'Deny', Action: ['iam:users:listUsers'] }] } } } })).json.role.id;
      // Warm node 2's cache.
      for (let i = 0; i < 3; i++) assert.equal((await n2.api('GET', '/v3/users', { token: t2 })).status, 200);
      const adminGroup = (await n1.api('GET', '/v3/groups?name=admin', { token: a.token })).json.groups[0].id;
      assert.equal((await n1.api('PUT', `/v3/domains/${a.accountId}/groups/${adminGroup}/roles/${role}`, { token: a.token })).status, 204);
      await new Promise((r) => setTimeout(r, IAM_EPOCH_POLL_MS * 2 + 100));
      assert.equal((await n2.api('GET', '/v3/users', { token: t2 })).status, 403, 'the deny reached node 2');
      assert.equal((await n1.api('DELETE', '/v3/auth/tokens', { token: a.token, headers: { 'x-subject-token': t2 } })).status, 204);
      await new Promise((r) => setTimeout(r, IAM_EPOCH_POLL_MS * 2 + 100));
      assert.equal((await n2.api('GET', '/v3/groups', { token: t2 })).status, 401, 'the revocation reached node 2');
    }));
});

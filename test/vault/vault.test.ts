// The personal-data vault over real HTTP, on the database the suite runs on, with an injectable clock.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { verifyTrail } from '../../src/audit/chain.js';
import { loadExport } from '../../src/cli/audit.js';
import { PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const DAY = 86_400_000;

const PROPERTIES = [
  { name: 'email', pii_type: 'email', mandatory: true, searchable: true, purposes: ['service_delivery', 'support'], collection_method: 'entered by the user when registering', deletion: { on_event: 'account_deregistered', after: 'P30D' } },
  { name: 'phone', pii_type: 'phone_number', searchable: true, purposes: ['support'], collection_method: 'entered by the user', deletion: { after: 'P3Y', basis: 'contract' } },
  { name: 'ip', pii_type: 'ip_address', purposes: ['security'], collection_method: 'recorded by the web server', deletion: { after: 'P180D' } },
  { name: 'city', pii_type: 'province_city', purposes: ['service_delivery'], collection_method: 'entered with the delivery address', deletion: { on_event: 'delivered' } },
  { name: 'birth', pii_type: 'date_of_birth', modifiable: false, purposes: ['service_delivery'], collection_method: 'entered by the user', deletion: { on_event: 'account_deregistered' } },
  { name: 'full_name', pii_type: 'person_name', stable_tokens: true, purposes: ['support', 'service_delivery'], collection_method: 'entered by the user', deletion: { on_event: 'account_deregistered' } },
  { name: 'card', pii_type: 'bank_card', purposes: ['payment'], collection_method: 'entered at checkout', deletion: { on_event: 'delivered', after: 'P7D' } },
  { name: 'note', pii_type: 'free_text', purposes: ['support'], collection_method: 'written by support staff', deletion: { after: 'P1Y' } },
];

describe('personal-data vault', () => {
  let s: TestServer;
  let t: Tenant;
  let other: Tenant;
  let clock = Date.now();
  let agentToken: string;
  let roToken: string;
  let agentId: string;
  const V = '/v1/vault/collections';
  const api = (method: string, p: string, body?: unknown, token = t.token) => s.api(method, p, { token, ...(body !== undefined ? { body } : {}) });
  const createUser = async (name: string) => {
    const r = await api('POST', '/v3.0/OS-USER/users', { user: { domain_id: t.accountId, name, password: PASSWORD } });
    assert.equal(r.status, 201, r.text);
    return r.json.user.id as string;
  };
  const relogin = async () => {
    t.token = await s.token(t.name, 'admin', PASSWORD);
    other.token = await s.token(other.name, 'admin', PASSWORD);
    agentToken = await s.token(t.name, 'agent', PASSWORD);
    roToken = await s.token(t.name, 'ro', PASSWORD);
  };
  const put = async (fields: Record<string, unknown>, subject = 'user-1') => {
    const r = await api('POST', `${V}/customers/records`, { subject_id: subject, fields });
    assert.equal(r.status, 201, r.text);
    return r.json.id as string;
  };
  const get = (id: string, query: string, token = t.token) => api('GET', `${V}/customers/records/${id}?${query}`, undefined, token);
  const canary = `canary${randomBytes(6).toString('hex')}`;

  before(async () => {
    s = await startTestServer({ now: () => clock });
    t = await s.createTenant();
    other = await s.createTenant();
    agentId = await createUser('agent');
    const roId = await createUser('ro');
    // The agent reaches records as a member of the support group, which the whitelist names.
    const g = await api('POST', '/v3/groups', { group: { name: 'support', domain_id: t.accountId } });
    await api('PUT', `/v3/groups/${g.json.group.id}/users/${agentId}`);
    assert.equal((await api('PUT', `/v3/domains/${t.accountId}/groups/${g.json.group.id}/roles/system-vaultdatauser`)).status, 204);
    // A read-only IAM user: IAM allows every get/list, the whitelist does not name it.
    assert.equal((await api('PUT', `/v3/domains/${t.accountId}/users/${roId}/roles/system-readonly`)).status, 204);
    await relogin();
    (globalThis as { supportGroup?: string }).supportGroup = g.json.group.id;
  });
  after(async () => {
    await s?.close();
  });

  test('schemas are validated, with errors that name the property', async () => {
    const base = { name: 'bad', project_id: t.projects[0]!.id };
    const cases: [unknown, RegExp][] = [
      [{ ...base, properties: [PROPERTIES[0], PROPERTIES[0]] }, /declared twice/],
      [{ ...base, properties: [{ ...PROPERTIES[0], deletion: {} }] }, /deletion rule needs/],
      [{ ...base, properties: [{ ...PROPERTIES[0], default_transform: 'generalize' }] }, /email values cannot be generalized/],
      [{ ...base, properties: [{ ...PROPERTIES[0], pii_type: 'shoe_size' }] }, /invalid request/],
      [{ ...base, properties: [{ ...PROPERTIES[0], deletion: { after: '30 days' } }] }, /invalid request/],
      [{ ...base, properties: [{ ...PROPERTIES[7], searchable: true }] }, /free text cannot be searchable/],
      [{ ...base, properties: [{ ...PROPERTIES[0], purposes: [] }] }, /invalid request/],
      [{ ...base, properties: [{ ...PROPERTIES[0], name: 'constructor' }] }, /property name constructor is reserved/],
      [{ ...base, properties: [{ ...PROPERTIES[0], deletion: { after: 'P300000Y' } }] }, /at most 100 years/],
      [{ ...base, properties: [{ ...PROPERTIES[0], deletion: { after: 'PT99999999999999999999999999999S' } }] }, /at most 100 years/],
    ];
    for (const [body, msg] of cases) {
      const r = await api('POST', V, body);
      assert.equal(r.status, 400, r.text);
      assert.match(r.json.error.message, msg);
    }
    const noProject = await api('POST', V, { name: 'bad', properties: [PROPERTIES[0]] });
    assert.equal(noProject.status, 400);
    assert.equal(noProject.json.error.code, 'ProjectRequired');
  });

  test('a key named for a collection must be one its creator may use', async () => {
    const keyId = (await api('POST', `/v1.0/${t.projects[0]!.id}/kms/create-key`, { key_alias: 'hr-key' })).json.key_info.key_id as string;
    const adminId = await createUser('vault-admin-only');
    assert.equal((await api('PUT', `/v3/domains/${t.accountId}/users/${adminId}/roles/system-vaultadmin`)).status, 204);
    const token = await s.token(t.name, 'vault-admin-only', PASSWORD);
    const named = await api('POST', V, { name: 'hr', project_id: t.projects[0]!.id, kms_key_id: keyId, properties: [PROPERTIES[0]] }, token);
    assert.equal(named.status, 403, named.text);
    assert.equal(named.json.error.code, 'KeyAccessDenied');
    const byAlias = await api('POST', V, { name: 'hr', project_id: t.projects[0]!.id, kms_key_id: 'alias/hr-key', properties: [PROPERTIES[0]] }, token);
    assert.equal(byAlias.status, 403);
    // Without naming one, the vault's own default key; the account's administrator may name it.
    const own = await api('POST', V, { name: 'hr-default', project_id: t.projects[0]!.id, properties: [PROPERTIES[0]] }, token);
    assert.equal(own.status, 201, own.text);
    assert.notEqual(own.json.kms_key_id, keyId);
    const byAdmin = await api('POST', V, { name: 'hr', project_id: t.projects[0]!.id, kms_key_id: keyId, properties: [PROPERTIES[0]] });
    assert.equal(byAdmin.status, 201, byAdmin.text);
    assert.equal(byAdmin.json.kms_key_id, keyId);
    for (const c of ['hr', 'hr-default']) assert.equal((await api('DELETE', `${V}/${c}`)).status, 204);
  });

  test('create a collection; the default vault key is made in its project; only the whitelist reaches records', async () => {
    const r = await api('POST', V, { name: 'customers', description: 'shop customers', project_id: t.projects[0]!.id, properties: PROPERTIES });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.schema_version, 1);
    assert.equal(r.json.region, t.projects[0]!.name);
    assert.equal(r.json.properties.find((p: { name: string }) => p.name === 'email').default_transform, 'mask');
    const dup = await api('POST', V, { name: 'customers', project_id: t.projects[0]!.id, properties: PROPERTIES });
    assert.equal(dup.status, 409);

    // Default deny: not even the account administrator (FullAccess) reaches records before the whitelist names them.
    const denied = await api('POST', `${V}/customers/records`, { subject_id: 'u', fields: { email: 'a@example.com' } });
    assert.equal(denied.status, 404, denied.text);

    const unknown = await api('PUT', `${V}/customers/access`, { access: [{ type: 'user', id: 'nosuchuser', permissions: ['read'] }] });
    assert.equal(unknown.status, 400);
    const badUnmask = await api('PUT', `${V}/customers/access`, { access: [{ type: 'user', id: t.adminUserId, permissions: ['read'], unmask: ['shoe'] }] });
    assert.equal(badUnmask.status, 400);
    const set = await api('PUT', `${V}/customers/access`, {
      access: [
        { type: 'user', id: t.adminUserId, permissions: ['read', 'write', 'delete', 'search', 'detokenize'], unmask: ['*'] },
        { type: 'group', id: (globalThis as { supportGroup?: string }).supportGroup, permissions: ['read', 'search', 'detokenize'] },
      ],
    });
    assert.equal(set.status, 200, set.text);
    assert.equal(set.json.access.length, 2);
  });

  test('bad records get 4xx naming the property, never echoing the value', async () => {
    const secretish = `${canary}-not-a-phone`;
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ email: 'a@example.com', phone: secretish }, /property phone: not a valid phone number/],
      [{ email: 'not-an-email' }, /property email: not a valid email/],
      [{ email: 'a@example.com', shoe: 42 }, /property shoe is not in the collection's schema/],
      [{ email: 'a@example.com', birth: 19900101 }, /property birth: must be string/],
      [{ email: 'a@example.com', birth: '1990-02-30' }, /property birth: not a valid date of birth/],
      [{ email: 'a@example.com', note: 'x'.repeat(5000) }, /property note: longer than 4096/],
      [{ phone: '+8613812345678' }, /property email is mandatory/],
      [{ email: 'a@example.com', card: '4111111111111112' }, /property card: not a valid bank card/],
      [{ email: 'a@example.com', ip: '300.1.1.1' }, /property ip: not a valid ip address/],
    ];
    for (const [fields, msg] of cases) {
      const r = await api('POST', `${V}/customers/records`, { subject_id: 'user-1', fields });
      assert.equal(r.status, 400, r.text);
      assert.match(r.json.error.message, msg);
      assert.ok(!r.text.includes(canary), 'the error echoes the value');
    }
    const badSubject = await api('POST', `${V}/customers/records`, { subject_id: 'has space', fields: { email: 'a@example.com' } });
    assert.equal(badSubject.status, 400);
  });

  let rec1: string;
  let rec2: string;
  test('reads state a purpose and come back masked unless unmasked; each transformation', async () => {
    rec1 = await put({ email: 'Jane.Doe@Example.COM', phone: '+86 138 1234 5678', ip: '10.1.2.3', city: 'Guangdong/Shenzhen', birth: '1990-05-17', full_name: 'Jane Doe', card: '4111 1111 1111 1111', note: 'called about an order' });
    rec2 = await put({ email: 'bob@example.org', full_name: 'Jane Doe', ip: '2001:db8:85a3::8a2e:370:7334' }, 'user-2');

    const support = await get(rec1, 'reason=support');
    assert.equal(support.status, 200, support.text);
    assert.deepEqual(Object.keys(support.json.fields).sort(), ['email', 'full_name', 'note', 'phone']);
    assert.equal(support.json.fields.email, 'J***@example.com');
    assert.equal(support.json.fields.phone, '+86 138****5678');
    assert.equal(support.json.fields.full_name, 'J*** D**');
    assert.equal(support.json.fields.note, '***');
    assert.equal(support.json.transforms.email, 'mask');

    const delivery = await get(rec1, 'reason=service_delivery&props=city,birth');
    assert.deepEqual(delivery.json.fields, { city: 'Guangdong/********', birth: '****-**-**' });

    const plain = await get(rec1, 'reason=support&unmask=email,phone');
    assert.equal(plain.json.fields.email, 'Jane.Doe@example.com', 'the domain is stored lower-cased');
    assert.equal(plain.json.fields.phone, '+8613812345678', 'phone numbers are stored in E.164');
    assert.equal(plain.json.fields.full_name, 'J*** D**', 'what is not unmasked stays masked');

    const security = await get(rec1, 'reason=security&transform=ip:generalize');
    assert.equal(security.json.fields.ip, '10.1.2.0/24');
    const v6 = await get(rec2, 'reason=security&transform=ip:generalize');
    assert.equal(v6.json.fields.ip, '2001:db8:85a3::/48');
    const v6masked = await get(rec2, 'reason=security');
    assert.equal(v6masked.json.fields.ip, '2001:db8:85a3:*:*:*:*:*');
    const masked4 = await get(rec1, 'reason=security');
    assert.equal(masked4.json.fields.ip, '10.1.*.*');
    const gen = await get(rec1, 'reason=service_delivery&props=city,birth&transform=city:generalize,birth:generalize');
    assert.deepEqual(gen.json.fields, { city: 'Guangdong', birth: '1990' });
    const part = await get(rec1, 'reason=payment&transform=card:partial');
    assert.equal(part.json.fields.card, '4111********1111');
    const cardMask = await get(rec1, 'reason=payment');
    assert.equal(cardMask.json.fields.card, '************1111');
    const red = await get(rec1, 'reason=support&props=email&transform=email:redact');
    assert.equal(red.json.fields.email, '[REDACTED]');

    // A keyed hash: the same value gives the same hash in this collection, and it is not a plain SHA-256.
    const h1 = await get(rec1, 'reason=support&props=full_name&transform=full_name:hash');
    const h2 = await get(rec2, 'reason=support&props=full_name&transform=full_name:hash');
    assert.match(h1.json.fields.full_name, /^hmac:[0-9a-f]{32}$/);
    assert.equal(h1.json.fields.full_name, h2.json.fields.full_name);

    // Purpose checks.
    const marketing = await get(rec1, 'reason=marketing');
    assert.equal(marketing.status, 403);
    assert.equal(marketing.json.error.code, 'PurposeNotAllowed');
    const wrongProp = await get(rec1, 'reason=support&props=ip');
    assert.equal(wrongProp.status, 403);
    assert.match(wrongProp.json.error.message, /property ip is not collected for the purpose support/);
    const noReason = await s.api('GET', `${V}/customers/records/${rec1}`, { token: t.token });
    assert.equal(noReason.status, 400);
    const badGen = await get(rec1, 'reason=support&transform=email:generalize');
    assert.equal(badGen.status, 400);
  });

  test('the whitelist beats an IAM allow; unmask and permissions come from the whitelist', async () => {
    // ReadOnlyAccess allows vault:records:get in IAM, but the whitelist does not name the user: 404.
    const ro = await get(rec1, 'reason=support', roToken);
    assert.equal(ro.status, 404, ro.text);
    const roSearch = await api('POST', `${V}/customers/search`, { reason: 'support', match: { email: 'bob@example.org' } }, roToken);
    assert.equal(roSearch.status, 404);
    // The collection's schema is management data: visible to IAM readers.
    assert.equal((await api('GET', `${V}/customers`, undefined, roToken)).status, 200);

    // The agent (via its group) reads masked, may not unmask, may not write.
    const agent = await get(rec1, 'reason=support', agentToken);
    assert.equal(agent.status, 200, agent.text);
    assert.equal(agent.json.fields.email, 'J***@example.com');
    const unmask = await get(rec1, 'reason=support&unmask=email', agentToken);
    assert.equal(unmask.status, 403);
    assert.equal(unmask.json.error.code, 'UnmaskNotAllowed');
    const write = await api('POST', `${V}/customers/records`, { subject_id: 'x', fields: { email: 'x@example.com' } }, agentToken);
    assert.equal(write.status, 403);
    assert.equal(write.json.error.code, 'NotWhitelisted');
  });

  test('a search with more matches than its limit returns the lowest record ids, in order, by one property or two', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await api('POST', `${V}/customers/records`, { subject_id: `twin-${i}`, fields: { email: 'twin@example.net', phone: '+8613811112222' } });
      assert.equal(r.status, 201, r.text);
      ids.push(r.json.id);
    }
    const sorted = [...ids].sort();
    try {
      for (const match of [{ email: 'twin@example.net' }, { email: 'twin@example.net', phone: '+8613811112222' }]) {
        const all = await api('POST', `${V}/customers/search`, { reason: 'support', match });
        assert.deepEqual(all.json.records.map((r: { id: string }) => r.id), sorted);
        const two = await api('POST', `${V}/customers/search`, { reason: 'support', match, limit: 2 });
        assert.equal(two.status, 200, two.text);
        assert.deepEqual(two.json.records.map((r: { id: string }) => r.id), sorted.slice(0, 2));
        assert.equal(two.json.records[0].fields.email, 't***@example.net');
      }
    } finally {
      for (const id of ids) assert.equal((await api('DELETE', `${V}/customers/records/${id}`)).status, 204);
    }
  });

  test('search goes through the blind index: exact match on canonical values', async () => {
    const byEmail = await api('POST', `${V}/customers/search`, { reason: 'support', match: { email: 'jane.doe@EXAMPLE.com' } });
    assert.equal(byEmail.status, 200, byEmail.text);
    assert.deepEqual(byEmail.json.records.map((r: { id: string }) => r.id), [rec1]);
    const byPhone = await api('POST', `${V}/customers/search`, { reason: 'support', match: { phone: '+8613812345678' } }, agentToken);
    assert.deepEqual(byPhone.json.records.map((r: { id: string }) => r.id), [rec1]);
    assert.equal(byPhone.json.records[0].fields.phone, '+86 138****5678');
    const both = await api('POST', `${V}/customers/search`, { reason: 'support', match: { phone: '+8613812345678', email: 'bob@example.org' } });
    assert.deepEqual(both.json.records, []);
    const none = await api('POST', `${V}/customers/search`, { reason: 'support', match: { email: 'nobody@example.com' } });
    assert.deepEqual(none.json.records, []);
    const notSearchable = await api('POST', `${V}/customers/search`, { reason: 'support', match: { full_name: 'Jane Doe' } });
    assert.equal(notSearchable.status, 400);
    assert.equal(notSearchable.json.error.code, 'NotSearchable');
    const purpose = await api('POST', `${V}/customers/search`, { reason: 'security', match: { email: 'bob@example.org' } });
    assert.equal(purpose.status, 403);
    // The index holds keyed digests only: neither the value nor its plain SHA-256 is in it.
    const rows = await sql<{ digest: string }>`select digest from vault_index`.execute(s.custos.store.db);
    assert.ok(rows.rows.length >= 3);
    const { createHash } = await import('node:crypto');
    const plainHash = createHash('sha256').update('bob@example.org').digest('hex');
    assert.ok(rows.rows.every((r) => !plainHash.startsWith(r.digest) && !r.digest.includes('@')));
  });

  test("a property's default transformation is a ceiling for callers who may not unmask it", async () => {
    // The agent (no unmask) may ask for less than the default (mask), not for more.
    const less = await get(rec1, 'reason=support&props=full_name,note&transform=full_name:hash,note:redact', agentToken);
    assert.equal(less.status, 200, less.text);
    assert.match(less.json.fields.full_name, /^hmac:/);
    assert.equal(less.json.fields.note, '[REDACTED]');
    const more = await get(rec1, 'reason=support&props=note&transform=note:partial', agentToken);
    assert.equal(more.status, 403, more.text);
    assert.equal(more.json.error.code, 'TransformNotAllowed');
    assert.match(more.json.error.message, /property note: partial shows more of the value than its default \(mask\)/);
    // A property whose default is redact: nothing of it for the agent, by any transformation or by detokenizing.
    const hr = await api('POST', V, {
      name: 'hr', project_id: t.projects[0]!.id,
      properties: [
        { name: 'tax_id', pii_type: 'national_id', default_transform: 'redact', searchable: true, purposes: ['payroll'], collection_method: 'entered by HR', deletion: { after: 'P10Y' } },
        { name: 'work_email', pii_type: 'email', default_transform: 'tokenize', searchable: true, purposes: ['payroll'], collection_method: 'entered by HR', deletion: { after: 'P10Y' } },
        { name: 'work_phone', pii_type: 'phone_number', searchable: true, purposes: ['payroll'], collection_method: 'entered by HR', deletion: { after: 'P10Y' } },
        { name: 'born', pii_type: 'date_of_birth', searchable: true, purposes: ['payroll'], collection_method: 'entered by HR', deletion: { after: 'P10Y' } },
      ],
    });
    assert.equal(hr.status, 201, hr.text);
    const access = await api('PUT', `${V}/hr/access`, {
      access: [
        { type: 'user', id: t.adminUserId, permissions: ['read', 'write', 'detokenize', 'search'], unmask: ['*'] },
        { type: 'group', id: (globalThis as { supportGroup?: string }).supportGroup, permissions: ['read', 'detokenize', 'search'] },
      ],
    });
    assert.equal(access.status, 200, access.text);
    const taxId = '11010519491231002X';
    const created = await api('POST', `${V}/hr/records`, { subject_id: 'emp-1', fields: { tax_id: taxId, work_email: 'pat@example.com', work_phone: '+8613912345678', born: '1990-04-01' } });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id as string;
    const hrGet = (query: string, token: string) => api('GET', `${V}/hr/records/${id}?reason=payroll${query}`, undefined, token);
    assert.equal((await hrGet('', agentToken)).json.fields.tax_id, '[REDACTED]');
    for (const t2 of ['mask', 'partial', 'generalize', 'tokenize', 'hash']) {
      const r = await hrGet(`&transform=tax_id:${t2}`, agentToken);
      assert.equal(r.status, t2 === 'generalize' ? 400 : 403, `${t2}: ${r.text}`);
      assert.ok(!r.text.includes(taxId.slice(-6)), 'no part of the value in the error');
    }
    // The administrator may unmask, so any transformation; a token it hands out detokenizes to nothing for the agent.
    const partial = await hrGet('&transform=tax_id:partial', t.token);
    assert.equal(partial.json.fields.tax_id, '1101**********002X');
    const token = (await hrGet('&transform=tax_id:tokenize', t.token)).json.fields.tax_id as string;
    const agentDetok = await api('POST', `${V}/hr/detokenize`, { reason: 'payroll', tokens: [token] }, agentToken);
    assert.equal(agentDetok.status, 200, agentDetok.text);
    assert.equal(agentDetok.json.values[0].value, '[REDACTED]');
    const adminDetok = await api('POST', `${V}/hr/detokenize`, { reason: 'payroll', tokens: [token] });
    assert.equal(adminDetok.json.values[0].value, taxId);
    // A tokenize default: the agent sees the token and, detokenizing it, still only the token, never a mask.
    const emailToken = (await hrGet('', agentToken)).json.fields.work_email as string;
    assert.match(emailToken, /^tok_/);
    const detokEmail = await api('POST', `${V}/hr/detokenize`, { reason: 'payroll', tokens: [emailToken] }, agentToken);
    assert.equal(detokEmail.json.values[0].value, emailToken);
    assert.equal((await hrGet('&transform=work_email:mask', agentToken)).status, 403);
    // Nor may the agent confirm a guess by searching: a match shows more than a redacted or tokenized
    // default. A masked property (the default) is searchable by it; the administrator searches any.
    // A masked date of birth (****-**-**) shows nothing either.
    for (const match of [{ tax_id: taxId }, { work_email: 'pat@example.com' }, { work_phone: '+8613912345678', tax_id: taxId }, { born: '1990-04-01' }]) {
      const guess = await api('POST', `${V}/hr/search`, { reason: 'payroll', match }, agentToken);
      assert.equal(guess.status, 403, guess.text);
      assert.equal(guess.json.error.code, 'SearchNotAllowed');
      assert.ok(!guess.text.includes(taxId.slice(-6)) && !guess.text.includes('pat@') && !guess.text.includes('1990'), 'no part of the value in the error');
    }
    const byPhone = await api('POST', `${V}/hr/search`, { reason: 'payroll', match: { work_phone: '+8613912345678' } }, agentToken);
    assert.equal(byPhone.status, 200, byPhone.text);
    assert.deepEqual(byPhone.json.records.map((r: { id: string }) => r.id), [id]);
    assert.equal(byPhone.json.records[0].fields.tax_id, '[REDACTED]');
    const adminSearch = await api('POST', `${V}/hr/search`, { reason: 'payroll', match: { tax_id: taxId } });
    assert.deepEqual(adminSearch.json.records.map((r: { id: string }) => r.id), [id]);
    assert.equal((await api('DELETE', `${V}/hr?force=true`)).status, 204);
  });

  test('tokenize and detokenize; stable tokens for equal values', async () => {
    const a = await get(rec1, 'reason=support&props=full_name,email&transform=full_name:tokenize,email:tokenize');
    const b = await get(rec2, 'reason=support&props=full_name,email&transform=full_name:tokenize,email:tokenize');
    assert.match(a.json.fields.full_name, /^tok_/);
    assert.equal(a.json.fields.full_name, b.json.fields.full_name, 'full_name asks for stable tokens');
    assert.notEqual(a.json.fields.email, b.json.fields.email);
    const again = await get(rec1, 'reason=support&props=email&transform=email:tokenize');
    assert.equal(again.json.fields.email, a.json.fields.email, 'a record keeps its token');

    const admin = await api('POST', `${V}/customers/detokenize`, { reason: 'support', tokens: [a.json.fields.email, 'tok_doesnotexistdoesnotexist'] });
    assert.equal(admin.status, 200, admin.text);
    assert.equal(admin.json.values[0].value, 'Jane.Doe@example.com');
    assert.equal(admin.json.values[0].record_id, rec1);
    assert.equal(admin.json.values[1].value, null);
    const agent = await api('POST', `${V}/customers/detokenize`, { reason: 'support', tokens: [a.json.fields.email] }, agentToken);
    assert.equal(agent.json.values[0].value, 'J***@example.com', 'without unmask, a detokenized value is masked');
    const ro = await api('POST', `${V}/customers/detokenize`, { reason: 'support', tokens: [a.json.fields.email] }, roToken);
    assert.equal(ro.status, 404);
    const purpose = await api('POST', `${V}/customers/detokenize`, { reason: 'payment', tokens: [a.json.fields.email] });
    assert.equal(purpose.status, 403);
  });

  test('an agency on the whitelist: a user of another account reaches records only through it', async () => {
    const ag = await api('POST', '/v3.0/OS-AGENCY/agencies', { agency: { name: 'dpo-from-other', domain_id: t.accountId, trust_domain_name: other.name, duration: 'FOREVER' } });
    assert.equal(ag.status, 201, ag.text);
    const agencyId = ag.json.agency.id as string;
    assert.equal((await api('PUT', `/v3.0/OS-AGENCY/domains/${t.accountId}/agencies/${agencyId}/roles/system-vaultdatauser`)).status, 204);
    const assumed = await s.api('POST', '/v3/auth/tokens', { token: other.token, body: { auth: { identity: { methods: ['assume_role'], assume_role: { domain_name: t.name, agency_name: 'dpo-from-other', duration_seconds: 3600 } } } } });
    assert.equal(assumed.status, 201, assumed.text);
    const viaAgency = assumed.headers.get('x-subject-token')!;
    assert.equal((await get(rec1, 'reason=support', viaAgency)).status, 404, 'not on the whitelist yet');
    const current = (await api('GET', `${V}/customers/access`)).json.access;
    assert.equal((await api('PUT', `${V}/customers/access`, { access: [...current, { type: 'agency', id: agencyId, permissions: ['read'] }] })).status, 200);
    const r = await get(rec1, 'reason=support', viaAgency);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.fields.email, 'J***@example.com');
    assert.equal((await get(rec1, 'reason=support&unmask=email', viaAgency)).status, 403);
    // The same person with their own account's token is another tenant: 404.
    assert.equal((await get(rec1, 'reason=support', other.token)).status, 404);
    assert.equal((await api('PUT', `${V}/customers/access`, { access: current })).status, 200);
    assert.equal((await get(rec1, 'reason=support', viaAgency)).status, 404, 'off the whitelist again');
  });

  test('rectification respects modifiable and re-indexes', async () => {
    const fixed = await api('PATCH', `${V}/customers/records/${rec2}`, { fields: { email: 'robert@example.org' } });
    assert.equal(fixed.status, 200, fixed.text);
    const oldHit = await api('POST', `${V}/customers/search`, { reason: 'support', match: { email: 'bob@example.org' } });
    assert.deepEqual(oldHit.json.records, []);
    const newHit = await api('POST', `${V}/customers/search`, { reason: 'support', match: { email: 'robert@example.org' } });
    assert.deepEqual(newHit.json.records.map((r: { id: string }) => r.id), [rec2]);
    const birth = await api('PATCH', `${V}/customers/records/${rec1}`, { fields: { birth: '1991-01-01' } });
    assert.equal(birth.status, 403);
    assert.equal(birth.json.error.code, 'PropertyNotModifiable');
    const clearMandatory = await api('PATCH', `${V}/customers/records/${rec1}`, { fields: { email: null } });
    assert.equal(clearMandatory.status, 400);
    const clearOptional = await api('PATCH', `${V}/customers/records/${rec2}`, { fields: { full_name: null } });
    assert.equal(clearOptional.status, 200);
    assert.equal((await get(rec2, 'reason=support&props=full_name')).json.fields.full_name, null);
  });

  test('every read, write and search is traced with names and purpose, never values', async () => {
    const r = await get(rec1, 'reason=support&unmask=email', t.token);
    const reqId = r.headers.get('x-request-id')!;
    const row = (await sql<{ detail_json: string; trace_type: string; correlation_json: string }>`select detail_json, trace_type, correlation_json from audit_traces where request_id = ${reqId}`.execute(s.custos.store.db)).rows[0]!;
    assert.equal(row.trace_type, 'data');
    const detail = JSON.parse(row.detail_json);
    assert.equal(detail.collection, 'customers');
    assert.equal(detail.records, rec1);
    assert.equal(detail.purpose, 'support');
    assert.deepEqual(detail.properties.split(',').sort(), ['email', 'full_name', 'note', 'phone']);
    assert.match(detail.transforms, /email:plain/);
    assert.match(JSON.parse(row.correlation_json).subject, /^hmac-sha256:/);
    // The trace is visible through CTS with the detail.
    const cts = await api('GET', `/v3/${t.projects[0]!.id}/traces?trace_type=data&limit=200`);
    assert.equal(cts.status, 200, cts.text);
    const mine = cts.json.traces.find((x: { request_id: string }) => x.request_id === reqId);
    assert.equal(mine?.detail?.purpose, 'support');
    // The detail is covered by the chain: an export of the trail verifies offline, and editing a detail is caught.
    const dir = mkdtempSync(path.join(tmpdir(), 'custos-vault-audit-'));
    try {
      await s.custos.audit.writeDueDigests({ force: true });
      await s.custos.audit.exportTo(dir, { trails: [t.accountId] });
      const exported = await loadExport(dir);
      assert.ok(exported.traces.some((x) => 'detail' in x && x.detail?.purpose === 'support'));
      const ok = verifyTrail(exported.traces, exported.digests, exported.keys).trails[0]!;
      assert.equal(ok.first_trace_problem, null);
      assert.equal(ok.first_digest_problem, null);
      const edited = exported.traces.map((x) => ('detail' in x && x.detail?.purpose === 'support' ? { ...x, detail: { ...x.detail, purpose: 'marketing' } } : x));
      assert.notEqual(verifyTrail(edited, exported.digests, exported.keys).trails[0]!.first_trace_problem, null);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // No value of any record in any trace or in the log.
    const all = (await sql<{ t: string }>`select coalesce(detail_json, '') || coalesce(resource_name, '') || coalesce(correlation_json, '') as t from audit_traces`.execute(s.custos.store.db)).rows.map((x) => x.t).join('\n');
    // The card number whole, spaced as sent, and its masked form ('4111' alone turns up by chance in a
    // port number, a timestamp or a request id of the log).
    for (const v of ['Jane.Doe@example.com', 'jane.doe', '13812345678', '10.1.2.3', 'Shenzhen', '1990-05-17', 'Jane Doe', '4111111111111111', '4111 1111 1111 1111', '4111********1111', 'robert@example.org', 'user-1']) {
      assert.ok(!all.includes(v), `a trace holds ${v}`);
      assert.ok(!s.logs().includes(v), `the log holds ${v}`);
    }
  });

  test('schema changes are versioned and checked against the stored data', async () => {
    const props = PROPERTIES.map((p) => ({ ...p }));
    const mandatoryPhone = props.map((p) => (p.name === 'phone' ? { ...p, mandatory: true } : p));
    const r1 = await api('PUT', `${V}/customers`, { properties: mandatoryPhone });
    assert.equal(r1.status, 409, r1.text);
    assert.match(r1.json.error.message, /property phone became mandatory but has no value \(1 record\)/);

    const withoutNote = props.filter((p) => p.name !== 'note');
    const r2 = await api('PUT', `${V}/customers`, { properties: withoutNote });
    assert.equal(r2.status, 409);
    assert.match(r2.json.error.message, /property note was removed but has values/);

    // full_name becomes searchable (indexed from the stored values), phone stops being searchable.
    const next = props.map((p) => (p.name === 'full_name' ? { ...p, searchable: true } : p.name === 'phone' ? { ...p, searchable: false } : p));
    const r3 = await api('PUT', `${V}/customers`, { properties: next });
    assert.equal(r3.status, 200, r3.text);
    assert.equal(r3.json.schema_version, 2);
    const byName = await api('POST', `${V}/customers/search`, { reason: 'support', match: { full_name: 'Jane Doe' } });
    assert.deepEqual(byName.json.records.map((r: { id: string }) => r.id), [rec1]);
    const byPhone = await api('POST', `${V}/customers/search`, { reason: 'support', match: { phone: '+8613812345678' } });
    assert.equal(byPhone.status, 400);

    // Retyping a property is refused when a stored value does not fit.
    const retyped = next.map((p) => (p.name === 'note' ? { ...p, pii_type: 'email' } : p));
    const r4 = await api('PUT', `${V}/customers`, { properties: retyped });
    assert.equal(r4.status, 409);
    assert.match(r4.json.error.message, /property note: a stored value does not fit/);

    const r5 = await api('PUT', `${V}/customers?drop_removed_values=true`, { properties: next.filter((p) => p.name !== 'note') });
    assert.equal(r5.status, 200, r5.text);
    const versions = await api('GET', `${V}/customers/versions`);
    assert.deepEqual(versions.json.versions.map((v: { version: number }) => v.version), [1, 2, 3]);
    assert.ok(versions.json.versions[0].properties.some((p: { name: string }) => p.name === 'note'));
    const read = await get(rec1, 'reason=support&unmask=*');
    assert.ok(!('note' in read.json.fields));
    // Restore the schema the later tests expect (note is gone for good; its values were dropped).
    const r6 = await api('PUT', `${V}/customers`, { properties: props.filter((p) => p.name !== 'note') });
    assert.equal(r6.status, 200, r6.text);
  });

  test('the inventory lists every property as a privacy notice needs it', async () => {
    const j = await api('GET', '/v1/vault/inventory');
    assert.equal(j.status, 200, j.text);
    const email = j.json.inventory.find((r: { data: string }) => r.data === 'email');
    assert.equal(email.how_collected, 'entered by the user when registering');
    assert.equal(email.when_deleted, '30 days after account deregistered');
    assert.deepEqual(email.purposes, ['service_delivery', 'support']);
    assert.equal(email.mandatory, true);
    assert.equal(email.region, t.projects[0]!.name);
    assert.equal(email.kms_key_alias, 'vault/default');
    const phone = j.json.inventory.find((r: { data: string }) => r.data === 'phone');
    assert.equal(phone.when_deleted, '3 years after collection (contract)');
    const csv = await api('GET', '/v1/vault/inventory?format=csv');
    assert.match(csv.headers.get('content-type')!, /text\/csv/);
    assert.match(csv.text.split('\n')[0]!, /^Collection,Data,How collected,Modifiable,Mandatory,When deleted,Purpose,Region,Key/);
    assert.match(csv.text, /customers,email,entered by the user when registering,Yes,Yes,30 days after account deregistered,"service_delivery, support"/);
    const md = await api('GET', '/v1/vault/inventory?format=markdown');
    assert.match(md.text, /^\| Collection \| Data \| How collected \| Modifiable \| Mandatory \| When deleted \| Purpose \| Region \| Key \|\n\| --- /);
    assert.match(md.text, /\| customers \| birth \| entered by the user \| No \| No \| when account deregistered \|/);
    const otherInv = await api('GET', '/v1/vault/inventory', undefined, other.token);
    assert.deepEqual(otherInv.json.inventory, []);
  });

  test('another tenant learns nothing: every route answers 404 or an empty list', async () => {
    const o = other.token;
    assert.equal((await api('GET', `${V}/customers`, undefined, o)).status, 404);
    assert.equal((await api('GET', `${V}/customers/versions`, undefined, o)).status, 404);
    assert.equal((await api('GET', `${V}/customers/access`, undefined, o)).status, 404);
    assert.equal((await api('PUT', `${V}/customers/access`, { access: [] }, o)).status, 404);
    assert.equal((await api('PUT', `${V}/customers`, { properties: PROPERTIES }, o)).status, 404);
    assert.equal((await api('DELETE', `${V}/customers?force=true`, undefined, o)).status, 404);
    assert.equal((await get(rec1, 'reason=support', o)).status, 404);
    assert.equal((await api('GET', `${V}/customers/records?subject_id=user-1&reason=support`, undefined, o)).status, 404);
    assert.equal((await api('PATCH', `${V}/customers/records/${rec1}`, { fields: { email: 'x@example.com' } }, o)).status, 404);
    assert.equal((await api('DELETE', `${V}/customers/records/${rec1}`, undefined, o)).status, 404);
    assert.equal((await api('POST', `${V}/customers/search`, { reason: 'support', match: { email: 'robert@example.org' } }, o)).status, 404);
    assert.equal((await api('POST', `${V}/customers/detokenize`, { reason: 'support', tokens: ['tok_aaaaaaaaaaaaaaaaaaaa'] }, o)).status, 404);
    assert.equal((await api('POST', `${V}/customers/records`, { subject_id: 'x', fields: { email: 'x@example.com' } }, o)).status, 404);
    assert.deepEqual((await api('GET', V, undefined, o)).json.collections, []);
    // An event for the same subject id in the other account touches nothing here.
    const ev = await api('POST', '/v1/vault/subjects/user-1/events', { event: 'delivered' }, o);
    assert.deepEqual(ev.json, { scheduled: 0, deleted_values: 0, deleted_records: 0 });
    assert.equal((await get(rec1, 'reason=service_delivery&props=city')).json.fields.city, 'Guangdong/********');
    // The same collection name in the other account is its own collection.
    const mine = await api('POST', V, { name: 'customers', project_id: other.projects[0]!.id, properties: PROPERTIES }, o);
    assert.equal(mine.status, 201, mine.text);
  });

  test('retention: values go when their rule fires, by time and by event; the record and its key go last', async () => {
    const list = async (subject: string) => (await api('GET', `${V}/customers/records?subject_id=${subject}&reason=service_delivery&unmask=*`)).json.records;
    // A leap second passes the date-time format but names no instant this server can hold: 400, and
    // nothing is scheduled or deleted by it (the real event below does its full work).
    const leap = await api('POST', '/v1/vault/subjects/user-1/events', { event: 'delivered', occurred_at: '2016-12-31T23:59:60Z' });
    assert.equal(leap.status, 400, leap.text);
    assert.match(leap.text, /occurred_at/);
    // By event: delivered removes the city at once and schedules the card seven days later.
    const ev = await api('POST', '/v1/vault/subjects/user-1/events', { event: 'delivered' });
    assert.equal(ev.status, 200, ev.text);
    assert.deepEqual(ev.json, { scheduled: 2, deleted_values: 1, deleted_records: 0 });
    assert.equal((await list('user-1'))[0].fields.city, null);
    assert.equal((await get(rec1, 'reason=payment&unmask=card')).json.fields.card, '4111111111111111');
    const events = await api('GET', '/v1/vault/subjects/user-1/events');
    assert.deepEqual(events.json.events.map((e: { event: string }) => e.event), ['delivered']);
    // Written after the event, values keep the deletion it scheduled: a corrected card is still due
    // seven days after delivery, and a city given now is due at once.
    assert.equal((await api('PATCH', `${V}/customers/records/${rec1}`, { fields: { card: '5500 0000 0000 0004' } })).status, 200);
    const late = await api('POST', `${V}/customers/records`, { subject_id: 'user-1', fields: { email: 'late@example.com', city: 'Zhejiang/Hangzhou', card: '4000 0000 0000 0002' } });
    assert.equal(late.status, 201, late.text);

    // By time: eight days later the card is due; the retention job (one runner, a lease) removes it.
    clock += 8 * DAY;
    await relogin();
    const run = await s.custos.vault.runRetention();
    assert.ok(run && run.values >= 1, JSON.stringify(run));
    assert.equal((await get(rec1, 'reason=payment&unmask=card')).json.fields.card, null);
    assert.equal((await get(late.json.id, 'reason=payment&unmask=card')).json.fields.card, null, 'the card written after delivery went too');
    assert.equal((await get(late.json.id, 'reason=service_delivery&unmask=city')).json.fields.city, null, 'and its city');
    assert.equal((await api('DELETE', `${V}/customers/records/${late.json.id}`)).status, 204);
    // 181 days after collection the IP addresses go (rule P180D).
    clock += 175 * DAY;
    await relogin();
    await s.custos.vault.runRetention();
    assert.equal((await get(rec1, 'reason=security&unmask=ip')).json.fields.ip, null);
    assert.equal((await get(rec2, 'reason=security&unmask=ip')).json.fields.ip, null);
    const stored = (await sql<{ values_json: string }>`select values_json from vault_records where id = ${rec1}`.execute(s.custos.store.db)).rows[0]!;
    assert.deepEqual(Object.keys(JSON.parse(stored.values_json)).sort(), ['birth', 'email', 'full_name', 'phone']);

    // Deregistration: birth and full_name at once, email 30 days later; phone stays (3 years).
    const dereg = await api('POST', '/v1/vault/subjects/user-1/events', { event: 'account_deregistered' });
    assert.deepEqual(dereg.json, { scheduled: 3, deleted_values: 2, deleted_records: 0 });
    clock += 31 * DAY;
    await relogin();
    await s.custos.vault.runRetention();
    const left = (await list('user-1'))[0];
    assert.deepEqual(Object.entries(left.fields).filter(([, v]) => v !== null), [], 'nothing collected for service delivery is left');
    const afterEmail = await get(rec1, 'reason=support&unmask=*');
    assert.equal(afterEmail.json.fields.email, null);
    assert.equal(afterEmail.json.fields.phone, '+8613812345678');
    const idx = (await sql<{ property: string }>`select property from vault_index where record_id = ${rec1}`.execute(s.custos.store.db)).rows.map((r) => r.property);
    assert.ok(!idx.includes('email'), 'the value\'s blind index went with it');

    // Three years after collection the phone goes too: nothing is left, so the record and its data key go.
    clock += 3 * 365 * DAY;
    await relogin();
    await s.custos.vault.runRetention();
    assert.equal((await get(rec1, 'reason=support')).status, 404);
    const gone = (await sql<{ n: number }>`select count(*) as n from vault_records where id = ${rec1}`.execute(s.custos.store.db)).rows[0]!;
    assert.equal(Number(gone.n), 0);
    const tokens = (await sql<{ n: number }>`select count(*) as n from vault_tokens where record_id = ${rec1}`.execute(s.custos.store.db)).rows[0]!;
    assert.equal(Number(tokens.n), 0);
  });

  test('delete a record, then the collection', async () => {
    const list = await api('GET', `${V}/customers/records?subject_id=user-2&reason=support&limit=1`);
    assert.equal(list.json.next_marker, null);
    assert.equal((await api('GET', `${V}/customers/records?subject_id=user-2&reason=support&limit=0`)).status, 400);
    assert.equal(list.json.records.length, 1);
    assert.equal((await api('DELETE', `${V}/customers/records/${rec2}`)).status, 204);
    assert.equal((await api('DELETE', `${V}/customers/records/${rec2}`)).status, 404);
    await put({ email: 'last@example.com' }, 'user-9');
    const notEmpty = await api('DELETE', `${V}/customers`);
    assert.equal(notEmpty.status, 409);
    assert.equal((await api('DELETE', `${V}/customers?force=true`)).status, 204);
    assert.equal((await api('GET', `${V}/customers`)).status, 404);
    const left = (await sql<{ n: number }>`select count(*) as n from vault_records where account_id = ${t.accountId}`.execute(s.custos.store.db)).rows[0]!;
    assert.equal(Number(left.n), 0);
  });
  test('a disabled or destroyed collection key makes records unreadable', async () => {
    const c = await api('POST', V, { name: 'keyed', project_id: t.projects[0]!.id, properties: [PROPERTIES[0]], access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write'] }] });
    assert.equal(c.status, 201, c.text);
    const key = c.json.kms_key_id as string;
    const w = await api('POST', `${V}/keyed/records`, { subject_id: 'user-3', fields: { email: 'keyed@example.com' } });
    assert.equal(w.status, 201, w.text);
    const id = w.json.id as string;
    const get = (rid: string, q: string) => api('GET', `${V}/keyed/records/${rid}?${q}`);
    const kms = (op: string, body: unknown) => api('POST', `/v1.0/${t.projects[0]!.id}/kms/${op}`, body);
    assert.equal((await kms('disable-key', { key_id: key })).status, 200);
    const r = await get(id, 'reason=support');
    assert.equal(r.status, 409, r.text);
    assert.equal(r.json.error.code, 'KeyUnavailable');
    assert.equal((await kms('enable-key', { key_id: key })).status, 200);
    assert.equal((await get(id, 'reason=support')).status, 200);
    assert.equal((await kms('schedule-key-deletion', { key_id: key, pending_days: '7' })).status, 200);
    clock += 8 * DAY;
    await relogin();
    await s.custos.kms.runDueJobs();
    const after = await get(id, 'reason=support');
    assert.equal(after.status, 409);
    assert.match(after.json.error.message, /destroyed/);
  });
});

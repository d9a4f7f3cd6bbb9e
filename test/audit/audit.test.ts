// The audit trail over real HTTP: every request traced with the right fields, no secrets in it,
// tenant-scoped queries, fail-closed writes, signed digests that an offline verifier checks,
// retention that keeps the rest verifiable, and two nodes appending to one chain.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';
import { sql } from 'kysely';
import { canonicalDigest, keyIdOf, traceHash, verifyTrail, type Digest, type StoredTrace } from '../../src/audit/chain.js';
import { loadExport } from '../../src/cli/audit.js';
import { AuditService } from '../../src/audit/audit.js';
import { ctsRoutes } from '../../src/audit/http/cts.js';
import { SecretBox } from '../../src/crypto/secretbox.js';
import { custosIamRoutes } from '../../src/iam/http/custos.js';
import { huaweiIamRoutes } from '../../src/iam/http/huawei.js';
import { DB, freshDatabase, PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');
const run = promisify(execFile);
const DAY = 86_400_000;

async function traces(s: TestServer, t: Tenant, query: Record<string, string>, token = t.token) {
  const q = new URLSearchParams({ trace_type: 'system', limit: '200', from: '0', ...query });
  return s.api('GET', `/v3/${t.projects[0]!.id}/traces?${q.toString()}`, { token });
}
async function traceOf(s: TestServer, t: Tenant, requestId: string) {
  const r = await traces(s, t, {});
  assert.equal(r.status, 200, r.text);
  return (r.json.traces as any[]).find((x) => x.request_id === requestId);
}
async function allAuditRows(s: TestServer): Promise<string> {
  const db = s.custos.store.db;
  const parts: unknown[] = [];
  for (const table of ['audit_traces', 'audit_digests', 'audit_heads', 'audit_settings']) parts.push((await sql`select * from ${sql.table(table)}`.execute(db)).rows);
  return JSON.stringify(parts);
}

describe('every request is traced', () => {
  let s: TestServer;
  let a: Tenant;
  let b: Tenant;
  before(async () => {
    s = await startTestServer();
    a = await s.createTenant();
    b = await s.createTenant();
  });
  after(() => s?.close());

  test('a successful change is traced with who, what, which resource, where from and the result', async () => {
    const r = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'auditors', description: 'x' } }, headers: { 'user-agent': 'audit-test/1.0', 'x-request-id': 'req-create-group-0001' } });
    assert.equal(r.status, 201);
    const t = await traceOf(s, a, 'req-create-group-0001');
    assert.ok(t, 'the trace exists');
    assert.equal(t.trace_name, 'iam:groups:createGroup');
    assert.equal(t.service_type, 'IAM');
    assert.equal(t.resource_type, 'group');
    assert.equal(t.resource_id, r.json.group.id);
    assert.equal(t.resource_name, 'auditors');
    assert.equal(t.code, '201');
    assert.equal(t.trace_rating, 'normal');
    assert.equal(t.event_type, 'system');
    assert.equal(t.user.name, 'admin');
    assert.equal(t.user.id, a.adminUserId);
    assert.equal(t.user.domain.id, a.accountId);
    assert.equal(t.user.domain.name, a.name);
    assert.equal(t.user.auth_method, 'token');
    assert.equal(t.source_ip, '127.0.0.1');
    assert.equal(t.user_agent, 'audit-test/1.0');
    assert.equal(t.http_method, 'POST');
    assert.equal(t.api_path, '/v3/groups');
    assert.ok(t.record_time >= t.time && typeof t.trace_id === 'string');
  });

  test('denied, failed, not-found and unauthenticated requests are traced too', async () => {
    const u = await s.api('POST', '/v3.0/OS-USER/users', { token: a.token, body: { user: { domain_id: a.accountId, name: 'nobody', password: PASSWORD } } });
    assert.equal(u.status, 201);
    const nt = await s.token(a.name, 'nobody', PASSWORD);
    const denied = await s.api('GET', '/v3/users', { token: nt, headers: { 'x-request-id': 'req-denied-000001' } });
    assert.equal(denied.status, 403);
    const bad = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 7 } }, headers: { 'x-request-id': 'req-badinput-0001' } });
    assert.equal(bad.status, 400);
    const missing = await s.api('GET', `/v3/users/${b.adminUserId}`, { token: a.token, headers: { 'x-request-id': 'req-notfound-0001' } });
    assert.equal(missing.status, 404);
    const wrong = await s.login(a.name, 'admin', 'Wr0ng-Password!!', {});
    assert.equal(wrong.status, 401);

    const d = await traceOf(s, a, 'req-denied-000001');
    assert.equal(d.code, '403');
    assert.equal(d.trace_rating, 'warning');
    assert.equal(d.message, 'IAM.0003');
    assert.equal(d.user.name, 'nobody');
    const x = await traceOf(s, a, 'req-badinput-0001');
    assert.equal(x.code, '400');
    assert.equal(x.trace_name, 'iam:groups:createGroup');
    const n = await traceOf(s, a, 'req-notfound-0001');
    assert.equal(n.code, '404');
    assert.equal(n.resource_id, null, "another tenant's id is not recorded as a resource of this trail");

    // The failed login lands in the account's trail, with an HMAC of the name tried, never the name.
    const fails = (await traces(s, a, { trace_name: 'POST /v3/auth/tokens', trace_rating: 'warning' })).json.traces as any[];
    assert.ok(fails.length >= 1);
    const h = await s.api('POST', '/v1/audit/hash', { token: a.token, body: { input: `${a.name}/admin` } });
    assert.equal(h.status, 200);
    assert.equal(fails[0].correlation.login_user, h.json.hash);
    assert.equal(fails[0].user.name, null);

    // With no credentials at all, the attempt goes to the platform trail.
    const anon = await s.api('GET', `/v3/users/${a.adminUserId}`, { headers: { 'x-request-id': 'req-anonymous-001' } });
    assert.equal(anon.status, 401);
    const rows = (await sql`select trail, code from audit_traces where request_id = 'req-anonymous-001'`.execute(s.custos.store.db)).rows as { trail: string; code: number }[];
    assert.deepEqual(rows.map((r) => [r.trail, Number(r.code)]), [['', 401]]);
  });

  test('every route of every service writes a trace, even for an unauthenticated call', async () => {
    const defs = [...huaweiIamRoutes(s.custos.iam), ...custosIamRoutes(s.custos.iam), ...ctsRoutes(s.custos.audit, s.custos.iam, Date.now)];
    let n = 0;
    for (const d of defs) {
      for (const method of [d.method].flat()) {
        const url = d.url.replace(/:([a-z_]+)/g, 'x0');
        const rid = `req-route-${String(++n).padStart(6, '0')}`;
        const r = await s.api(method, url, { headers: { 'x-request-id': rid }, ...(method === 'GET' || method === 'DELETE' || method === 'HEAD' ? {} : { body: {} }) });
        assert.ok(d.meta.action === null ? r.status < 500 : r.status >= 400 && r.status < 500, `${method} ${d.url} answered ${r.status}`);
        const row = (await sql`select count(*) as c from audit_traces where request_id = ${rid}`.execute(s.custos.store.db)).rows[0] as { c: number | string };
        assert.equal(Number(row.c), 1, `${method} ${d.url} left no trace`);
      }
    }
    assert.ok(n > 50, `checked ${n} routes`);
  });

  test('no password, secret key, token or planted personal data appears in the trail or the logs', async () => {
    const planted = 'planted.pd.4711@example.com';
    const k = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: a.token, body: { credential: { user_id: a.adminUserId, description: 'leak test' } } });
    const sk = k.json.credential.secret as string;
    const u = await s.api('POST', '/v3.0/OS-USER/users', { token: a.token, body: { user: { domain_id: a.accountId, name: 'pd-holder', password: 'An0ther-Secret-Pw!', email: planted } } });
    assert.equal(u.status, 201);
    await s.api('GET', `/v3/users?name=${encodeURIComponent(planted)}`, { token: a.token, headers: { 'x-custos-note': planted } });
    await s.login(a.name, 'admin', 'Typo-Password-123!', {});
    const temp = await s.api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { token: a.token, body: { auth: { identity: { methods: ['token'] } } } });
    const secrets = [PASSWORD, 'An0ther-Secret-Pw!', 'Typo-Password-123!', sk, a.token, b.token, s.operator.token, temp.json.credential.secret, temp.json.credential.securitytoken, planted];
    const trail = await allAuditRows(s);
    const logs = s.logs();
    for (const secret of secrets) {
      assert.ok(!trail.includes(secret), `the trail holds a secret (${secret.slice(0, 4)}…)`);
      assert.ok(!logs.includes(secret), `the logs hold a secret (${secret.slice(0, 4)}…)`);
    }
  });

  test('a tenant sees only its own traces; another tenant cannot read them at all', async () => {
    const own = (await traces(s, b, {})).json.traces as any[];
    assert.ok(own.length > 0);
    assert.ok(own.every((t) => t.user.domain.id === null || t.user.domain.id === b.accountId));
    const cross = await s.api('GET', `/v3/${a.projects[0]!.id}/traces?trace_type=system`, { token: b.token });
    assert.equal(cross.status, 404);
    // Markers of another tenant's traces are not accepted either.
    const aTrace = ((await traces(s, a, { limit: '1' })).json.traces as any[])[0];
    const viaMarker = await traces(s, b, { next: aTrace.trace_id });
    assert.equal(viaMarker.status, 400);
  });

  test('an account grants an auditor read access through a policy; others are denied', async () => {
    await s.api('POST', '/v3.0/OS-USER/users', { token: a.token, body: { user: { domain_id: a.accountId, name: 'auditor', password: PASSWORD } } });
    const auditorId = (await s.api('GET', '/v3/users?name=auditor', { token: a.token })).json.users[0].id;
    const g = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'cts-readers' } } });
    await s.api('PUT', `/v3/groups/${g.json.group.id}/users/${auditorId}`, { token: a.token });
    const tok = await s.token(a.name, 'auditor', PASSWORD);
    assert.equal((await traces(s, a, {}, tok)).status, 403);
    const grant = await s.api('PUT', `/v3/domains/${a.accountId}/groups/${g.json.group.id}/roles/system-ctsreadonly`, { token: a.token });
    assert.equal(grant.status, 204);
    const r = await traces(s, a, {}, tok);
    assert.equal(r.status, 200);
    assert.ok(r.json.traces.length > 0);
    // Read-only: the auditor cannot change the retention.
    assert.equal((await s.api('PUT', '/v1/audit/retention', { token: tok, body: { retention_days: 365 } })).status, 403);
  });

  test('query parameters: required type, limits, filters and the next marker', async () => {
    assert.equal((await s.api('GET', `/v3/${a.projects[0]!.id}/traces`, { token: a.token })).status, 400);
    assert.equal((await traces(s, a, { limit: '201' })).status, 400);
    assert.equal((await traces(s, a, { trace_type: 'bogus' })).status, 400);
    assert.equal((await traces(s, a, { from: '2000', to: '1000' })).status, 400);
    assert.equal((await traces(s, a, { unknown: 'x' })).status, 400);
    for (let i = 0; i < 5; i++) await s.api('GET', '/v3/groups', { token: a.token });
    const seen = new Set<string>();
    let next: string | undefined;
    let pages = 0;
    do {
      const r = await traces(s, a, { limit: '2', trace_name: 'iam:groups:listGroups', ...(next ? { next } : {}) });
      assert.equal(r.status, 200);
      for (const t of r.json.traces) {
        assert.equal(t.trace_name, 'iam:groups:listGroups');
        assert.ok(!seen.has(t.trace_id), 'pages do not overlap');
        seen.add(t.trace_id);
      }
      next = r.json.meta_data.marker ?? undefined;
      pages++;
    } while (next && pages < 20);
    assert.ok(seen.size >= 5);
    assert.ok(pages >= 3);
    const onlyUser = (await traces(s, a, { user: 'nobody' })).json.traces as any[];
    assert.ok(onlyUser.length >= 1 && onlyUser.every((t) => t.user.name === 'nobody'));
    const recent = await traces(s, a, { from: String(Date.now() + 60_000), to: String(Date.now() + 120_000) });
    assert.equal(recent.json.traces.length, 0);
  });

  test('an unindexed filter scans a bounded window per call and pages through the rest with markers', async () => {
    const svc = await AuditService.open(s.custos.store.db, await SecretBox.open(s.custos.store.db, s.custos.root, 'audit-secrets'), {
      dialect: s.custos.store.dialect, digestIntervalSeconds: 3600, scanWindow: 7,
    });
    const q = { traceType: 'management' as const, from: 0, to: Date.now() + 1000, limit: 3, traceRating: 'warning' };
    const expected = ((await sql`select trace_id from audit_traces where trail = ${a.accountId} and trace_rating = 'warning' and trace_type = 'management' order by seq desc`.execute(s.custos.store.db)).rows as { trace_id: string }[]).map((r) => r.trace_id);
    assert.ok(expected.length >= 3);
    const got: string[] = [];
    let next: string | undefined;
    let calls = 0;
    let shortPages = 0;
    for (;;) {
      const page = await svc.search(a.accountId, { ...q, ...(next ? { next } : {}) });
      calls++;
      if (page.traces.length < 3 && page.marker) shortPages++;
      got.push(...page.traces.map((t) => t.trace_id));
      if (!page.marker) break;
      next = page.marker;
    }
    assert.deepEqual(got, expected, 'every match once, newest first');
    assert.ok(shortPages > 0 && calls > expected.length / 3, 'windows came back short with a marker');
  });

  test('the CLI searches traces with a stored profile', async () => {
    const home = mkdtempSync(path.join(tmpdir(), 'custos-cli-'));
    const env = { ...process.env, CUSTOS_PROFILES_FILE: path.join(home, 'profiles.json'), CUSTOS_PASSWORD: PASSWORD };
    try {
      await run(process.execPath, [CLI, 'login', '--endpoint', s.url, '--account', a.name, '--user', 'admin'], { env });
      const { stdout } = await run(process.execPath, [CLI, 'audit', 'search', '--name', 'iam:groups:createGroup', '--from', '0', '-o', 'json'], { env });
      const rows = JSON.parse(stdout) as any[];
      assert.ok(rows.some((t) => t.resource_name === 'auditors'));
      const table = (await run(process.execPath, [CLI, 'audit', 'search', '--name', 'iam:groups:createGroup', '--from', '0'], { env })).stdout;
      assert.match(table, /iam:groups:createGroup/);
      assert.match(table, /admin@/);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

describe('fail closed', () => {
  let s: TestServer;
  let a: Tenant;
  before(async () => {
    s = await startTestServer();
    a = await s.createTenant();
  });
  after(() => s?.close());

  test('when traces cannot be stored, changes are refused; reads of the trail resume after repair', async () => {
    const db = s.custos.store.db;
    await sql`alter table audit_traces rename to audit_traces_offline`.execute(db);
    try {
      const first = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'during-outage-1' } } });
      assert.equal(first.status, 503);
      assert.match(first.text, /audit trail is unavailable/);
      const second = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'during-outage-2' } } });
      assert.equal(second.status, 503);
      assert.match(second.text, /refused before it ran/);
      const ready = await s.api('GET', '/ready');
      assert.equal(ready.status, 503, 'a node that cannot write its trail is not ready');
      assert.match(ready.text, /audit trail/);
    } finally {
      await sql`alter table audit_traces_offline rename to audit_traces`.execute(db);
    }
    const groups = (await s.api('GET', '/v3/groups', { token: a.token })).json.groups as { name: string }[];
    assert.ok(!groups.some((g) => g.name === 'during-outage-2'), 'the refused change did not happen');
    await new Promise((r) => setTimeout(r, 1100));
    const after = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'after-repair' } } });
    assert.equal(after.status, 201);
    assert.equal((await s.api('GET', '/ready')).status, 200);
    const metrics = (await s.api('GET', '/metrics')).text;
    const value = (name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(metrics)?.[1] ?? 'NaN');
    assert.ok(value('custos_audit_write_failures_total') >= 1, 'failed trace writes are counted');
    assert.ok(value('custos_audit_traces_total') > 3, 'committed traces are counted');
  });
});

describe('digests, export and offline verification', () => {
  let s: TestServer;
  let a: Tenant;
  let dir: string;
  let clock = Date.now();
  before(async () => {
    s = await startTestServer({ now: () => clock, config: { auditDigestIntervalSeconds: 60 } });
    a = await s.createTenant();
    dir = mkdtempSync(path.join(tmpdir(), 'custos-export-'));
  });
  after(async () => {
    await s?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function traffic(n: number) {
    for (let i = 0; i < n; i++) await s.api('GET', '/v3/groups', { token: a.token });
  }
  const trailDir = () => path.join(dir, a.accountId);
  const traceFiles = () => readdirSync(trailDir()).filter((f) => f.startsWith('traces-')).sort();
  const readGz = (f: string) => JSON.parse(gunzipSync(readFileSync(f)).toString('utf8'));
  const writeGz = (f: string, doc: unknown) => writeFileSync(f, gzipSync(JSON.stringify(doc)));
  async function freshExport() {
    rmSync(dir, { recursive: true, force: true });
    await s.custos.audit.exportTo(dir, { trails: [a.accountId] });
  }
  async function verify(now = clock) {
    const { traces, digests, keys, exportedFrom } = await loadExport(dir);
    return verifyTrail(traces, digests, keys, undefined, { now, exportedFrom }).trails[0]!;
  }

  test('digests are due at the interval, signed, chained, and published keys verify them', async () => {
    await traffic(5);
    assert.equal((await s.custos.audit.writeDueDigests()).length, 0, 'nothing is due before the interval');
    clock += 61_000;
    const first = await s.custos.audit.writeDueDigests();
    assert.ok(first.some((d) => d.trail === a.accountId));
    await traffic(5);
    clock += 61_000;
    const second = (await s.custos.audit.writeDueDigests()).find((d) => d.trail === a.accountId)!;
    assert.equal(second.digest_seq, 2);
    assert.equal(second.prev_signature, first.find((d) => d.trail === a.accountId)!.signature);
    const keys = await s.api('GET', '/v1/audit/public-keys');
    assert.equal(keys.status, 200);
    assert.equal(keys.json.public_keys[0].algorithm, 'Ed25519');
    const listed = await s.api('GET', '/v1/audit/digests', { token: a.token });
    assert.equal(listed.json.digests.length, 2);
    await traffic(3); // an unsigned tail after the last digest
    await freshExport();
    const r = await verify();
    assert.equal(r.first_trace_problem, null);
    assert.equal(r.first_digest_problem, null);
    assert.ok(r.unsigned_tail >= 3);
  });

  test('the CLI verifies the export with keys fetched from the API, and fails on tampering', async () => {
    const keysFile = path.join(tmpdir(), `custos-keys-${process.pid}.json`);
    await run(process.execPath, [CLI, 'audit', 'public-keys', '--endpoint', s.url, '--save', keysFile]);
    const ok = await run(process.execPath, [CLI, 'audit', 'verify', dir, '--public-keys', keysFile]);
    assert.match(ok.stdout, /OK: every trace and digest verifies/);
    const f = path.join(trailDir(), traceFiles()[0]!);
    const doc = readGz(f);
    doc.traces[1].source_ip = '203.0.113.9';
    writeGz(f, doc);
    await assert.rejects(run(process.execPath, [CLI, 'audit', 'verify', dir, '--public-keys', keysFile, '-o', 'json']), (e: { code: number; stdout: string }) => {
      assert.equal(e.code, 4);
      const report = JSON.parse(e.stdout);
      assert.equal(report.trails[0].first_trace_problem.kind, 'altered');
      assert.equal(report.trails[0].first_trace_problem.seq, doc.traces[1].seq);
      return true;
    });
    rmSync(keysFile, { force: true });
  });

  test('missing, reordered and inserted traces and altered digests are each reported', async () => {
    const mutate = async (fn: (traces: StoredTrace[]) => void) => {
      await freshExport();
      const f = path.join(trailDir(), traceFiles()[0]!);
      const doc = readGz(f);
      fn(doc.traces);
      writeGz(f, doc);
      return verify();
    };
    const missing = await mutate((t) => t.splice(3, 1));
    assert.equal(missing.first_trace_problem?.kind, 'missing');
    const reordered = await mutate((t) => {
      const x = t[2]!;
      t[2] = t[3]!;
      t[3] = x;
    });
    assert.equal(reordered.first_trace_problem?.kind, 'reordered');
    // A forged trace that hashes correctly and links to its predecessor is still an insertion.
    const inserted = await mutate((t) => {
      const forged = { ...t[4]!, trace_id: '00000000-0000-4000-8000-000000000000', trace_name: 'iam:users:deleteUser' };
      const { prev_hash: _p, hash: _h, ...body } = forged;
      forged.hash = traceHash(forged.prev_hash, body);
      t.splice(4, 0, forged);
    });
    assert.equal(inserted.first_trace_problem?.kind, 'inserted');
    // A forger who recomputes every hash after an edit is still caught by the signed digest.
    const rehashed = await mutate((t) => {
      t[1]!.trace_name = 'iam:groups:harmless';
      for (let i = 1; i < t.length; i++) {
        const { prev_hash: _p, hash: _h, ...body } = t[i]!;
        t[i]!.prev_hash = t[i - 1]!.hash;
        t[i]!.hash = traceHash(t[i]!.prev_hash, body);
      }
    });
    assert.equal(rehashed.first_trace_problem, null);
    assert.equal(rehashed.first_digest_problem?.kind, 'mismatch');

    await freshExport();
    const df = path.join(trailDir(), 'digests.json.gz');
    const ddoc = readGz(df);
    ddoc.digests[0].trace_count += 1;
    writeGz(df, ddoc);
    assert.equal((await verify()).first_digest_problem?.kind, 'bad-signature');
    // A digest forged with another key: under the genuine key's id it fails its signature; under its
    // own id it names a key the published set does not hold.
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const forgeWith = async (keyId: string) => {
      await freshExport();
      const doc = readGz(df);
      const d = doc.digests[1];
      d.end_hash = 'f'.repeat(64);
      d.key_id = keyId;
      const { signature: _s, ...unsigned } = d;
      d.signature = sign(null, canonicalDigest(unsigned), privateKey).toString('base64');
      writeGz(df, doc);
      return verify();
    };
    const sameId = await forgeWith(ddoc.digests[1].key_id);
    assert.equal(sameId.first_digest_problem?.kind, 'bad-signature');
    assert.equal(sameId.first_digest_problem?.digest_seq, 2);
    const ownId = await forgeWith(keyIdOf(publicKey.export({ type: 'spki', format: 'der' })));
    assert.equal(ownId.first_digest_problem?.kind, 'unknown-key');

    await freshExport();
    const d2 = readGz(df);
    d2.digests.splice(0, 1);
    writeGz(df, d2);
    const r = await verify();
    assert.ok(r.first_trace_problem || r.first_digest_problem, 'a removed digest is noticed');
  });

  test("removing a trail's oldest traces is noticed, with their digests or without, unless retention could have cleared them", async () => {
    await freshExport();
    const df = path.join(trailDir(), 'digests.json.gz');
    const first = (readGz(df).digests as Digest[]).find((d) => d.digest_seq === 1)!;
    assert.ok(first.trace_count > 0 && first.end_seq > 1);
    // The traces digest 1 covers go: the rest still starts at a signed digest boundary.
    const dropOldest = () => {
      for (const f of traceFiles()) {
        const doc = readGz(path.join(trailDir(), f));
        doc.traces = doc.traces.filter((t: StoredTrace) => t.seq > first.end_seq);
        writeGz(path.join(trailDir(), f), doc);
      }
    };
    dropOldest();
    const young = await verify();
    assert.equal(young.first_trace_problem?.kind, 'missing', JSON.stringify(young));
    assert.equal(young.first_trace_problem?.seq, 1);
    assert.match(young.first_trace_problem!.message, /less than 180 days/);
    // Past the shortest retention, the same gap is what clearing leaves: it verifies.
    const later = await verify(first.end_record_time! + 181 * DAY);
    assert.equal(later.first_trace_problem, null, JSON.stringify(later));
    assert.equal(later.first_digest_problem, null);
    // Digest 1 removed as well: the digest chain no longer starts at 1, at any time.
    const doc = readGz(df);
    doc.digests = doc.digests.filter((d: Digest) => d.digest_seq !== 1);
    writeGz(df, doc);
    for (const when of [clock, first.end_record_time! + 181 * DAY]) {
      const r = await verify(when);
      assert.equal(r.first_digest_problem?.kind, 'missing-digest', JSON.stringify(r));
      assert.equal(r.first_digest_problem?.digest_seq, 1);
    }
    // An export asked to start later holds no earlier traces, on purpose: that verifies.
    rmSync(dir, { recursive: true, force: true });
    await s.custos.audit.exportTo(dir, { trails: [a.accountId], from: first.end_record_time! + 1 });
    const fromLater = await verify();
    assert.equal(fromLater.first_trace_problem, null, JSON.stringify(fromLater));
    assert.equal(fromLater.first_digest_problem, null);
    assert.ok(readGz(path.join(trailDir(), traceFiles()[0]!)).traces[0].seq > first.end_seq);
    // The report says where it starts vouching: an auditor expecting the whole trail sees it is not 1
    // (range.json is the exporter's statement, not a signed one).
    assert.equal(fromLater.verified_from, first.end_seq + 1);
    await freshExport();
    assert.equal((await verify()).verified_from, 1);
    // An export may also start after the newest digest: its first (unsigned) trace links to that digest.
    const newest = (await s.custos.audit.writeDueDigests({ force: true })).find((d) => d.trail === a.accountId)!;
    clock += 1000;
    await traffic(2);
    rmSync(dir, { recursive: true, force: true });
    await s.custos.audit.exportTo(dir, { trails: [a.accountId], from: newest.end_record_time! + 1 });
    const afterNewest = await verify();
    assert.equal(afterNewest.first_trace_problem, null, JSON.stringify(afterNewest));
    assert.equal(afterNewest.verified_from, newest.end_seq + 1);
  });

  test('traces spanning longer than digests are written with none covering them: digests were removed', async () => {
    await freshExport();
    const df = path.join(trailDir(), 'digests.json.gz');
    const doc = readGz(df);
    doc.digests = [];
    writeGz(df, doc);
    const { traces, digests, keys, exportedFrom } = await loadExport(dir);
    // The traces still chain from genesis, so only their span without a digest tells.
    const lenient = verifyTrail(traces, digests, keys, undefined, { now: clock, exportedFrom }).trails[0]!;
    assert.equal(lenient.first_trace_problem, null, 'within the default 48 hours');
    const strict = verifyTrail(traces, digests, keys, undefined, { now: clock, exportedFrom, maxUnsignedMs: 60_000 }).trails[0]!;
    assert.equal(strict.first_trace_problem?.kind, 'unsigned', JSON.stringify(strict));
    assert.equal(strict.first_trace_problem?.seq, 1);
  });

  test('a retired signing key vouches for nothing after its retirement, however the digest is dated', async () => {
    const before = (await s.custos.audit.publicKeys()).find((k) => k.status === 'active')!;
    const rotatedAt = clock;
    await s.custos.audit.rotateSigningKey();
    const keys = await s.api('GET', '/v1/audit/public-keys');
    const old = (keys.json.public_keys as { key_id: string; status: string; retired_at: number | null }[]).find((k) => k.key_id === before.key_id)!;
    assert.equal(old.status, 'retired');
    assert.equal(old.retired_at, rotatedAt, 'the published key says when it was retired');
    const digestNow = async () => (await s.custos.audit.writeDueDigests({ force: true })).find((x) => x.trail === a.accountId)!;
    // Two digests by the new key a second apart, then one ten minutes on: the genuine trail verifies.
    clock += 1000;
    await traffic(2);
    await digestNow();
    clock += 1000;
    await traffic(2);
    const soon = await digestNow();
    clock += 10 * 60_000;
    await traffic(2);
    const later = await digestNow();
    assert.notEqual(later.key_id, before.key_id);
    await freshExport();
    const genuine = await verify();
    assert.equal(genuine.first_digest_problem, null);
    assert.equal(genuine.first_trace_problem, null);

    // Someone holding a signing key's private half (the old one leaked after its retirement).
    const privateKeyOf = async (keyId: string) => {
      const row = (await sql<{ private_key: string }>`select private_key from audit_keys where key_id = ${keyId}`.execute(s.custos.store.db)).rows[0]!;
      const secrets = await SecretBox.open(s.custos.store.db, s.custos.root, 'audit-secrets');
      return createPrivateKey({ key: secrets.open(row.private_key, `audit-key:${keyId}`), format: 'der', type: 'pkcs8' });
    };
    const oldKey = await privateKeyOf(before.key_id);
    const df = path.join(trailDir(), 'digests.json.gz');
    const forge = async (seq: number, keyId: string, key: KeyObject, change: (d: Digest) => void) => {
      await freshExport();
      const doc = readGz(df);
      const d = doc.digests.find((x: Digest) => x.digest_seq === seq);
      d.key_id = keyId;
      change(d);
      const { signature: _s, ...unsigned } = d;
      d.signature = sign(null, canonicalDigest(unsigned), key).toString('base64');
      writeGz(df, doc);
      return (await verify()).first_digest_problem;
    };
    // Made after the retirement (beyond the clock slack).
    assert.equal((await forge(later.digest_seq, before.key_id, oldKey, () => undefined))?.kind, 'retired-key');
    // Dated before the retirement, but it covers traces recorded ten minutes after it.
    assert.equal((await forge(later.digest_seq, before.key_id, oldKey, (d) => (d.created_at = rotatedAt - 1)))?.kind, 'retired-key');
    // Dated and covering within the slack, but after a digest the newer key signed: chain order, not clocks.
    assert.equal((await forge(soon.digest_seq, before.key_id, oldKey, (d) => (d.created_at = rotatedAt - 1)))?.kind, 'retired-key');
    // The time a digest states for its last trace must be that trace's own.
    const current = await privateKeyOf(later.key_id);
    assert.equal((await forge(later.digest_seq, later.key_id, current, (d) => (d.end_record_time = rotatedAt - 1)))?.kind, 'mismatch');
  });

  test('with an export directory configured, each digest is delivered there with its traces', async () => {
    const exportDir = mkdtempSync(path.join(tmpdir(), 'custos-delivery-'));
    const s2 = await startTestServer({ config: { auditExportDir: exportDir } });
    try {
      const t2 = await s2.createTenant();
      await s2.api('GET', '/v3/groups', { token: t2.token });
      await s2.custos.audit.writeDueDigests({ force: true });
      const files = readdirSync(path.join(exportDir, t2.accountId));
      assert.ok(files.some((f) => /^digest-\d+\.json\.gz$/.test(f)));
      assert.ok(files.some((f) => /^traces-\d+-\d+\.json\.gz$/.test(f)));
      const { traces, digests, keys, exportedFrom } = await loadExport(exportDir);
      const report = verifyTrail(traces, digests, keys, undefined, { exportedFrom });
      assert.equal(report.ok, true, JSON.stringify(report));
      // A directory configured after the trail's first digests: the first delivery brings the earlier
      // digests (the chain must start at 1) and says where its traces start, so it verifies.
      rmSync(exportDir, { recursive: true, force: true });
      mkdirSync(exportDir);
      await s2.api('GET', '/v3/groups', { token: t2.token });
      await s2.custos.audit.writeDueDigests({ force: true });
      const late = await loadExport(exportDir);
      const trail = t2.accountId;
      assert.deepEqual(late.digests.filter((d) => d.trail === trail).map((d) => d.digest_seq).sort(), [1, 2]);
      assert.ok(late.exportedFrom[trail]! > 1);
      const lateReport = verifyTrail(late.traces, late.digests, late.keys, undefined, { exportedFrom: late.exportedFrom });
      assert.equal(lateReport.ok, true, JSON.stringify(lateReport));
      // A directory with deliveries but no range (filled before ranges existed, or a delivery cut
      // short): the range starts at the earliest traces already there, never later.
      const startedAt = late.exportedFrom[trail]!;
      rmSync(path.join(exportDir, trail, 'range.json'));
      await s2.api('GET', '/v3/groups', { token: t2.token });
      await s2.custos.audit.writeDueDigests({ force: true });
      assert.equal((await loadExport(exportDir)).exportedFrom[trail], startedAt);
    } finally {
      await s2.close();
      rmSync(exportDir, { recursive: true, force: true });
    }
  });

  test('a delivery that failed is made with the trail\'s next digest, so the export has no gap', async () => {
    const exportDir = mkdtempSync(path.join(tmpdir(), 'custos-delivery-'));
    const s2 = await startTestServer({ config: { auditExportDir: exportDir } });
    try {
      const t2 = await s2.createTenant();
      const trail = t2.accountId;
      await s2.api('GET', '/v3/groups', { token: t2.token });
      // The trail's directory cannot be made (a file is in its way): the first digest is not delivered.
      writeFileSync(path.join(exportDir, trail), 'in the way');
      await s2.custos.audit.writeDueDigests({ force: true });
      assert.match(s2.logs(), new RegExp(`audit export of digest 1 of trail ${trail} failed`));
      assert.equal(readFileSync(path.join(exportDir, trail), 'utf8'), 'in the way');
      rmSync(path.join(exportDir, trail));
      await s2.api('GET', '/v3/groups', { token: t2.token });
      await s2.custos.audit.writeDueDigests({ force: true });
      // Digest 2's delivery brought digest 1 and its traces first: the whole trail, from its first trace.
      const files = readdirSync(path.join(exportDir, trail)).sort();
      assert.ok(files.some((f) => /^digest-0*1\.json\.gz$/.test(f)), files.join(' '));
      assert.ok(files.some((f) => /^digest-0*2\.json\.gz$/.test(f)), files.join(' '));
      const exported = await loadExport(exportDir);
      assert.deepEqual(exported.digests.filter((d) => d.trail === trail).map((d) => d.digest_seq).sort(), [1, 2]);
      assert.equal(exported.exportedFrom[trail], 1, 'the export starts at the trail\'s first trace');
      const report = verifyTrail(exported.traces, exported.digests, exported.keys, undefined, { exportedFrom: exported.exportedFrom });
      assert.equal(report.ok, true, JSON.stringify(report));
      // Every trace the two digests cover is there.
      const covered = (await s2.custos.audit.digests(trail, 1, 10)).reduce((n, d) => n + d.trace_count, 0);
      assert.ok(covered > 0);
      assert.equal(exported.traces.filter((x) => x.trail === trail).length, covered);
    } finally {
      await s2.close();
      rmSync(exportDir, { recursive: true, force: true });
    }
  });
});


describe('start-up', () => {
  test('digests that fell due while no node ran are written before the server serves', async () => {
    let clock = Date.now();
    const database = await freshDatabase();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-startup-'));
    const n1 = await startTestServer({ database, dataDir, now: () => clock });
    let n2: TestServer | undefined;
    try {
      const a = await n1.createTenant();
      await n1.api('GET', '/v3/groups', { token: a.token });
      await n1.stop();
      clock += 2 * 3_600_000;
      n2 = await startTestServer({ database, dataDir, now: () => clock, join: true });
      const rows = (await sql<{ created_at: number | string }>`select created_at from audit_digests where trail = ${a.accountId}`.execute(n2.custos.store.db)).rows;
      assert.equal(rows.length, 1, 'written at start-up, before any request or timer');
      assert.equal(Number(rows[0]!.created_at), clock);
    } finally {
      await n2?.stop();
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('retention', () => {
  test('traces older than the retention are cleared, digests stay, and the rest still verifies', async () => {
    let clock = Date.now();
    const s = await startTestServer({ now: () => clock });
    const dir = mkdtempSync(path.join(tmpdir(), 'custos-retention-'));
    try {
      const a = await s.createTenant();
      assert.equal((await s.api('GET', '/v1/audit/retention', { token: a.token })).json.retention_days, 180);
      assert.equal((await s.api('PUT', '/v1/audit/retention', { token: a.token, body: { retention_days: 90 } })).status, 400, 'the minimum is 180 days');
      for (let i = 0; i < 4; i++) await s.api('GET', '/v3/groups', { token: a.token, headers: { 'x-request-id': `old-request-${i}-xyz` } });
      await s.custos.audit.writeDueDigests({ force: true });
      clock += 100 * DAY;
      let token = await s.token(a.name, 'admin', PASSWORD);
      for (let i = 0; i < 3; i++) await s.api('GET', '/v3/groups', { token });
      await s.custos.audit.writeDueDigests({ force: true });
      clock += 81 * DAY;
      token = await s.token(a.name, 'admin', PASSWORD);
      const cleared = await s.custos.audit.clearExpired();
      const mine = cleared.find((c) => c.trail === a.accountId);
      assert.ok(mine && mine.removed >= 4, JSON.stringify(cleared));
      const old = (await sql`select count(*) as c from audit_traces where request_id like 'old-request-%'`.execute(s.custos.store.db)).rows[0] as { c: number | string };
      assert.equal(Number(old.c), 0, 'the old traces, and the addresses in them, are gone');
      const q = await s.api('GET', `/v3/${a.projects[0]!.id}/traces?trace_type=system&from=0&limit=200`, { token });
      assert.ok(q.json.traces.length >= 3);
      assert.equal((await s.api('GET', '/v1/audit/digests', { token })).json.digests.length, 2, 'digests are kept');
      await s.custos.audit.exportTo(dir, { trails: [a.accountId] });
      const { traces: ts, digests, keys, exportedFrom } = await loadExport(dir);
      const report = verifyTrail(ts, digests, keys, undefined, { now: clock, exportedFrom });
      assert.equal(report.ok, true, JSON.stringify(report.trails[0]));
      assert.ok(ts[0]!.seq > 1, 'the remaining range starts after the cleared one');
      // Had the same traces gone before the shortest retention, the verifier would say so.
      const early = verifyTrail(ts, digests, keys, undefined, { now: clock - 2 * DAY, exportedFrom }).trails[0]!;
      assert.equal(early.first_trace_problem?.kind, 'missing', JSON.stringify(early));
      // A longer retention is accepted.
      assert.equal((await s.api('PUT', '/v1/audit/retention', { token, body: { retention_days: 365 } })).json.retention_days, 365);
    } finally {
      await s.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('several nodes', () => {
  // Several nodes share PostgreSQL; SQLite is the single-node store (and two better-sqlite3 handles in
  // one thread would block each other synchronously), so this runs on PostgreSQL.
  test('two servers on one database append to one unforked chain', { skip: DB === 'sqlite' ? 'several nodes need PostgreSQL' : false }, async () => {
    const database = await freshDatabase();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-nodes-'));
    const n1 = await startTestServer({ database, dataDir });
    const n2 = await startTestServer({ database, dataDir, join: true });
    const dir = mkdtempSync(path.join(tmpdir(), 'custos-nodes-export-'));
    try {
      const a = await n1.createTenant();
      const calls = [];
      for (let i = 0; i < 60; i++) calls.push((i % 2 ? n1 : n2).api('GET', '/v3/groups', { token: a.token }));
      const results = await Promise.all(calls);
      assert.ok(results.every((r) => r.status === 200));
      await Promise.all([n1.custos.audit.writeDueDigests({ force: true }), n2.custos.audit.writeDueDigests({ force: true })]);
      await n2.custos.audit.exportTo(dir, { trails: [a.accountId] });
      const { traces: ts, digests, keys } = await loadExport(dir);
      assert.ok(ts.length >= 61);
      assert.deepEqual(ts.map((t) => t.seq), ts.map((_, i) => i + 1), 'one contiguous sequence');
      const report = verifyTrail(ts, digests, keys);
      assert.equal(report.ok, true, JSON.stringify(report.trails[0]));
    } finally {
      await n2.stop();
      await n1.stop();
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// The IAM cache must never outlive a change: on the node that made it, the very next request sees it;
// on another node sharing the database, every request starting after the staleness bound does, even
// with no poll timer running. Expiry and policy conditions are judged on every request.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { loadConfig } from '../../src/config.js';
import { IamCache, IAM_MAX_STALENESS_MS } from '../../src/iam/cache.js';
import { FULL_ACCESS_POLICY_ID, type IamService } from '../../src/iam/iam.js';
import type { SignedRequestInput } from '../../src/iam/signing.js';
import { openServices, type Services } from '../../src/server/index.js';
import { DB, freshDatabase, PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- the cache on its own

describe('IAM cache: bounds', () => {
  const fake = () => {
    let t = 1_000;
    let epoch: string | null = 'e1';
    let failing = false;
    const cache = new IamCache(
      async () => {
        if (failing) throw new Error('database unreachable');
        return epoch;
      },
      { maxEntries: 3, ttlMs: 10_000, maxStalenessMs: 1_000, clock: () => t },
    );
    return {
      cache,
      advance: (ms: number) => (t += ms),
      setEpoch: (e: string) => (epoch = e),
      fail: (f: boolean) => (failing = f),
    };
  };

  test('holds at most maxEntries per space, dropping the least recently used', async () => {
    const { cache } = fake();
    await cache.poll();
    const s = cache.space<number>('n');
    for (const k of ['a', 'b', 'c']) await s.load(k, async () => 1);
    assert.equal(s.get('a'), 1); // a is now the most recently used
    await s.load('d', async () => 4);
    assert.equal(s.size, 3);
    assert.equal(s.get('b'), undefined, 'b was the least recently used');
    assert.equal(s.get('a'), 1);
    for (let i = 0; i < 100; i++) await s.load(`k${i}`, async () => i);
    assert.equal(cache.size(), 3);
  });

  test('serves nothing once the epoch is older than the bound, until it is read again; a change empties it', async () => {
    const { cache, advance, setEpoch } = fake();
    const s = cache.space<string>('n');
    await s.load('k', async () => 'v');
    assert.equal(s.get('k'), undefined, 'never served before the epoch was read once');
    await cache.ensureFresh();
    await s.load('k', async () => 'v');
    assert.equal(s.get('k'), 'v');
    advance(999);
    assert.equal(s.get('k'), 'v', 'within the bound');
    advance(2);
    assert.equal(s.get('k'), undefined, 'past the bound: not served');
    assert.ok(cache.ensureFresh(), 'a read of the epoch is needed');
    await cache.ensureFresh();
    assert.equal(s.get('k'), 'v', 'the epoch did not change: kept');
    setEpoch('e2');
    advance(1_001);
    await cache.ensureFresh();
    assert.equal(s.get('k'), undefined, 'another node changed IAM: forgotten');
    assert.equal(cache.size(), 0);
  });

  test('an epoch that cannot be read empties the cache and leaves it unconfirmed', async () => {
    const { cache, advance, fail } = fake();
    await cache.poll();
    const s = cache.space<string>('n');
    await s.load('k', async () => 'v');
    advance(1_500);
    fail(true);
    await cache.ensureFresh(); // never rejects on the request path
    assert.equal(cache.size(), 0);
    assert.equal(cache.isFresh(), false);
    await assert.rejects(cache.poll(), /unreachable/, 'the timer sees the failure');
    fail(false);
    await cache.ensureFresh();
    assert.equal(cache.isFresh(), true);
  });

  test('a load that overlaps a mutation or an invalidation is not kept; entries expire after the TTL', async () => {
    const { cache, advance } = fake();
    await cache.poll();
    const s = cache.space<string>('n');
    let release!: () => void;
    const during = s.load('k', () => new Promise<string>((r) => (release = () => r('old'))));
    await cache.mutation(async () => undefined);
    release();
    assert.equal(await during, 'old');
    assert.equal(s.get('k'), undefined, 'read before the mutation finished: not kept');
    let release2!: () => void;
    let mutationDone!: () => void;
    const mutation = cache.mutation(() => new Promise<void>((r) => (mutationDone = r)));
    const inside = s.load('k', () => new Promise<string>((r) => (release2 = () => r('racy'))));
    release2();
    await inside;
    mutationDone();
    await mutation;
    assert.equal(s.get('k'), undefined, 'read while a mutation ran: not kept');
    await s.load('k', async () => 'new');
    assert.equal(s.get('k'), 'new');
    for (let i = 0; i < 11; i++) {
      advance(999);
      await cache.ensureFresh();
    }
    assert.equal(s.get('k'), undefined, 'expired after the TTL');
  });
});

// ---------------------------------------------------------------- one node, over HTTP

let s: TestServer;
let a: Tenant;
let offset = 0;

/** Plain node:http, so the signed Host header goes out exactly as signed. */
function send(method: string, p: string, headers: Record<string, string>, url = s.url): Promise<number> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path: p, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}
async function signedGet(p: string, key: { ak: string; sk: string; token?: string }, url = s.url): Promise<number> {
  const u = new URL(url);
  const signer = new SignatureV4({
    service: 'iam', region: 'cn-north-4', sha256: Sha256,
    credentials: { accessKeyId: key.ak, secretAccessKey: key.sk, ...(key.token ? { sessionToken: key.token } : {}) },
  });
  const r = await signer.sign(
    { method: 'GET', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: p, query: {}, headers: { host: u.host, 'x-custos-nonce': randomUUID() } },
    { signingDate: new Date(Date.now() + offset) },
  );
  return send('GET', p, r.headers as Record<string, string>, url);
}
async function newUser(name: string): Promise<{ id: string; token: string }> {
  assert.equal((await s.api('POST', '/v3.0/OS-USER/users', { token: a.token, body: { user: { domain_id: a.accountId, name, password: PASSWORD } } })).status, 201);
  const id = (await s.api('GET', `/v3/users?name=${name}`, { token: a.token })).json.users[0].id as string;
  return { id, token: await s.token(a.name, name, PASSWORD) };
}
async function newKey(userId: string): Promise<{ ak: string; sk: string }> {
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: a.token, body: { credential: { user_id: userId } } });
  assert.equal(r.status, 201);
  return { ak: r.json.credential.access, sk: r.json.credential.secret };
}
async function groupWithRole(name: string, policy: unknown, member: string): Promise<{ group: string; role: string }> {
  const group = (await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name } } })).json.group.id as string;
  const role = (await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: `${name}-role`, policy } } })).json.role.id as string;
  assert.equal((await s.api('PUT', `/v3/domains/${a.accountId}/groups/${group}/roles/${role}`, { token: a.token })).status, 204);
  assert.equal((await s.api('PUT', `/v3/groups/${group}/users/${member}`, { token: a.token })).status, 204);
  return { group, role };
}

describe('IAM cache on one node: a change applies to the very next request', () => {
  before(async () => {
    s = await startTestServer({ now: () => Date.now() + offset });
    a = await s.createTenant();
  });
  after(() => s?.close());

  test('a disabled, re-enabled and then deleted access key', async () => {
    const key = await newKey(a.adminUserId);
    const p = `/v3/users/${a.adminUserId}`;
    for (let i = 0; i < 3; i++) assert.equal(await signedGet(p, key), 200);
    const hits = s.custos.iam.cache.stats.hits;
    assert.equal(await signedGet(p, key), 200);
    assert.ok(s.custos.iam.cache.stats.hits > hits, 'the key was served from the cache');
    assert.equal((await s.api('PUT', `/v3.0/OS-CREDENTIAL/credentials/${key.ak}`, { token: a.token, body: { credential: { status: 'inactive' } } })).status, 200);
    assert.equal(await signedGet(p, key), 401, 'disabled at once');
    assert.equal((await s.api('PUT', `/v3.0/OS-CREDENTIAL/credentials/${key.ak}`, { token: a.token, body: { credential: { status: 'active' } } })).status, 200);
    assert.equal(await signedGet(p, key), 200, 're-enabled at once');
    assert.equal((await s.api('DELETE', `/v3.0/OS-CREDENTIAL/credentials/${key.ak}`, { token: a.token })).status, 204);
    assert.equal(await signedGet(p, key), 401, 'deleted at once');
  });

  test('a disabled user: its access key and its token stop at once', async () => {
    const u = await newUser('dora');
    const key = await newKey(u.id);
    const p = `/v3/users/${u.id}`;
    for (let i = 0; i < 3; i++) {
      assert.equal(await signedGet(p, key), 200);
      assert.equal((await s.api('GET', p, { token: u.token })).status, 200);
    }
    assert.equal((await s.api('PUT', `/v3.0/OS-USER/users/${u.id}`, { token: a.token, body: { user: { enabled: false } } })).status, 200);
    assert.equal(await signedGet(p, key), 401, 'the key of a disabled user');
    assert.equal((await s.api('GET', p, { token: u.token })).status, 401, 'the token of a disabled user');
  });

  test('a changed policy document and a deleted policy', async () => {
    const u = await newUser('pat');
    const { role } = await groupWithRole('listers', { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:listUsers'] }] }, u.id);
    for (let i = 0; i < 3; i++) assert.equal((await s.api('GET', '/v3/users', { token: u.token })).status, 200);
    assert.equal((await s.api('GET', '/v3/groups', { token: u.token })).status, 403);
    const patched = await s.api('PATCH', `/v3.0/OS-ROLE/roles/${role}`, { token: a.token, body: { role: { policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:groups:listGroups'] }] } } } });
    assert.equal(patched.status, 200);
    assert.equal((await s.api('GET', '/v3/users', { token: u.token })).status, 403, 'the old document no longer applies');
    assert.equal((await s.api('GET', '/v3/groups', { token: u.token })).status, 200, 'the new one does');
    assert.equal((await s.api('DELETE', `/v3.0/OS-ROLE/roles/${role}`, { token: a.token })).status, 204);
    assert.equal((await s.api('GET', '/v3/groups', { token: u.token })).status, 403, 'deleted at once');
  });

  test('a password change ends the sessions; a lockout shows in the user at once', async () => {
    const u = await newUser('lou');
    for (let i = 0; i < 3; i++) assert.equal((await s.api('GET', `/v3/users/${u.id}`, { token: u.token })).status, 200);
    assert.equal((await s.api('GET', `/v3/users/${u.id}`, { token: a.token })).json.user.is_locked, false);
    for (let i = 0; i < 5; i++) assert.equal((await s.login(a.name, 'lou', 'Wrong-Passw0rd!')).status, 401);
    assert.equal((await s.api('GET', `/v3/users/${u.id}`, { token: a.token })).json.user.is_locked, true, 'locked at once');
    assert.equal((await s.api('PUT', `/v3.0/OS-USER/users/${u.id}`, { token: a.token, body: { user: { password: 'An0ther-Passw0rd!' } } })).status, 200);
    assert.equal((await s.api('GET', `/v3/users/${u.id}`, { token: u.token })).status, 401, 'the old session ended at once');
    assert.equal((await s.api('GET', `/v3/users/${u.id}`, { token: a.token })).json.user.is_locked, false, 'the new password unlocked it');
  });

  test('temporary credentials never outlive what made them, and a password change ends them', async () => {
    const u = await newUser('tess');
    const first = await s.api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { token: u.token, body: { auth: { identity: { methods: ['token'], token: { duration_seconds: 900 } } } } });
    assert.equal(first.status, 201, first.text);
    const temp = { ak: first.json.credential.access, sk: first.json.credential.secret, token: first.json.credential.securitytoken };
    // Signed with the 15-minute key, a request for a day's key gets one that ends when the first does.
    const u0 = new URL(s.url);
    const body = JSON.stringify({ auth: { identity: { methods: ['token'], token: { duration_seconds: 86400 } } } });
    const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', sha256: Sha256, credentials: { accessKeyId: temp.ak, secretAccessKey: temp.sk, sessionToken: temp.token } });
    const r = await signer.sign({ method: 'POST', protocol: 'http:', hostname: u0.hostname, port: Number(u0.port), path: '/v3.0/OS-CREDENTIAL/securitytokens', query: {}, headers: { host: u0.host, 'content-type': 'application/json' }, body });
    const res = await fetch(`${s.url}/v3.0/OS-CREDENTIAL/securitytokens`, { method: 'POST', headers: r.headers as Record<string, string>, body });
    assert.equal(res.status, 201);
    const second = (await res.json()) as { credential: { access: string; secret: string; securitytoken: string; expires_at: string } };
    assert.ok(Date.parse(second.credential.expires_at) <= Date.parse(first.json.credential.expires_at), `${second.credential.expires_at} outlives ${first.json.credential.expires_at}`);
    assert.equal(await signedGet(`/v3/users/${u.id}`, temp), 200);
    // A password change ends the sessions and the temporary keys they made.
    assert.equal((await s.api('PUT', `/v3.0/OS-USER/users/${u.id}`, { token: a.token, body: { user: { password: 'An0ther-Passw0rd!' } } })).status, 200);
    assert.equal(await signedGet(`/v3/users/${u.id}`, temp), 401);
    assert.equal(await signedGet(`/v3/users/${u.id}`, { ak: second.credential.access, sk: second.credential.secret, token: second.credential.securitytoken }), 401);
  });

  test('token and temporary-key expiry and policy conditions are judged on every request, against the clock', async () => {
    const u = await newUser('tim');
    const soon = new Date(Date.now() + 3_600_000).toISOString();
    await groupWithRole('daytime', { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:listUsers'], Condition: { DateLessThan: { 'g:CurrentTime': [soon] } } }] }, u.id);
    const tmp = await s.api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { token: u.token, body: { auth: { identity: { methods: ['token'], token: { duration_seconds: 900 } } } } });
    assert.equal(tmp.status, 201);
    const temp = { ak: tmp.json.credential.access, sk: tmp.json.credential.secret, token: tmp.json.credential.securitytoken };
    try {
      for (let i = 0; i < 3; i++) {
        assert.equal((await s.api('GET', '/v3/users', { token: u.token })).status, 200);
        assert.equal(await signedGet(`/v3/users/${u.id}`, temp), 200);
      }
      offset = 901_000;
      assert.equal(await signedGet(`/v3/users/${u.id}`, temp), 401, 'the temporary key expired');
      offset = 2 * 3_600_000;
      assert.equal((await s.api('GET', '/v3/users', { token: u.token })).status, 403, 'the condition no longer holds');
      offset = 0;
      assert.equal((await s.api('GET', '/v3/users', { token: u.token })).status, 200, 'and holds again');
      offset = 24 * 3_600_000 + 1_000;
      assert.equal((await s.api('GET', `/v3/users/${u.id}`, { token: u.token })).status, 401, 'the token expired');
    } finally {
      offset = 0;
    }
  });
});

// ---------------------------------------------------------------- two nodes on one database

/** A SigV4-signed request as the edge hands it to IamService. */
async function signedInput(key: { ak: string; sk: string }, p: string): Promise<SignedRequestInput> {
  const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', credentials: { accessKeyId: key.ak, secretAccessKey: key.sk }, sha256: Sha256 });
  const r = await signer.sign({ method: 'GET', protocol: 'http:', hostname: '127.0.0.1', port: 8080, path: p, query: {}, headers: { host: '127.0.0.1:8080', 'x-custos-nonce': randomUUID() } });
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.headers)) headers[k.toLowerCase()] = v;
  return { method: 'GET', path: p, query: '', headers, body: Buffer.alloc(0) };
}

/** Waits out the bound (plus the time one epoch read may take), then runs `check`. */
async function afterTheBound(check: () => Promise<void>) {
  await sleep(IAM_MAX_STALENESS_MS + 20);
  await check();
}

describe('IAM cache across nodes: another node honours a change within the bound, without any poll timer', () => {
  let n1: Services;
  let n2: Services;
  let iam1: IamService;
  let iam2: IamService;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let dataDir: string;

  before(async () => {
    database = await freshDatabase();
    dataDir = mkdtempSync(path.join(tmpdir(), 'custos-nodes-'));
    const config = loadConfig({ env: {}, flags: { dataDir, port: 0, ...(database.url ? { databaseUrl: database.url } : {}) } });
    // openServices starts no timers: only the request path keeps node 2's cache honest here.
    n1 = await openServices(config);
    n2 = await openServices(config);
    iam1 = n1.iam;
    iam2 = n2.iam;
    await iam1.bootstrap();
  });
  after(async () => {
    await n2?.close();
    await n1?.close();
    await database?.drop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test('a revoked token, a detached policy and a disabled access key', async () => {
    const { account, adminUserId } = await iam1.createAccount({ name: `nodes${randomUUID().slice(0, 8)}`, adminName: 'admin', adminPassword: PASSWORD });
    const login = () => iam1.login({ accountName: account.name, userName: 'admin', password: PASSWORD, scope: { domain: true } }, ['password']);
    const { token } = await login();
    const { token: second } = await login();
    const { row, secret } = await iam1.createAccessKey(account.id, adminUserId, 'nodes');
    const key = { ak: row.access_key, sk: secret };

    // Warm node 2 and show that it answers from its cache.
    for (let i = 0; i < 3; i++) {
      await iam2.authenticateToken(token);
      await iam2.authenticateSigned(await signedInput(key, '/v3/users'));
    }
    const p2 = await iam2.authenticateToken(second);
    assert.equal((await iam2.authorize(p2, 'iam:users:listUsers', null, { sourceIp: '127.0.0.1' })).effect, 'allow');
    const hits = iam2.cache.stats.hits;
    await iam2.authenticateToken(token);
    assert.equal((await iam2.authorize(p2, 'iam:users:listUsers', null, { sourceIp: '127.0.0.1' })).effect, 'allow');
    assert.ok(iam2.cache.stats.hits >= hits + 2, 'node 2 served from its cache');

    assert.equal(await iam1.revokeToken(token), true);
    await assert.rejects(iam1.authenticateToken(token), /revoked/, 'node 1: at once');
    await afterTheBound(() => assert.rejects(iam2.authenticateToken(token), /revoked/, 'node 2: within the bound'));

    const adminGroup = (await iam1.listGroups(account.id, 'admin'))[0]!.id;
    assert.equal(await iam1.detachPolicy(account.id, FULL_ACCESS_POLICY_ID, 'group', adminGroup, null), true);
    await afterTheBound(async () => {
      const p = await iam2.authenticateToken(second);
      assert.equal((await iam2.authorize(p, 'iam:users:listUsers', null, { sourceIp: '127.0.0.1' })).effect, 'implicit-deny', 'node 2: the detached policy no longer applies');
    });

    await iam1.updateAccessKey(account.id, key.ak, { status: 'inactive' });
    await afterTheBound(async () => {
      await assert.rejects(iam2.authenticateSigned(await signedInput(key, '/v3/users')), /not active/, 'node 2: the disabled key is refused');
    });
  });
});

describe('IAM cache across servers: a disabled access key', { skip: DB === 'sqlite' ? 'several servers need PostgreSQL' : false }, () => {
  test('is refused by the other server within the bound', async () => {
    const database = await freshDatabase();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-servers-'));
    const s1 = await startTestServer({ database, dataDir });
    const s2 = await startTestServer({ database, dataDir, join: true });
    try {
      s = s1;
      a = await s1.createTenant();
      const key = await newKey(a.adminUserId);
      const p = `/v3/users/${a.adminUserId}`;
      for (let i = 0; i < 3; i++) assert.equal(await signedGet(p, key, s2.url), 200);
      assert.equal((await s1.api('PUT', `/v3.0/OS-CREDENTIAL/credentials/${key.ak}`, { token: a.token, body: { credential: { status: 'inactive' } } })).status, 200);
      assert.equal(await signedGet(p, key, s1.url), 401, 'at once on the node that made the change');
      await afterTheBound(async () => assert.equal(await signedGet(p, key, s2.url), 401, 'within the bound on the other'));
    } finally {
      await s2.stop();
      await s1.stop();
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

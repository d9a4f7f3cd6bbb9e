// AK/SK-signed requests over real HTTP, signed by the clouds' own signers: the Huawei SDK's
// SDK-HMAC-SHA256 signer and the AWS SDK's SigV4 signer (header and presigned URL).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { AKSKSigner } from '@huaweicloud/huaweicloud-sdk-core/auth/AKSKSigner.js';
import { BasicCredentials } from '@huaweicloud/huaweicloud-sdk-core/auth/BasicCredentials.js';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';

let s: TestServer;
let t: Tenant;
let ak: string;
let sk: string;
let clock = Date.now();

before(async () => {
  s = await startTestServer({ now: () => clock });
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId, description: 'signing tests' } } });
  assert.equal(r.status, 201);
  ak = r.json.credential.access;
  sk = r.json.credential.secret;
});
after(() => s?.close());

interface Sent {
  status: number;
  json: any;
}
/** Plain node:http, so the signed Host header and body go out exactly as signed. */
function send(method: string, pathAndQuery: string, headers: Record<string, string>, body?: string): Promise<Sent> {
  const u = new URL(s.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path: pathAndQuery, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: any;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function huaweiSign(method: string, path: string, opts: { query?: Record<string, string>; body?: unknown; headers?: Record<string, string>; secret?: string; access?: string; token?: string } = {}) {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(opts.headers ?? {}) };
  if (opts.token) headers['X-Security-Token'] = opts.token;
  const cred = new BasicCredentials().withAk(opts.access ?? ak).withSk(opts.secret ?? sk);
  const signed = AKSKSigner.sign({ endpoint: `${s.url}${path}`, method, headers, queryParams: opts.query ?? {}, data: opts.body } as never, cred) as Record<string, string>;
  const qs = new URLSearchParams(opts.query ?? {}).toString();
  return { path: qs ? `${path}?${qs}` : path, headers: signed, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) };
}

async function sigv4Sign(method: string, path: string, opts: { query?: Record<string, string>; body?: string; headers?: Record<string, string>; secret?: string; sessionToken?: string; date?: Date } = {}) {
  const u = new URL(s.url);
  const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', credentials: { accessKeyId: ak, secretAccessKey: opts.secret ?? sk, ...(opts.sessionToken ? { sessionToken: opts.sessionToken } : {}) }, sha256: Sha256 });
  const headers: Record<string, string> = { host: u.host, ...(opts.headers ?? {}) };
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const req = await signer.sign({ method, protocol: 'http:', hostname: u.hostname, port: Number(u.port), path, query: opts.query ?? {}, headers, ...(opts.body !== undefined ? { body: opts.body } : {}) }, opts.date ? { signingDate: opts.date } : {});
  const qs = new URLSearchParams(opts.query ?? {}).toString();
  return { path: qs ? `${path}?${qs}` : path, headers: req.headers as Record<string, string>, body: opts.body };
}

describe('Huawei SDK-HMAC-SHA256', () => {
  test('a signed GET with a query string is accepted', async () => {
    const r = huaweiSign('GET', '/v3/users', { query: { domain_id: t.accountId, name: 'admin' } });
    const res = await send('GET', r.path, r.headers);
    assert.equal(res.status, 200);
    assert.deepEqual(res.json.users.map((u: any) => u.name), ['admin']);
  });

  test('a signed POST with a JSON body is accepted and acts', async () => {
    const r = huaweiSign('POST', '/v3/groups', { body: { group: { name: 'signed-group', description: 'x' } } });
    const res = await send('POST', r.path, r.headers, r.body);
    assert.equal(res.status, 201, JSON.stringify(res.json));
    assert.equal(res.json.group.name, 'signed-group');
  });

  test('a tampered body is refused and nothing is created', async () => {
    const r = huaweiSign('POST', '/v3/groups', { body: { group: { name: 'innocent', description: 'x' } } });
    const res = await send('POST', r.path, r.headers, JSON.stringify({ group: { name: 'evil', description: 'x' } }));
    assert.equal(res.status, 401);
    assert.match(res.json.error_msg, /SignatureDoesNotMatch/);
    const list = await s.api('GET', '/v3/groups?name=evil', { token: t.token });
    assert.equal(list.json.groups.length, 0);
  });

  test('a tampered signed header is refused', async () => {
    const r = huaweiSign('GET', '/v3/users', { headers: { 'x-project-id': t.projects[0]!.id } });
    const key = Object.keys(r.headers).find((k) => k.toLowerCase() === 'x-project-id')!;
    const res = await send('GET', r.path, { ...r.headers, [key]: t.projects[1]!.id });
    assert.equal(res.status, 401);
  });

  test('a tampered query is refused', async () => {
    const r = huaweiSign('GET', '/v3/users', { query: { name: 'admin' } });
    const res = await send('GET', '/v3/users?name=someone', r.headers);
    assert.equal(res.status, 401);
  });

  test('a replayed request is refused the second time', async () => {
    const r = huaweiSign('GET', '/v3/users');
    assert.equal((await send('GET', r.path, r.headers)).status, 200);
    const again = await send('GET', r.path, r.headers);
    assert.equal(again.status, 401);
    assert.match(again.json.error_msg, /Replay/);
  });

  test('the same signed request sent several times at once is accepted exactly once', async () => {
    const r = huaweiSign('GET', '/v3/users', { headers: { 'x-custos-nonce': 'concurrent-replay' } });
    const results = await Promise.all(Array.from({ length: 6 }, () => send('GET', r.path, r.headers)));
    assert.deepEqual(results.map((x) => x.status).sort(), [200, 401, 401, 401, 401, 401], JSON.stringify(results.map((x) => x.json?.error_msg)));
  });

  test('a request signed more than 15 minutes before the server time is refused', async () => {
    const r = huaweiSign('GET', '/v3/users');
    clock += 16 * 60_000;
    try {
      const res = await send('GET', r.path, r.headers);
      assert.equal(res.status, 403);
      assert.match(res.json.error_msg, /RequestTimeTooSkewed/);
    } finally {
      clock -= 16 * 60_000;
    }
  });

  test('a wrong secret, an unknown key and a disabled key are 401', async () => {
    assert.equal((await send('GET', '/v3/users', huaweiSign('GET', '/v3/users', { secret: 'x'.repeat(40) }).headers)).status, 401);
    assert.equal((await send('GET', '/v3/users', huaweiSign('GET', '/v3/users', { access: 'NOSUCHKEY00000000000' }).headers)).status, 401);
    const k = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId, description: 'to disable' } } });
    const [a2, s2] = [k.json.credential.access, k.json.credential.secret];
    assert.equal((await send('GET', '/v3/users', huaweiSign('GET', '/v3/users', { access: a2, secret: s2 }).headers)).status, 200);
    const d = await s.api('PUT', `/v3.0/OS-CREDENTIAL/credentials/${a2}`, { token: t.token, body: { credential: { status: 'inactive' } } });
    assert.equal(d.status, 200);
    assert.equal((await send('GET', '/v3/users', huaweiSign('GET', '/v3/users', { access: a2, secret: s2 }).headers)).status, 401);
    assert.equal((await s.api('DELETE', `/v3.0/OS-CREDENTIAL/credentials/${a2}`, { token: t.token })).status, 204);
  });

  test('malformed Authorization headers are 401, never 500', async () => {
    for (const h of ['SDK-HMAC-SHA256', 'SDK-HMAC-SHA256 Access=X', 'SDK-HMAC-SHA256 Access=X, SignedHeaders=Host, Signature=zz', 'Basic Zm9vOmJhcg==', 'AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00']) {
      const res = await send('GET', '/v3/users', { authorization: h, 'x-sdk-date': '20260101T000000Z' });
      assert.equal(res.status, 401, h);
      assert.ok(res.json.error_msg, h);
    }
  });

  test('temporary credentials work only with their security token', async () => {
    const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { token: t.token, body: { auth: { identity: { methods: ['token'], token: { duration_seconds: 900 } } } } });
    assert.equal(r.status, 201);
    const c = r.json.credential;
    const ok = huaweiSign('GET', '/v3/users', { access: c.access, secret: c.secret, token: c.securitytoken });
    assert.equal((await send('GET', ok.path, ok.headers)).status, 200);
    const none = huaweiSign('GET', '/v3/users', { access: c.access, secret: c.secret });
    assert.equal((await send('GET', none.path, none.headers)).status, 401);
    clock += 901_000;
    try {
      const late = huaweiSign('GET', '/v3/users', { access: c.access, secret: c.secret, token: c.securitytoken, headers: { 'X-Sdk-Date': new Date(clock).toISOString() } });
      assert.equal((await send('GET', late.path, late.headers)).status, 401);
    } finally {
      clock -= 901_000;
    }
  });
});

describe('AWS Signature Version 4', () => {
  test('a header-signed GET and POST are accepted', async () => {
    const g = await sigv4Sign('GET', '/v3/users', { query: { name: 'admin' } });
    const gr = await send('GET', g.path, g.headers);
    assert.equal(gr.status, 200);
    assert.equal(gr.json.users[0].name, 'admin');
    const p = await sigv4Sign('POST', '/v3/groups', { body: JSON.stringify({ group: { name: 'v4-group' } }) });
    const pr = await send('POST', p.path, p.headers, p.body);
    assert.equal(pr.status, 201, JSON.stringify(pr.json));
  });

  test('tampered body, tampered signed header, replay and old timestamp are refused', async () => {
    const p = await sigv4Sign('POST', '/v3/groups', { body: JSON.stringify({ group: { name: 'v4-a' } }) });
    assert.equal((await send('POST', p.path, p.headers, JSON.stringify({ group: { name: 'v4-b' } }))).status, 401);

    const h = await sigv4Sign('GET', '/v3/users', { headers: { 'x-custos-note': 'one' } });
    assert.equal((await send('GET', h.path, { ...h.headers, 'x-custos-note': 'two' })).status, 401);

    const r = await sigv4Sign('GET', '/v3/users');
    assert.equal((await send('GET', r.path, r.headers)).status, 200);
    assert.equal((await send('GET', r.path, r.headers)).status, 401);

    const old = await sigv4Sign('GET', '/v3/users', { date: new Date(clock - 16 * 60_000) });
    const res = await send('GET', old.path, old.headers);
    assert.equal(res.status, 403);
    assert.match(res.json.error_msg, /RequestTimeTooSkewed/);
    const future = await sigv4Sign('GET', '/v3/users', { date: new Date(clock + 16 * 60_000) });
    assert.equal((await send('GET', future.path, future.headers)).status, 403);
  });

  test('a presigned URL works until it expires, and not with a changed query', async () => {
    const u = new URL(s.url);
    const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', credentials: { accessKeyId: ak, secretAccessKey: sk }, sha256: Sha256 });
    const pre = await signer.presign({ method: 'GET', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: '/v3/users', query: { name: 'admin' }, headers: { host: u.host } }, { expiresIn: 300, signingDate: new Date(clock) });
    const qs = new URLSearchParams(pre.query as Record<string, string>).toString();
    assert.equal((await send('GET', `/v3/users?${qs}`, { host: u.host })).status, 200);
    assert.equal((await send('GET', `/v3/users?${qs}`, { host: u.host })).status, 200, 'a presigned URL may be reused until it expires');
    assert.equal((await send('GET', `/v3/users?${qs.replace('name=admin', 'name=root')}`, { host: u.host })).status, 401);
    clock += 301_000;
    try {
      const late = await send('GET', `/v3/users?${qs}`, { host: u.host });
      assert.equal(late.status, 403);
      assert.match(late.json.error_msg, /RequestExpired/);
    } finally {
      clock -= 301_000;
    }
  });
});

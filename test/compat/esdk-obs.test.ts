// Huawei's OBS SDK for Node.js (esdk-obs-nodejs) against the S3/OBS listener, with its own OBS
// signature (`OBS AK:signature`, x-obs-* headers) and virtual-hosted-style addressing, as its users
// configure it: a server name, keys, and nothing else. The host `<bucket>.localhost` is resolved to
// the loopback listener by the HTTP agent handed to the SDK (no DNS here).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import ObsClient from 'esdk-obs-nodejs';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';

let s: TestServer;
let t: Tenant;
let agent: http.Agent;
/** What the SDK sent: the scheme of its Authorization header and the Host it addressed. */
const sent: { auth: string; host: string }[] = [];
let obs: { [op: string]: (p: Record<string, unknown>) => Promise<{ CommonMsg: { Status: number; Code?: string }; InterfaceResult?: any }> } & { close(): void };

before(async () => {
  s = await startTestServer({ config: { obsDomain: 'localhost' } });
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
  const port = new URL(s.custos.obsUrl).port;
  agent = new http.Agent({
    keepAlive: true,
    lookup: ((_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) => (opts?.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4))) as never,
  });
  const addRequest = (agent as unknown as { addRequest: (req: http.ClientRequest, o: unknown) => void }).addRequest.bind(agent);
  (agent as unknown as { addRequest: (req: http.ClientRequest, o: unknown) => void }).addRequest = (req, o) => {
    sent.push({ auth: String(req.getHeader('authorization') ?? '').split(' ')[0]!, host: String(req.getHeader('host') ?? '') });
    addRequest(req, o);
  };
  obs = new (ObsClient as unknown as new (o: Record<string, unknown>) => typeof obs)({
    access_key_id: r.json.credential.access, secret_access_key: r.json.credential.secret, server: `http://localhost:${port}`,
    signature: 'obs', is_signature_negotiation: false, http_agent: agent, max_retry_count: 0,
  });
});
after(async () => {
  obs?.close();
  await s?.close();
});

test('esdk-obs-nodejs with the OBS signature: bucket, put with metadata, get, list, delete', async () => {
  const ok = async (op: string, p: Record<string, unknown>) => {
    const r = await obs[op]!(p);
    assert.ok(r.CommonMsg.Status < 300, `${op}: ${r.CommonMsg.Status} ${r.CommonMsg.Code ?? ''}`);
    return r.InterfaceResult;
  };
  await ok('createBucket', { Bucket: 'esdk-bucket', Location: t.projects[0]!.name });
  await ok('headBucket', { Bucket: 'esdk-bucket' });
  const body = randomBytes(100_000).toString('base64');
  await ok('putObject', { Bucket: 'esdk-bucket', Key: 'dir/hello.txt', Body: body, Metadata: { team: 'obs' } });
  const got = await ok('getObject', { Bucket: 'esdk-bucket', Key: 'dir/hello.txt' });
  assert.equal(String(got.Content), body);
  assert.equal(got.Metadata?.team, 'obs');
  const listed = await ok('listObjects', { Bucket: 'esdk-bucket', Prefix: 'dir/' });
  assert.deepEqual(listed.Contents.map((c: { Key: string }) => c.Key), ['dir/hello.txt']);
  await ok('deleteObject', { Bucket: 'esdk-bucket', Key: 'dir/hello.txt' });
  const missing = await obs.getObject!({ Bucket: 'esdk-bucket', Key: 'dir/hello.txt' });
  assert.equal(missing.CommonMsg.Status, 404);
  await ok('deleteBucket', { Bucket: 'esdk-bucket' });
  assert.ok(sent.length >= 7 && sent.every((r) => r.auth === 'OBS'), `the OBS signature was used: ${JSON.stringify(sent.slice(0, 3))}`);
  assert.ok(sent.some((r) => r.host.startsWith('esdk-bucket.localhost')), 'virtual-hosted-style addressing was used');
});

test('a wrong secret key is refused with SignatureDoesNotMatch', async () => {
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
  const port = new URL(s.custos.obsUrl).port;
  const bad = new (ObsClient as unknown as new (o: Record<string, unknown>) => typeof obs)({
    access_key_id: r.json.credential.access, secret_access_key: 'not-the-secret-key-000000000000000000', server: `http://localhost:${port}`,
    signature: 'obs', is_signature_negotiation: false, http_agent: agent, max_retry_count: 0,
  });
  try {
    assert.ok((await obs.createBucket!({ Bucket: 'esdk-other' })).CommonMsg.Status < 300);
    const res = await bad.listObjects!({ Bucket: 'esdk-other' });
    assert.equal(res.CommonMsg.Status, 403);
    assert.equal(res.CommonMsg.Code, 'SignatureDoesNotMatch');
  } finally {
    bad.close();
  }
});

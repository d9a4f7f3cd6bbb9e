// CORS on the S3 listener: a bucket's CORS configuration through @aws-sdk/client-s3, the
// Access-Control-* headers of actual responses (what lets a browser page read them), and preflights,
// which carry no credentials and so are answered without looking at any bucket.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CreateBucketCommand, DeleteBucketCorsCommand, GetBucketCorsCommand, GetObjectCommand, PutBucketCorsCommand, PutObjectCommand, S3Client, type CORSRule,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { sdkFailure as failure, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { s3Client } from '../s3.js';

let s: TestServer;
let t: Tenant;
let client: S3Client;
let presigner: S3Client; // for presigned PUTs: requestChecksumCalculation WHEN_REQUIRED, as users do
const clients: S3Client[] = [];

async function s3For(server: TestServer, tenant: Tenant, extra: { requestChecksumCalculation?: 'WHEN_REQUIRED' } = {}): Promise<S3Client> {
  const c = await s3Client(server, tenant, { config: extra });
  clients.push(c);
  return c;
}

const RULES: CORSRule[] = [
  { ID: 'app', AllowedOrigins: ['https://app.example.com'], AllowedMethods: ['GET', 'HEAD', 'PUT'], AllowedHeaders: ['*'], ExposeHeaders: ['ETag', 'x-amz-version-id'], MaxAgeSeconds: 300 },
  { AllowedOrigins: ['https://*.partner.example'], AllowedMethods: ['GET'] },
];

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  client = await s3For(s, t);
  presigner = await s3For(s, t, { requestChecksumCalculation: 'WHEN_REQUIRED' });
  await client.send(new CreateBucketCommand({ Bucket: 'web' }));
  await client.send(new PutObjectCommand({ Bucket: 'web', Key: 'app.json', Body: '{"ok":true}', ContentType: 'application/json' }));
});
after(async () => {
  for (const c of clients) c.destroy();
  await s?.close();
});

const presigned = (key: string, bucket = 'web') => getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key }), { expiresIn: 300 });
const preflight = (path: string, headers: Record<string, string>) => fetch(`${s.custos.obsUrl}${path}`, { method: 'OPTIONS', headers });

describe('CORS', () => {
  test('a configuration is stored, returned, validated and deleted', async () => {
    assert.deepEqual(await failure(client.send(new GetBucketCorsCommand({ Bucket: 'web' }))), { status: 404, code: 'NoSuchCORSConfiguration' });
    await client.send(new PutBucketCorsCommand({ Bucket: 'web', CORSConfiguration: { CORSRules: RULES } }));
    const got = await client.send(new GetBucketCorsCommand({ Bucket: 'web' }));
    assert.equal(got.CORSRules?.length, 2);
    assert.deepEqual(got.CORSRules![0], { ID: 'app', AllowedOrigins: ['https://app.example.com'], AllowedMethods: ['GET', 'HEAD', 'PUT'], AllowedHeaders: ['*'], ExposeHeaders: ['ETag', 'x-amz-version-id'], MaxAgeSeconds: 300 });
    const bad: [CORSRule[], string][] = [
      [[{ AllowedOrigins: ['https://a.example'], AllowedMethods: ['TRACE'] }], 'InvalidRequest'],
      [[{ AllowedOrigins: ['https://*.*.example'], AllowedMethods: ['GET'] }], 'InvalidRequest'],
      [[{ AllowedOrigins: ['https://a.example'], AllowedMethods: ['GET'], AllowedHeaders: ['x-*-*'] }], 'InvalidRequest'],
    ];
    for (const [rules, code] of bad) assert.deepEqual(await failure(client.send(new PutBucketCorsCommand({ Bucket: 'web', CORSConfiguration: { CORSRules: rules } }))), { status: 400, code }, JSON.stringify(rules));
    assert.deepEqual(await failure(client.send(new PutBucketCorsCommand({ Bucket: 'web', CORSConfiguration: { CORSRules: [] } }))), { status: 400, code: 'MalformedXML' }, 'no rules');
    assert.equal((await client.send(new GetBucketCorsCommand({ Bucket: 'web' }))).CORSRules?.length, 2, 'refused configurations changed nothing');
    await client.send(new DeleteBucketCorsCommand({ Bucket: 'web' }));
    assert.equal((await failure(client.send(new GetBucketCorsCommand({ Bucket: 'web' })))).status, 404);
  });

  test('actual responses carry Access-Control-* only for an origin and method a rule allows, errors included', async () => {
    const url = await presigned('app.json');
    const plain = await fetch(url, { headers: { origin: 'https://app.example.com' } });
    assert.equal(plain.status, 200);
    assert.equal(plain.headers.get('access-control-allow-origin'), null, 'no configuration: no CORS headers');

    await client.send(new PutBucketCorsCommand({ Bucket: 'web', CORSConfiguration: { CORSRules: RULES } }));
    const app = await fetch(url, { headers: { origin: 'https://app.example.com' } });
    assert.equal(app.status, 200);
    assert.equal(await app.text(), '{"ok":true}');
    assert.equal(app.headers.get('access-control-allow-origin'), 'https://app.example.com');
    assert.equal(app.headers.get('access-control-allow-credentials'), 'true');
    assert.equal(app.headers.get('access-control-expose-headers'), 'ETag, x-amz-version-id');
    assert.equal(app.headers.get('access-control-max-age'), '300');
    assert.match(app.headers.get('vary') ?? '', /Origin/);

    const partner = await fetch(url, { headers: { origin: 'https://shop.partner.example' } });
    assert.equal(partner.headers.get('access-control-allow-origin'), 'https://shop.partner.example', 'the wildcard rule');
    assert.equal(partner.headers.get('access-control-expose-headers'), null);

    const evil = await fetch(url, { headers: { origin: 'https://evil.example' } });
    assert.equal(evil.status, 200, 'CORS does not authorize: the signed request is answered');
    assert.equal(evil.headers.get('access-control-allow-origin'), null, 'but a browser keeps the answer from the page');
    assert.match(evil.headers.get('vary') ?? '', /Origin/);
    await evil.arrayBuffer();

    // A method the matching origin's rules do not allow: the partner rule is GET only. (Presigned
    // without the SDK's default checksum, which would be the CRC32 of the empty body at signing time.)
    const put = await getSignedUrl(presigner, new PutObjectCommand({ Bucket: 'web', Key: 'upload.txt' }), { expiresIn: 60 });
    const partnerPut = await fetch(put, { method: 'PUT', body: 'from partner', headers: { origin: 'https://shop.partner.example' } });
    assert.equal(partnerPut.headers.get('access-control-allow-origin'), null);
    const appPut = await fetch(put, { method: 'PUT', body: 'from app', headers: { origin: 'https://app.example.com' } });
    assert.equal(appPut.status, 200);
    assert.equal(appPut.headers.get('access-control-allow-origin'), 'https://app.example.com');

    // An error (no such key) tells an allowed page why.
    const missing = await fetch(await presigned('missing.json'), { headers: { origin: 'https://app.example.com' } });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('access-control-allow-origin'), 'https://app.example.com');
    await missing.text();
  });

  test('preflights are answered alike for any bucket name, existing or not, so they reveal nothing', async () => {
    const ask = { origin: 'https://app.example.com', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'content-type, x-amz-meta-owner' };
    const existing = await preflight('/web/new.txt', ask);
    const missing = await preflight('/no-such-bucket-anywhere/new.txt', ask);
    for (const r of [existing, missing]) {
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('access-control-allow-origin'), 'https://app.example.com');
      assert.equal(r.headers.get('access-control-allow-methods'), 'PUT');
      assert.equal(r.headers.get('access-control-allow-headers'), 'content-type, x-amz-meta-owner');
      await r.arrayBuffer();
    }
    const noOrigin = await preflight('/web/new.txt', { 'access-control-request-method': 'GET' });
    assert.equal(noOrigin.status, 400);
    assert.match(await noOrigin.text(), /<Code>BadRequest<\/Code>/);
    const trace = await preflight('/web', { origin: 'https://app.example.com', 'access-control-request-method': 'TRACE' });
    assert.equal(trace.status, 403);
    assert.match(await trace.text(), /<Code>AccessForbidden<\/Code>/);
  });

  test('the installation can narrow which origins may preflight at all', async () => {
    const narrow = await startTestServer({ config: { obsCorsOrigins: ['https://*.example.com'] } });
    try {
      const ok = await fetch(`${narrow.custos.obsUrl}/any/key`, { method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET' } });
      assert.equal(ok.status, 200);
      await ok.arrayBuffer();
      const refused = await fetch(`${narrow.custos.obsUrl}/any/key`, { method: 'OPTIONS', headers: { origin: 'https://elsewhere.example.org', 'access-control-request-method': 'GET' } });
      assert.equal(refused.status, 403);
      assert.equal(refused.headers.get('access-control-allow-origin'), null);
      await refused.arrayBuffer();
    } finally {
      await narrow.close();
    }
  });

  test('another tenant cannot read, set or delete a bucket\'s CORS configuration', async () => {
    const other = await s3For(s, await s.createTenant());
    assert.equal((await failure(other.send(new GetBucketCorsCommand({ Bucket: 'web' })))).status, 404);
    assert.equal((await failure(other.send(new PutBucketCorsCommand({ Bucket: 'web', CORSConfiguration: { CORSRules: RULES } })))).status, 404);
    assert.equal((await failure(other.send(new DeleteBucketCorsCommand({ Bucket: 'web' })))).status, 404);
    assert.equal((await client.send(new GetBucketCorsCommand({ Bucket: 'web' }))).CORSRules?.length, 2);
  });
});

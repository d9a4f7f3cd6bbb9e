// Public buckets: reads without credentials, only where the owner lifted Block Public Access and a
// bucket policy lets anyone (Principal "*") in. New buckets block it, a refused request tells nothing
// about which buckets exist, writes always need credentials, and public names are unique across
// accounts while private ones stay per account.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import {
  CreateBucketCommand, DeleteBucketPolicyCommand, DeletePublicAccessBlockCommand, GetBucketPolicyCommand, GetBucketPolicyStatusCommand, GetObjectCommand,
  GetPublicAccessBlockCommand, ListObjectsV2Command, PutBucketCorsCommand, PutBucketPolicyCommand, PutObjectCommand, PutPublicAccessBlockCommand, S3Client,
} from '@aws-sdk/client-s3';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { createHash } from 'node:crypto';
import { sdkFailure as failure, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { accessKey, s3Client } from '../s3.js';

let s: TestServer;
let a: Tenant;
let b: Tenant;
let ownerA: S3Client;
let ownerB: S3Client;
let anonymous: S3Client;
let signerA: SignatureV4;
let signerB: SignatureV4;

/** A plain HTTP request with no credentials at all, as a browser or curl sends it. */
function raw(method: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> {
  const u = new URL(s.custos.obsUrl);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}
/** A PUT of bucket subresources with a raw body, SigV4-signed by a tenant's key (the payload hash signed too). */
async function signedPutWith(signer: SignatureV4, pathAndQuery: string, body: string): Promise<{ status: number; body: string }> {
  const u = new URL(s.custos.obsUrl);
  const [p, q] = pathAndQuery.split('?') as [string, string];
  const req = await signer.sign({
    method: 'PUT', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: p, query: Object.fromEntries(q.split('&').map((k) => [k, ''])),
    headers: { host: u.host, 'x-amz-content-sha256': createHash('sha256').update(body).digest('hex') },
  });
  const res = await fetch(`${s.custos.obsUrl}${pathAndQuery}`, { method: 'PUT', headers: req.headers as Record<string, string>, body });
  return { status: res.status, body: await res.text() };
}
const signedPut = (pathAndQuery: string, body: string) => signedPutWith(signerB, pathAndQuery, body);
const signedPutA = (pathAndQuery: string, body: string) => signedPutWith(signerA, pathAndQuery, body);
const code = (body: string) => /<Code>([^<]+)<\/Code>/.exec(body)?.[1];
const publicRead = (bucket: string, prefix = '') => ({ Version: '2012-10-17', Statement: [{ Sid: 'PublicRead', Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: `arn:aws:s3:::${bucket}/${prefix}*` }] });
const putPolicy = (c: S3Client, bucket: string, policy: unknown) => c.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
const isPublic = async (c: S3Client, bucket: string) => (await c.send(new GetBucketPolicyStatusCommand({ Bucket: bucket }))).PolicyStatus?.IsPublic;

before(async () => {
  s = await startTestServer({ config: { obsDomain: 'localhost' } });
  a = await s.createTenant();
  b = await s.createTenant();
  const credentialsA = await accessKey(s, a);
  ownerA = await s3Client(s, a, { credentials: credentialsA });
  signerA = new SignatureV4({ service: 's3', region: a.projects[0]!.name, credentials: credentialsA, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  const credentialsB = await accessKey(s, b);
  ownerB = await s3Client(s, b, { credentials: credentialsB });
  signerB = new SignatureV4({ service: 's3', region: b.projects[0]!.name, credentials: credentialsB, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  // The AWS SDK's way to send a request unsigned: a signer that leaves it as it is.
  anonymous = new S3Client({ endpoint: s.custos.obsUrl, region: a.projects[0]!.name, forcePathStyle: true, credentials: { accessKeyId: 'unused', secretAccessKey: 'unused' }, signer: { sign: async (r) => r } });
  await ownerA.send(new CreateBucketCommand({ Bucket: 'site' }));
  await ownerA.send(new PutObjectCommand({ Bucket: 'site', Key: 'pub/index.html', Body: '<h1>hello</h1>', ContentType: 'text/html' }));
  await ownerA.send(new PutObjectCommand({ Bucket: 'site', Key: 'private/keys.txt', Body: 'not for anyone' }));
});
after(async () => {
  for (const c of [ownerA, ownerB, anonymous]) c?.destroy();
  await s?.close();
});

describe('public access', () => {
  test('a new bucket blocks public access: no public policy, no read without credentials, and a refusal tells nothing', async () => {
    const block = await ownerA.send(new GetPublicAccessBlockCommand({ Bucket: 'site' }));
    assert.deepEqual(block.PublicAccessBlockConfiguration, { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true });
    assert.deepEqual(await failure(putPolicy(ownerA, 'site', publicRead('site'))), { status: 403, code: 'AccessDenied' }, 'BlockPublicPolicy refuses a public policy');
    assert.equal(await isPublic(ownerA, 'site'), false);
    const existing = await raw('GET', '/site/pub/index.html');
    const missing = await raw('GET', '/no-such-bucket/pub/index.html');
    assert.equal(existing.status, 403);
    assert.equal(code(existing.body), 'AccessDenied');
    assert.deepEqual([missing.status, code(missing.body)], [existing.status, code(existing.body)], 'an existing private bucket and a missing one answer alike');
    assert.doesNotMatch(existing.body, /hello/);
  });

  test('with the block lifted and a public policy, anyone reads what the policy names, and nothing else', async () => {
    await ownerA.send(new DeletePublicAccessBlockCommand({ Bucket: 'site' }));
    assert.deepEqual(await failure(ownerA.send(new GetPublicAccessBlockCommand({ Bucket: 'site' }))), { status: 404, code: 'NoSuchPublicAccessBlockConfiguration' });
    await putPolicy(ownerA, 'site', publicRead('site', 'pub/'));
    assert.equal(await isPublic(ownerA, 'site'), true);

    const got = await raw('GET', '/site/pub/index.html');
    assert.equal(got.status, 200, got.body);
    assert.equal(got.body, '<h1>hello</h1>');
    assert.equal(got.headers['content-type'], 'text/html');
    assert.equal(got.headers['x-amz-server-side-encryption'], 'aws:kms', 'stored encrypted as ever; decrypted for an allowed read');
    const part = await raw('GET', '/site/pub/index.html', { range: 'bytes=4-8' });
    assert.deepEqual([part.status, part.body], [206, 'hello']);
    assert.equal((await raw('HEAD', '/site/pub/index.html')).status, 200);
    // Virtual-hosted style names the bucket in the Host header.
    const u = new URL(s.custos.obsUrl);
    assert.equal((await raw('GET', '/pub/index.html', { host: `site.localhost:${u.port}` })).body, '<h1>hello</h1>');
    // The AWS SDK, unsigned.
    assert.equal(await (await anonymous.send(new GetObjectCommand({ Bucket: 'site', Key: 'pub/index.html' }))).Body!.transformToString(), '<h1>hello</h1>');

    // Outside the policy's prefix, listing, subresources and every write: refused.
    for (const [method, path] of [['GET', '/site/private/keys.txt'], ['GET', '/site'], ['GET', '/site?list-type=2'], ['GET', '/site/pub/index.html?tagging'], ['GET', '/site?policy'], ['PUT', '/site/pub/new.html'], ['DELETE', '/site/pub/index.html'], ['GET', '/']] as const) {
      const r = await raw(method, path);
      assert.equal(r.status, 403, `${method} ${path}: ${r.body}`);
      assert.equal(code(r.body), 'AccessDenied', `${method} ${path}`);
    }
    assert.equal(await (await ownerA.send(new GetObjectCommand({ Bucket: 'site', Key: 'pub/index.html' }))).Body!.transformToString(), '<h1>hello</h1>', 'the refused DELETE deleted nothing');
    // Credentials, once sent, must be valid: a bad signature is not read as "anonymous".
    const forged = new S3Client({ endpoint: s.custos.obsUrl, region: a.projects[0]!.name, forcePathStyle: true, credentials: { accessKeyId: 'AKIAFORGEDFORGED0000', secretAccessKey: 'x'.repeat(40) } });
    assert.equal((await failure(forged.send(new GetObjectCommand({ Bucket: 'site', Key: 'pub/index.html' })))).status, 403);
    forged.destroy();
  });

  test('a listing granted to anyone, and an explicit deny for anyone, decide as written', async () => {
    await putPolicy(ownerA, 'site', {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::site/pub/*' },
        { Effect: 'Allow', Principal: '*', Action: 's3:ListBucket', Resource: 'arn:aws:s3:::site' },
      ],
    });
    const listed = await anonymous.send(new ListObjectsV2Command({ Bucket: 'site' }));
    assert.deepEqual(listed.Contents?.map((o) => o.Key).sort(), ['private/keys.txt', 'pub/index.html']);
    await putPolicy(ownerA, 'site', {
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::site/pub/*' },
        { Effect: 'Deny', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::site/pub/*', Condition: { NotIpAddress: { 'aws:SourceIp': '203.0.113.0/24' } } },
      ],
    });
    assert.equal((await raw('GET', '/site/pub/index.html')).status, 403, 'denied from outside 203.0.113.0/24');
    assert.equal((await raw('GET', '/site')).status, 403, 'the listing statement is gone');
    await putPolicy(ownerA, 'site', publicRead('site', 'pub/'));
    assert.equal((await raw('GET', '/site/pub/index.html')).status, 200);
  });

  test('one operation per request: a second subresource cannot borrow the first one\'s permission', async () => {
    // Signed by the owner, who may do both: still refused, since which one was authorized must be the one that runs.
    for (const body of ['<PublicAccessBlockConfiguration/>', '<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>']) {
      const r = await signedPutA('/site?versioning&publicAccessBlock', body);
      assert.deepEqual([r.status, code(r.body)], [400, 'InvalidArgument'], r.body);
    }
    assert.equal(await isPublic(ownerA, 'site'), true, 'nothing changed');
    // Without credentials, ?versionId does not make ?uploadId (ListParts) a read of an object version.
    assert.equal((await raw('GET', '/site/pub/index.html?versionId=null')).status, 403, 'GetObjectVersion is not granted by s3:GetObject');
    await putPolicy(ownerA, 'site', { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Action: ['s3:GetObject', 's3:GetObjectVersion'], Resource: 'arn:aws:s3:::site/pub/*' }] });
    assert.equal((await raw('GET', '/site/pub/index.html?versionId=null')).body, '<h1>hello</h1>');
    const parts = await raw('GET', '/site/pub/index.html?versionId=null&uploadId=0123456789abcdef');
    assert.deepEqual([parts.status, code(parts.body)], [403, 'AccessDenied'], 'ListParts needs credentials');
    await putPolicy(ownerA, 'site', publicRead('site', 'pub/'));
  });

  test('CORS headers go with allowed reads only', async () => {
    await ownerA.send(new PutBucketCorsCommand({ Bucket: 'site', CORSConfiguration: { CORSRules: [{ AllowedOrigins: ['https://app.example'], AllowedMethods: ['GET'] }] } }));
    const ok = await raw('GET', '/site/pub/index.html', { origin: 'https://app.example' });
    assert.equal(ok.headers['access-control-allow-origin'], 'https://app.example');
    const refused = await raw('GET', '/site/private/keys.txt', { origin: 'https://app.example' });
    assert.equal(refused.status, 403);
    const missing = await raw('GET', '/no-such-bucket/private/keys.txt', { origin: 'https://app.example' });
    for (const h of ['access-control-allow-origin', 'vary']) assert.equal(refused.headers[h], missing.headers[h], `${h}: a refusal looks the same for a public bucket and a missing one`);
  });

  test('a change checked against a stale view of the bucket is refused, not applied', async () => {
    const stale = (await s.custos.obs.findBucket(a.accountId, 'site'))!;
    await ownerA.send(new PutPublicAccessBlockCommand({ Bucket: 'site', PublicAccessBlockConfiguration: { BlockPublicPolicy: true } }));
    // Checked against the settings as they were (nothing blocked), written after BlockPublicPolicy went on.
    await assert.rejects(s.custos.obs.setBucketPolicy(stale, { source: '{}', compiled: [] }), (e: Error & { code?: string }) => e.code === 'OperationAborted');
    assert.ok((await ownerA.send(new GetBucketPolicyCommand({ Bucket: 'site' }))).Policy, 'the policy in force is untouched');
    await ownerA.send(new DeletePublicAccessBlockCommand({ Bucket: 'site' }));
  });

  test("the owner's trail holds each read without credentials, as anonymous", async () => {
    const r = await raw('GET', '/site/pub/index.html', { 'x-request-id': 'anonymous-read-0001' });
    assert.equal(r.status, 200);
    const denied = await raw('GET', '/site/private/keys.txt', { 'x-request-id': 'anonymous-read-0002' });
    assert.equal(denied.status, 403);
    const traces = (await s.api('GET', `/v3/${a.projects[0]!.id}/traces?trace_type=data&limit=200`, { token: a.token })).json.traces as any[];
    const read = traces.find((t) => t.request_id === 'anonymous-read-0001');
    assert.ok(read, 'the read is in the owner\'s trail');
    assert.equal(read.trace_name, 'obs:object:GetObject');
    assert.equal(read.resource_name, 'pub/index.html');
    assert.equal(read.user.type, 'Anonymous');
    assert.equal(read.user.auth_method, 'none');
    assert.equal(read.code, '200');
    const refused = traces.find((t) => t.request_id === 'anonymous-read-0002');
    assert.equal(refused?.code, '403', 'a refused read is traced too');
  });

  test('public names are unique across accounts; private names stay per account', async () => {
    await ownerB.send(new CreateBucketCommand({ Bucket: 'site' }));
    await ownerB.send(new PutObjectCommand({ Bucket: 'site', Key: 'pub/index.html', Body: 'tenant b' }));
    await ownerB.send(new DeletePublicAccessBlockCommand({ Bucket: 'site' }));
    assert.deepEqual(await failure(putPolicy(ownerB, 'site', publicRead('site'))), { status: 409, code: 'OperationAborted' }, 'a second public bucket named site is refused');
    assert.deepEqual(await failure(ownerB.send(new GetBucketPolicyCommand({ Bucket: 'site' }))), { status: 404, code: 'NoSuchBucketPolicy' }, 'the refused policy was not stored');
    assert.equal((await raw('GET', '/site/pub/index.html')).body, '<h1>hello</h1>', "without credentials, site is still tenant a's public bucket");
    assert.equal(await (await ownerB.send(new GetObjectCommand({ Bucket: 'site', Key: 'pub/index.html' }))).Body!.transformToString(), 'tenant b', 'with credentials, a name is the caller\'s own bucket');

    // Once tenant a's bucket is private again, the name is free.
    await ownerA.send(new DeleteBucketPolicyCommand({ Bucket: 'site' }));
    assert.equal((await raw('GET', '/site/pub/index.html')).status, 403);
    await putPolicy(ownerB, 'site', publicRead('site'));
    assert.equal((await raw('GET', '/site/pub/index.html')).body, 'tenant b');
  });

  test('RestrictPublicBuckets closes a public bucket at once; BlockPublicPolicy keeps a policy in force but refuses a new public one', async () => {
    await ownerB.send(new PutPublicAccessBlockCommand({ Bucket: 'site', PublicAccessBlockConfiguration: { BlockPublicPolicy: true, RestrictPublicBuckets: true } }));
    assert.deepEqual((await ownerB.send(new GetPublicAccessBlockCommand({ Bucket: 'site' }))).PublicAccessBlockConfiguration, { BlockPublicAcls: false, IgnorePublicAcls: false, BlockPublicPolicy: true, RestrictPublicBuckets: true });
    assert.equal((await raw('GET', '/site/pub/index.html')).status, 403);
    assert.equal(await isPublic(ownerB, 'site'), false);
    assert.ok((await ownerB.send(new GetBucketPolicyCommand({ Bucket: 'site' }))).Policy, 'the existing policy stays');
    assert.deepEqual(await failure(putPolicy(ownerB, 'site', publicRead('site', 'pub/'))), { status: 403, code: 'AccessDenied' });
    await ownerB.send(new PutPublicAccessBlockCommand({ Bucket: 'site', PublicAccessBlockConfiguration: { BlockPublicPolicy: true, RestrictPublicBuckets: false } }));
    assert.equal((await raw('GET', '/site/pub/index.html')).body, 'tenant b', 'the policy in force opens it again');
    // A malformed configuration is refused and changes nothing.
    const bad = await fetch(`${s.custos.obsUrl}/site?publicAccessBlock`, { method: 'PUT', body: '<PublicAccessBlockConfiguration><BlockPublicPolicy>perhaps</BlockPublicPolicy></PublicAccessBlockConfiguration>' });
    assert.equal(bad.status, 403, 'without credentials, not even parsed');
    assert.deepEqual(await failure(ownerB.send(new PutPublicAccessBlockCommand({ Bucket: 'site', PublicAccessBlockConfiguration: { BlockPublicPolicy: 'perhaps' as unknown as boolean } }))), { status: 400, code: 'MalformedXML' });
    // Bodies that are not a configuration: text, nested elements, a repeated flag, another document.
    for (const body of [
      '<PublicAccessBlockConfiguration>off</PublicAccessBlockConfiguration>',
      '<PublicAccessBlockConfiguration><RestrictPublicBuckets><Value>false</Value></RestrictPublicBuckets></PublicAccessBlockConfiguration>',
      '<PublicAccessBlockConfiguration><BlockPublicPolicy>false</BlockPublicPolicy><BlockPublicPolicy>false</BlockPublicPolicy></PublicAccessBlockConfiguration>',
      '<PublicAccessBlockConfiguration><BlockEverything>true</BlockEverything></PublicAccessBlockConfiguration>',
      '<Tagging><TagSet/></Tagging>',
      '<PublicAccessBlockConfiguration><BlockPublicPolicy>false',
    ]) {
      const r = await signedPut('/site?publicAccessBlock', body);
      assert.equal(r.status, 400, body);
      assert.equal(code(r.body), 'MalformedXML', body);
    }
    assert.deepEqual((await ownerB.send(new GetPublicAccessBlockCommand({ Bucket: 'site' }))).PublicAccessBlockConfiguration, { BlockPublicAcls: false, IgnorePublicAcls: false, BlockPublicPolicy: true, RestrictPublicBuckets: false }, 'unchanged');
  });
});

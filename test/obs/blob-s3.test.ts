// OBS with the upstream S3 blob backend: a full Custos server whose object content goes to a real
// S3-compatible server (s3rver on loopback), used through @aws-sdk/client-s3 as a user would. The
// upstream must only ever hold ciphertext, lose a blob when its object is deleted, and be cleaned of
// what a crashed node left behind.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  CompleteMultipartUploadCommand, CreateBucketCommand, CreateMultipartUploadCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand,
  S3Client, UploadPartCommand,
} from '@aws-sdk/client-s3';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { S3RVER_CREDENTIALS, startUpstream, type Upstream } from '../store/s3rver.js';

const MiB = 1024 * 1024;
const PREFIX = 'custos/';
const AK_ENV = 'CUSTOS_TEST_UPSTREAM_AK';
const SK_ENV = 'CUSTOS_TEST_UPSTREAM_SK';
let up: Upstream;
let s: TestServer;
let t: Tenant;
let client: S3Client;
let upstream: S3Client;
let clock = Date.now();

/** Upstream files (s3rver's storage) that contain `needle`. */
function upstreamFilesHolding(needle: Buffer): string[] {
  return up.files().filter((f) => readFileSync(f).includes(needle));
}
async function blobIds(): Promise<string[]> {
  const ids: string[] = [];
  for await (const b of s.custos.blobs.list()) ids.push(b.id);
  return ids.sort();
}
async function body(r: { Body?: unknown }): Promise<Buffer> {
  return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
}

before(async () => {
  up = await startUpstream();
  process.env[AK_ENV] = S3RVER_CREDENTIALS.accessKeyId;
  process.env[SK_ENV] = S3RVER_CREDENTIALS.secretAccessKey;
  s = await startTestServer({
    now: () => clock,
    config: { blobBackend: 's3', blobS3Endpoint: up.endpoint, blobS3Bucket: up.bucket, blobS3PathStyle: true, blobS3Prefix: PREFIX, blobS3AccessKeyIdEnv: AK_ENV, blobS3SecretAccessKeyEnv: SK_ENV },
  });
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
  assert.equal(r.status, 201, r.text);
  client = new S3Client({ endpoint: s.custos.obsUrl, region: t.projects[0]!.name, forcePathStyle: true, credentials: { accessKeyId: r.json.credential.access, secretAccessKey: r.json.credential.secret } });
  upstream = new S3Client({ endpoint: up.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
  await client.send(new CreateBucketCommand({ Bucket: 'records' }));
});
after(async () => {
  client?.destroy();
  upstream?.destroy();
  await s?.close();
  await up?.close();
  delete process.env[AK_ENV];
  delete process.env[SK_ENV];
});

test('PUT, GET, ranges and multipart through Custos; the upstream holds only ciphertext', async () => {
  const canary = Buffer.from(`CANARY-${randomBytes(12).toString('hex')}-PLAINTEXT`);
  const small = Buffer.concat(Array.from({ length: 4000 }, () => canary));
  await client.send(new PutObjectCommand({ Bucket: 'records', Key: 'patients/canary.txt', Body: small, ContentType: 'text/plain' }));
  assert.deepEqual(await body(await client.send(new GetObjectCommand({ Bucket: 'records', Key: 'patients/canary.txt' }))), small);
  const range = await client.send(new GetObjectCommand({ Bucket: 'records', Key: 'patients/canary.txt', Range: 'bytes=70000-70099' }));
  assert.equal(range.ContentRange, `bytes 70000-70099/${small.length}`);
  assert.deepEqual(await body(range), small.subarray(70_000, 70_100));
  assert.equal((await client.send(new HeadObjectCommand({ Bucket: 'records', Key: 'patients/canary.txt' }))).ContentLength, small.length);

  // Multipart: 6 MiB of canary over two parts, read back across the part boundary.
  const big = Buffer.concat(Array.from({ length: Math.ceil((6 * MiB) / canary.length) }, () => canary)).subarray(0, 6 * MiB);
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'records', Key: 'patients/big.bin' }));
  const parts = [];
  for (const [i, chunk] of [big.subarray(0, 5 * MiB), big.subarray(5 * MiB)].entries()) {
    const p = await client.send(new UploadPartCommand({ Bucket: 'records', Key: 'patients/big.bin', UploadId, PartNumber: i + 1, Body: chunk }));
    parts.push({ PartNumber: i + 1, ETag: p.ETag });
  }
  await client.send(new CompleteMultipartUploadCommand({ Bucket: 'records', Key: 'patients/big.bin', UploadId, MultipartUpload: { Parts: parts } }));
  assert.deepEqual(await body(await client.send(new GetObjectCommand({ Bucket: 'records', Key: 'patients/big.bin' }))), big);
  const across = await client.send(new GetObjectCommand({ Bucket: 'records', Key: 'patients/big.bin', Range: `bytes=${5 * MiB - 50}-${5 * MiB + 49}` }));
  assert.deepEqual(await body(across), big.subarray(5 * MiB - 50, 5 * MiB + 50));

  // The content is upstream (one blob per PUT, one per part), none of it in the local data directory.
  assert.equal((await blobIds()).length, 3);
  assert.ok(!existsSync(path.join(s.dataDir, 'blobs')) || readdirSync(path.join(s.dataDir, 'blobs')).length === 0, 'no blob stored locally');
  // The scan finds plaintext when there is some (planted directly upstream, then removed) ...
  await upstream.send(new PutObjectCommand({ Bucket: up.bucket, Key: 'scan-check', Body: canary }));
  assert.equal(upstreamFilesHolding(canary).length, 1);
  await upstream.send(new DeleteObjectCommand({ Bucket: up.bucket, Key: 'scan-check' }));
  // ... and finds none of what went through Custos, nor the object keys.
  assert.deepEqual(upstreamFilesHolding(canary), [], 'plaintext reached the upstream');
  assert.deepEqual(upstreamFilesHolding(Buffer.from('patients/')), []);
  assert.ok(!up.files().some((f) => f.includes('patients') || f.includes('canary')), 'object keys reached the upstream');
});

test('deleting an object removes its blobs upstream', async () => {
  await client.send(new PutObjectCommand({ Bucket: 'records', Key: 'temp/one.txt', Body: randomBytes(10_000) }));
  const withIt = await blobIds();
  const filesWithIt = up.files().length;
  await client.send(new DeleteObjectCommand({ Bucket: 'records', Key: 'temp/one.txt' }));
  const without = await blobIds();
  assert.equal(without.length, withIt.length - 1);
  assert.ok(up.files().length < filesWithIt, 'the upstream object is gone from s3rver\'s storage');
  // A multipart object's parts go with it.
  await client.send(new DeleteObjectCommand({ Bucket: 'records', Key: 'patients/big.bin' }));
  assert.equal((await blobIds()).length, without.length - 2);
  await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'records', Key: 'patients/big.bin' })), { name: 'NoSuchKey' });
  // What remains still reads back.
  assert.equal((await client.send(new HeadObjectCommand({ Bucket: 'records', Key: 'patients/canary.txt' }))).$metadata.httpStatusCode, 200);
});

test('orphan collection removes what a node that died mid-upload left upstream, and nothing else', async () => {
  const before = await blobIds();
  // What a crash leaves: a blob written but never committed (its pending mark still there) ...
  const orphan = `orphan${randomBytes(8).toString('hex')}`;
  await s.custos.store.db.withTables<{ obs_pending_blobs: { blob_id: string; created_at: number } }>().insertInto('obs_pending_blobs').values({ blob_id: orphan, created_at: clock }).execute();
  await s.custos.blobs.write(orphan, Readable.from([randomBytes(5000)]));
  // ... and a large blob's multipart upload never completed.
  await upstream.send(new CreateMultipartUploadCommand({ Bucket: up.bucket, Key: `${PREFIX}crashed${randomBytes(8).toString('hex')}` }));
  assert.equal(up.openUploads().length, 1);
  assert.equal((await blobIds()).length, before.length + 1);

  // Too young: an upload may still be running on another node.
  assert.equal(await s.custos.obs.collectOrphans(), 0);
  assert.equal(await s.custos.blobs.clearInterruptedWrites(3_600_000, Date.now()), 0);
  clock += 2 * 3_600_000;
  assert.equal(await s.custos.obs.collectOrphans(), 1);
  assert.equal(await s.custos.blobs.clearInterruptedWrites(3_600_000, Date.now() + 2 * 3_600_000), 1);
  assert.deepEqual(await blobIds(), before, 'only the orphan went');
  assert.deepEqual(up.openUploads(), []);
  const r = await client.send(new GetObjectCommand({ Bucket: 'records', Key: 'patients/canary.txt' }));
  assert.ok((await body(r)).length > 0, 'committed objects are untouched');
});

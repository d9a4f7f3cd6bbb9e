// The upstream S3 blob store against a real S3-compatible server (s3rver) on loopback: the same
// behaviours as the local store (whole-or-nothing writes, range reads, listing, idempotent delete,
// cleanup after interrupted writes), multipart uploads with bounded memory, and the start-up check.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { Readable } from 'node:stream';
import { CreateMultipartUploadCommand, PutObjectCommand, S3Client, UploadPartCommand } from '@aws-sdk/client-s3';
import { loadConfig } from '../../src/config.js';
import { S3BlobStore, openS3BlobStore, type S3BlobStoreOptions } from '../../src/store/blobs-s3.js';
import { S3RVER_CREDENTIALS, startUpstream, type Upstream } from './s3rver.js';

const MiB = 1024 * 1024;
const PREFIX = 'custos/blobs/';
let up: Upstream;
let raw: S3Client;
const stores: S3BlobStore[] = [];

function options(extra: Partial<S3BlobStoreOptions> = {}): S3BlobStoreOptions {
  return { endpoint: up.endpoint, bucket: up.bucket, region: 'us-east-1', prefix: PREFIX, forcePathStyle: true, credentials: S3RVER_CREDENTIALS, ...extra };
}
async function open(extra: Partial<S3BlobStoreOptions> = {}): Promise<S3BlobStore> {
  const s = await S3BlobStore.open(options(extra));
  stores.push(s);
  return s;
}

before(async () => {
  up = await startUpstream();
  raw = new S3Client({ endpoint: up.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
});
after(async () => {
  for (const s of stores) await s.close();
  raw?.destroy();
  await up?.close();
});

test('write, read ranges, size, list under the prefix and an idempotent delete', async () => {
  const store = await open();
  const data = randomBytes(300_000);
  up.requests.length = 0;
  const { bytes } = await store.write('blob-0001', Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
  assert.equal(bytes, data.length);
  assert.deepEqual(up.requests, ['PUT object'], 'a blob smaller than a part is one PUT');
  assert.equal(await store.size('blob-0001'), data.length);
  assert.deepEqual(await store.readAt('blob-0001', 12_345, 1000), data.subarray(12_345, 13_345));
  assert.deepEqual(await store.readAt('blob-0001', data.length - 10, 100), data.subarray(data.length - 10), 'short at the end');
  assert.equal((await store.readAt('blob-0001', data.length, 100)).length, 0, 'nothing past the end');
  // Objects of others in the same bucket are not blobs.
  await raw.send(new PutObjectCommand({ Bucket: up.bucket, Key: 'elsewhere/blob-0009', Body: 'x' }));
  await raw.send(new PutObjectCommand({ Bucket: up.bucket, Key: `${PREFIX}nested/blob-0009`, Body: 'x' }));
  const listed: { id: string; modifiedAt: number }[] = [];
  for await (const b of store.list()) listed.push(b);
  assert.deepEqual(listed.map((b) => b.id), ['blob-0001']);
  assert.ok(Math.abs(listed[0]!.modifiedAt - Date.now()) < 60_000, 'modification time from the upstream');
  assert.equal(await store.size('blob-none'), null);
  await store.delete('blob-0001');
  await store.delete('blob-0001');
  assert.equal(await store.size('blob-0001'), null);
  await assert.rejects(store.write('../escape', Readable.from([data])), /invalid blob id/);
  await assert.rejects(store.readAt('blob-0001', 0, 10), 'reading a deleted blob fails');
});

test('a large blob goes up as a multipart upload with bounded memory, and exists only once complete', async () => {
  const partBytes = 5 * MiB;
  const inFlight = 2;
  const store = await open({ partBytes, partsInFlight: inFlight });
  const data = randomBytes(40 * MiB + 123);
  const before = up.acknowledgedPartBytes;
  let maxAhead = 0;
  let sizeMidway: number | null | undefined;
  up.requests.length = 0;
  const source = (async function* () {
    for (let at = 0; at < data.length; at += MiB) {
      if (at === 20 * MiB) sizeMidway = await store.size('blob-0002');
      yield data.subarray(at, at + MiB);
      maxAhead = Math.max(maxAhead, at + MiB - (up.acknowledgedPartBytes - before));
    }
  })();
  const { bytes } = await store.write('blob-0002', source);
  assert.equal(bytes, data.length);
  assert.equal(sizeMidway, null, 'nothing under the id while the upload is in progress');
  assert.ok(maxAhead <= (inFlight + 2) * partBytes, `the store read ${(maxAhead / MiB).toFixed(1)} MiB ahead of what the upstream acknowledged`);
  assert.equal(up.requests.filter((r) => r === 'PUT part').length, 9);
  assert.deepEqual([up.requests[0], up.requests.at(-1)], ['POST uploads', 'POST complete']);
  assert.equal(await store.size('blob-0002'), data.length);
  assert.deepEqual(await store.readAt('blob-0002', partBytes - 10, 20), data.subarray(partBytes - 10, partBytes + 10), 'across a part boundary');
  assert.deepEqual(await store.readAt('blob-0002', data.length - 200, 1000), data.subarray(data.length - 200));
  assert.deepEqual(up.openUploads(), []);
  await store.delete('blob-0002');
});

test('a write that fails midway, at the source or upstream, leaves nothing under the id and no open upload', async () => {
  const store = await open({ partBytes: 5 * MiB, partsInFlight: 2 });
  const failing = Readable.from((async function* () {
    for (let i = 0; i < 12; i++) yield randomBytes(MiB);
    throw new Error('client went away');
  })());
  up.requests.length = 0;
  await assert.rejects(store.write('blob-0003', failing), /client went away/);
  assert.ok(up.requests.includes('PUT part'), 'parts had been sent');
  assert.ok(up.requests.includes('DELETE abort'), 'the upload was aborted');
  assert.equal(await store.size('blob-0003'), null);
  assert.deepEqual(up.openUploads(), []);

  up.failPart = (key, n) => key.endsWith('blob-0004') && n === 2;
  try {
    await assert.rejects(store.write('blob-0004', Readable.from([randomBytes(18 * MiB)])), /injected by the test|InternalError/);
  } finally {
    up.failPart = undefined;
  }
  assert.equal(await store.size('blob-0004'), null);
  assert.deepEqual(up.openUploads(), []);
});

test('an upload a crash interrupted is aborted by housekeeping once it is old enough; others are left alone', async () => {
  const store = await open();
  const crashed = await raw.send(new CreateMultipartUploadCommand({ Bucket: up.bucket, Key: `${PREFIX}blob-0005` }));
  await raw.send(new UploadPartCommand({ Bucket: up.bucket, Key: `${PREFIX}blob-0005`, UploadId: crashed.UploadId, PartNumber: 1, Body: randomBytes(1000) }));
  await raw.send(new CreateMultipartUploadCommand({ Bucket: up.bucket, Key: 'elsewhere/blob-0006' }));
  assert.equal(up.openUploads().length, 2);
  assert.equal(await store.clearInterruptedWrites(3_600_000), 0, 'a young upload may still be in progress');
  assert.equal(await store.clearInterruptedWrites(3_600_000, Date.now() + 2 * 3_600_000), 1);
  assert.equal(up.openUploads().length, 1, 'the upload outside the prefix is not Custos\'s');
  assert.equal(await store.size('blob-0005'), null);
});

test('the start-up check names an unreachable upstream, refused credentials and a missing bucket, never a secret', async () => {
  const closedPort = await new Promise<number>((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
  await assert.rejects(S3BlobStore.open(options({ endpoint: `http://127.0.0.1:${closedPort}` })), (e: Error) => {
    assert.match(e.message, new RegExp(`cannot reach blob bucket "custos-blobs" at http://127.0.0.1:${closedPort}: ECONNREFUSED`));
    return true;
  });
  const secret = 'Wrong-Secret-Value-123';
  await assert.rejects(S3BlobStore.open(options({ credentials: { accessKeyId: 'NOT-A-KEY', secretAccessKey: secret }, credentialsSource: 'AK_VAR / SK_VAR' })), (e: Error) => {
    assert.match(e.message, /the upstream refused the credentials \(from AK_VAR \/ SK_VAR\) for blob bucket "custos-blobs"/);
    assert.ok(!e.message.includes(secret) && !e.message.includes('NOT-A-KEY'));
    return true;
  });
  await assert.rejects(S3BlobStore.open(options({ bucket: 'no-such-bucket' })), /blob bucket "no-such-bucket" at http:\/\/127\.0\.0\.1:\d+ does not exist/);

  const config = loadConfig({ env: {}, flags: { blobBackend: 's3', blobS3Endpoint: up.endpoint, blobS3Bucket: up.bucket, blobS3PathStyle: true, blobS3AccessKeyIdEnv: 'TEST_BLOB_AK', blobS3SecretAccessKeyEnv: 'TEST_BLOB_SK' } });
  await assert.rejects(openS3BlobStore(config, {}), /needs the upstream's access key id in TEST_BLOB_AK and its secret access key in TEST_BLOB_SK/);
  const store = await openS3BlobStore(config, { TEST_BLOB_AK: S3RVER_CREDENTIALS.accessKeyId, TEST_BLOB_SK: S3RVER_CREDENTIALS.secretAccessKey });
  stores.push(store);
  await store.write('blob-0007', Readable.from([Buffer.from('hello')]));
  assert.equal(await store.size('blob-0007'), 5);
});

test('configuration: fs by default, s3 settings from the environment, a bucket required, no credentials in the endpoint', () => {
  assert.equal(loadConfig({ env: {} }).blobBackend, 'fs');
  const c = loadConfig({
    env: {
      CUSTOS_BLOB_BACKEND: 's3', CUSTOS_BLOB_S3_ENDPOINT: 'https://s3.example.internal:9000', CUSTOS_BLOB_S3_BUCKET: 'custos-prod', CUSTOS_BLOB_S3_REGION: 'eu-west-0',
      CUSTOS_BLOB_S3_PREFIX: 'custos/blobs/', CUSTOS_BLOB_S3_PATH_STYLE: 'true', CUSTOS_BLOB_S3_ACCESS_KEY_ID_ENV: 'MY_AK', CUSTOS_BLOB_S3_SECRET_ACCESS_KEY_ENV: 'MY_SK',
    },
  });
  assert.deepEqual(
    [c.blobBackend, c.blobS3Endpoint, c.blobS3Bucket, c.blobS3Region, c.blobS3Prefix, c.blobS3PathStyle, c.blobS3AccessKeyIdEnv, c.blobS3SecretAccessKeyEnv, c.blobS3TlsVerify],
    ['s3', 'https://s3.example.internal:9000', 'custos-prod', 'eu-west-0', 'custos/blobs/', true, 'MY_AK', 'MY_SK', true],
  );
  assert.throws(() => loadConfig({ env: { CUSTOS_BLOB_BACKEND: 's3' } }), /blobBackend "s3" needs blobS3Bucket/);
  assert.throws(() => loadConfig({ env: { CUSTOS_BLOB_BACKEND: 'nfs' } }), /blobBackend/);
  assert.throws(
    () => loadConfig({ env: { CUSTOS_BLOB_BACKEND: 's3', CUSTOS_BLOB_S3_BUCKET: 'b1b', CUSTOS_BLOB_S3_ENDPOINT: 'https://AKID:hunter2secret@s3.example.internal' } }),
    (e: Error) => /blobS3Endpoint must be an http\(s\) URL without user, password/.test(e.message) && !e.message.includes('hunter2secret'),
  );
  assert.throws(() => loadConfig({ env: { CUSTOS_BLOB_S3_ENDPOINT: 'ftp://s3.example.internal' } }), /blobS3Endpoint/);
  assert.throws(() => loadConfig({ env: { CUSTOS_BLOB_S3_PREFIX: '/abs' } }), /blobS3Prefix/);
  assert.throws(() => loadConfig({ env: { CUSTOS_BLOB_S3_ACCESS_KEY_ID_ENV: 'not a name' } }), /blobS3AccessKeyIdEnv/);
});

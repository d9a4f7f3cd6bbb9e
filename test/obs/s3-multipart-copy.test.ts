// UploadPartCopy (a multipart object assembled from ranges of other objects, one of them an older
// version, one stored with SSE-C) and SSE-C multipart uploads, with @aws-sdk/client-s3.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateBucketCommand, CreateMultipartUploadCommand, GetObjectCommand, HeadObjectCommand,
  PutBucketVersioningCommand, PutObjectCommand, S3Client, UploadPartCommand, UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { sql } from 'kysely';
import { DB, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const MiB = 1024 * 1024;
let s: TestServer;
let t: Tenant;
let client: S3Client;
let theirs: S3Client;

async function s3For(tenant: Tenant): Promise<S3Client> {
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: tenant.token, body: { credential: { user_id: tenant.adminUserId } } });
  assert.equal(r.status, 201, r.text);
  return new S3Client({ endpoint: s.custos.obsUrl, region: tenant.projects[0]!.name, forcePathStyle: true, credentials: { accessKeyId: r.json.credential.access, secretAccessKey: r.json.credential.secret } });
}
before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  client = await s3For(t);
  theirs = await s3For(await s.createTenant());
  await client.send(new CreateBucketCommand({ Bucket: 'sources' }));
  await client.send(new PutBucketVersioningCommand({ Bucket: 'sources', VersioningConfiguration: { Status: 'Enabled' } }));
  await client.send(new CreateBucketCommand({ Bucket: 'assembled' }));
});
after(async () => {
  client?.destroy();
  theirs?.destroy();
  await s?.close();
});

const md5 = (b: Buffer) => `"${createHash('md5').update(b).digest('hex')}"`;
const bytesOf = async (r: { Body?: { transformToByteArray(): Promise<Uint8Array> } }) => Buffer.from(await r.Body!.transformToByteArray());
function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => (statSync(path.join(dir, f)).isDirectory() ? filesUnder(path.join(dir, f)) : [path.join(dir, f)]));
}

describe('UploadPartCopy and SSE-C multipart uploads', () => {
  test('UploadPartCopy: an object assembled from ranges of other objects (an older version, an SSE-C object) and an uploaded part', async () => {
    const a = randomBytes(7 * MiB + 123);
    const oldVersion = randomBytes(5 * MiB + 77);
    const b = randomBytes(64 * 1024 + 5);
    const customerKey = randomBytes(32);
    await client.send(new PutObjectCommand({ Bucket: 'sources', Key: 'a.bin', Body: a }));
    const v1 = await client.send(new PutObjectCommand({ Bucket: 'sources', Key: 'versioned.bin', Body: oldVersion }));
    await client.send(new PutObjectCommand({ Bucket: 'sources', Key: 'versioned.bin', Body: 'the newer version' }));
    await client.send(new PutObjectCommand({ Bucket: 'sources', Key: 'private.bin', Body: b, SSECustomerAlgorithm: 'AES256', SSECustomerKey: customerKey as unknown as string }));

    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'assembled', Key: 'whole.bin', ContentType: 'application/x-assembled' }));
    const copy = (PartNumber: number, CopySource: string, extra: Record<string, unknown> = {}) => client.send(new UploadPartCopyCommand({ Bucket: 'assembled', Key: 'whole.bin', UploadId, PartNumber, CopySource, ...extra }));
    // Part 1: 5 MiB from the middle of a.bin.
    const p1 = await copy(1, 'sources/a.bin', { CopySourceRange: `bytes=${MiB}-${6 * MiB - 1}` });
    assert.equal(p1.CopyPartResult?.ETag, md5(a.subarray(MiB, 6 * MiB)), 'the part ETag is the MD5 of the copied bytes');
    assert.ok(p1.CopyPartResult?.LastModified instanceof Date);
    // Part 2: the whole older version, by version id, if it still has the ETag we know.
    const p2 = await copy(2, `sources/versioned.bin?versionId=${v1.VersionId}`, { CopySourceIfMatch: v1.ETag });
    assert.equal(p2.CopySourceVersionId, v1.VersionId);
    assert.equal(p2.CopyPartResult?.ETag, md5(oldVersion));
    // Part 3: uploaded as usual.
    const uploaded = randomBytes(5 * MiB);
    const p3 = await client.send(new UploadPartCommand({ Bucket: 'assembled', Key: 'whole.bin', UploadId, PartNumber: 3, Body: uploaded }));
    // Part 4 (last, so it may be small): a range of an SSE-C object, decrypted with its key.
    const p4 = await copy(4, 'sources/private.bin', { CopySourceRange: 'bytes=100-40099', CopySourceSSECustomerAlgorithm: 'AES256', CopySourceSSECustomerKey: customerKey });

    // Refused: bad and out-of-bounds ranges, failed conditions, an SSE-C source without its key, another tenant's bucket.
    await assert.rejects(copy(5, 'sources/a.bin', { CopySourceRange: 'bytes=0-' }), { name: 'InvalidArgument' });
    await assert.rejects(copy(5, 'sources/a.bin', { CopySourceRange: `bytes=0-${a.length}` }), { name: 'InvalidArgument' });
    await assert.rejects(copy(5, 'sources/a.bin', { CopySourceRange: 'bytes=10-5' }), { name: 'InvalidArgument' });
    await assert.rejects(copy(5, 'sources/a.bin', { CopySourceIfMatch: '"0123456789abcdef0123456789abcdef"' }), { name: 'PreconditionFailed' });
    await assert.rejects(copy(5, 'sources/a.bin', { CopySourceIfNoneMatch: md5(a) }), { name: 'PreconditionFailed' });
    await assert.rejects(copy(5, 'sources/private.bin'), { name: 'InvalidRequest' });
    await assert.rejects(copy(5, 'sources/private.bin', { CopySourceSSECustomerAlgorithm: 'AES256', CopySourceSSECustomerKey: randomBytes(32) }), { name: 'AccessDenied' });
    await assert.rejects(copy(5, 'sources/none.bin'), { name: 'NoSuchKey' });
    await assert.rejects(theirs.send(new UploadPartCopyCommand({ Bucket: 'assembled', Key: 'whole.bin', UploadId, PartNumber: 5, CopySource: 'sources/a.bin' })), { name: 'NoSuchBucket' });

    const done = await client.send(new CompleteMultipartUploadCommand({
      Bucket: 'assembled', Key: 'whole.bin', UploadId,
      MultipartUpload: { Parts: [p1.CopyPartResult!.ETag!, p2.CopyPartResult!.ETag!, p3.ETag!, p4.CopyPartResult!.ETag!].map((ETag, i) => ({ PartNumber: i + 1, ETag })) },
    }));
    assert.match(done.ETag ?? '', /-4"$/);
    const expected = Buffer.concat([a.subarray(MiB, 6 * MiB), oldVersion, uploaded, b.subarray(100, 40100)]);
    const got = await client.send(new GetObjectCommand({ Bucket: 'assembled', Key: 'whole.bin' }));
    assert.equal(got.ContentType, 'application/x-assembled');
    const body = await bytesOf(got);
    assert.equal(body.length, expected.length);
    assert.ok(body.equals(expected), 'the assembled object is exactly the copied and uploaded bytes, in order');
    // A range across the copied parts' boundaries.
    const from = 5 * MiB - 10;
    const to = 5 * MiB + oldVersion.length + 10;
    assert.ok((await bytesOf(await client.send(new GetObjectCommand({ Bucket: 'assembled', Key: 'whole.bin', Range: `bytes=${from}-${to}` })))).equals(expected.subarray(from, to + 1)));
    // The sources are untouched.
    assert.ok((await bytesOf(await client.send(new GetObjectCommand({ Bucket: 'sources', Key: 'a.bin' })))).equals(a));
  });

  test('SSE-C multipart: every part must carry the upload\'s key; the object reads back only with it', async () => {
    const key = randomBytes(32);
    const ssec = { SSECustomerAlgorithm: 'AES256', SSECustomerKey: key as unknown as string };
    const created = await client.send(new CreateMultipartUploadCommand({ Bucket: 'assembled', Key: 'secret.bin', ...ssec }));
    assert.equal(created.SSECustomerAlgorithm, 'AES256');
    assert.equal(created.ServerSideEncryption, undefined);
    const UploadId = created.UploadId!;
    const first = randomBytes(5 * MiB + 3);
    const p1 = await client.send(new UploadPartCommand({ Bucket: 'assembled', Key: 'secret.bin', UploadId, PartNumber: 1, Body: first, ...ssec }));
    assert.equal(p1.SSECustomerAlgorithm, 'AES256');
    assert.equal(p1.SSECustomerKeyMD5, createHash('md5').update(key).digest('base64'));
    assert.notEqual(p1.ETag, md5(first), 'an SSE-C part\'s ETag is not its MD5');
    await assert.rejects(client.send(new UploadPartCommand({ Bucket: 'assembled', Key: 'secret.bin', UploadId, PartNumber: 2, Body: 'no key' })), { name: 'InvalidRequest' });
    await assert.rejects(client.send(new UploadPartCommand({ Bucket: 'assembled', Key: 'secret.bin', UploadId, PartNumber: 2, Body: 'other key', SSECustomerAlgorithm: 'AES256', SSECustomerKey: randomBytes(32) as unknown as string })), { name: 'InvalidArgument' });
    await assert.rejects(client.send(new UploadPartCopyCommand({ Bucket: 'assembled', Key: 'secret.bin', UploadId, PartNumber: 2, CopySource: 'sources/a.bin' })), { name: 'InvalidRequest' }, 'a copied part needs the key too');
    // A part copied from a KMS-encrypted object, re-encrypted under the customer's key.
    const p2 = await client.send(new UploadPartCopyCommand({ Bucket: 'assembled', Key: 'secret.bin', UploadId, PartNumber: 2, CopySource: 'sources/a.bin', CopySourceRange: 'bytes=0-999', ...ssec }));
    const a = await bytesOf(await client.send(new GetObjectCommand({ Bucket: 'sources', Key: 'a.bin' })));

    // The key is nowhere on disk or in the database while the upload is open.
    const dump = DB === 'sqlite'
      ? Buffer.concat(filesUnder(s.dataDir).map((f) => readFileSync(f)))
      : Buffer.from((await sql<{ r: string }>`select row_to_json(u)::text as r from obs_uploads u`.execute(s.custos.store.db)).rows.map((x) => x.r).join(''));
    assert.ok(!dump.includes(key) && !dump.includes(Buffer.from(key.toString('base64'))), 'the customer key is not stored');

    await client.send(new CompleteMultipartUploadCommand({ Bucket: 'assembled', Key: 'secret.bin', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag! }, { PartNumber: 2, ETag: p2.CopyPartResult!.ETag! }] } }));
    const expected = Buffer.concat([first, a.subarray(0, 1000)]);
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'assembled', Key: 'secret.bin' })), { name: 'InvalidRequest' });
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'assembled', Key: 'secret.bin', SSECustomerAlgorithm: 'AES256', SSECustomerKey: randomBytes(32) as unknown as string })), { name: 'AccessDenied' });
    await assert.rejects(client.send(new HeadObjectCommand({ Bucket: 'assembled', Key: 'secret.bin' })), (e: { $metadata: { httpStatusCode: number } }) => e.$metadata.httpStatusCode === 400);
    const got = await client.send(new GetObjectCommand({ Bucket: 'assembled', Key: 'secret.bin', ...ssec }));
    assert.equal(got.SSECustomerAlgorithm, 'AES256');
    assert.ok((await bytesOf(got)).equals(expected));
    const across = await client.send(new GetObjectCommand({ Bucket: 'assembled', Key: 'secret.bin', Range: `bytes=${first.length - 5}-${first.length + 5}`, ...ssec }));
    assert.ok((await bytesOf(across)).equals(expected.subarray(first.length - 5, first.length + 6)), 'a range across the parts');

    // A KMS upload refuses a part that brings a customer key.
    const { UploadId: kms } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'assembled', Key: 'kms.bin' }));
    await assert.rejects(client.send(new UploadPartCommand({ Bucket: 'assembled', Key: 'kms.bin', UploadId: kms, PartNumber: 1, Body: 'x', ...ssec })), { name: 'InvalidArgument' });
    await client.send(new AbortMultipartUploadCommand({ Bucket: 'assembled', Key: 'kms.bin', UploadId: kms }));
  });
});

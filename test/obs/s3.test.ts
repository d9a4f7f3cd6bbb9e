// OBS over the S3 protocol with the AWS SDK for JavaScript v3 (@aws-sdk/client-s3), configured as a
// user configures it: endpoint, region, AK/SK, path-style addressing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CopyObjectCommand, CreateBucketCommand, DeleteObjectsCommand, CreateMultipartUploadCommand, DeleteBucketCommand, ListMultipartUploadsCommand, ListPartsCommand, UploadPartCommand, DeleteObjectCommand, GetBucketVersioningCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand,
  DeleteObjectTaggingCommand, GetBucketEncryptionCommand, PutBucketEncryptionCommand, GetBucketTaggingCommand, GetObjectTaggingCommand, PutBucketTaggingCommand, PutObjectTaggingCommand, GetBucketLifecycleConfigurationCommand, GetObjectLegalHoldCommand, GetObjectLockConfigurationCommand, GetObjectRetentionCommand, PutObjectLegalHoldCommand, PutObjectLockConfigurationCommand, PutObjectRetentionCommand, ListBucketsCommand, ListObjectsV2Command, PutBucketLifecycleConfigurationCommand, ListObjectVersionsCommand, PutBucketVersioningCommand, PutObjectCommand, S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { sql } from 'kysely';
import sharp from 'sharp';
import { DB, PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const DAY = 86_400_000;
let s: TestServer;
let t: Tenant;
let other: Tenant;
let region: string;
let clock = Date.now();
let client: S3Client;
let theirs: S3Client;

const keysOf = new Map<string, { accessKeyId: string; secretAccessKey: string }>();
/** An S3 client with the tenant's access key (made once), its clock moved by `clockOffsetMs` to agree with the server's. */
async function s3For(tenant: Tenant, clockOffsetMs = 0): Promise<S3Client> {
  let credentials = keysOf.get(tenant.accountId);
  if (!credentials) {
    const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: tenant.token, body: { credential: { user_id: tenant.adminUserId } } });
    assert.equal(r.status, 201, r.text);
    credentials = { accessKeyId: r.json.credential.access, secretAccessKey: r.json.credential.secret };
    keysOf.set(tenant.accountId, credentials);
  }
  return new S3Client({ endpoint: s.custos.obsUrl, region, forcePathStyle: true, systemClockOffset: clockOffsetMs, credentials });
}
function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

before(async () => {
  s = await startTestServer({ now: () => clock });
  t = await s.createTenant();
  other = await s.createTenant();
  region = t.projects[0]!.name;
  client = await s3For(t);
  theirs = await s3For(other);
});
after(async () => {
  client?.destroy();
  theirs?.destroy();
  await s?.close();
});

describe('S3 API with @aws-sdk/client-s3', () => {
  test('buckets: create in a region, head, list, refuse deleting a non-empty one', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'photos', CreateBucketConfiguration: { LocationConstraint: region as never } }));
    const head = await client.send(new HeadBucketCommand({ Bucket: 'photos' }));
    assert.equal(head.$metadata.httpStatusCode, 200);
    assert.ok((await client.send(new ListBucketsCommand({}))).Buckets!.some((b) => b.Name === 'photos'));
    await assert.rejects(client.send(new CreateBucketCommand({ Bucket: 'photos' })), { name: 'BucketAlreadyOwnedByYou' });
    await assert.rejects(client.send(new CreateBucketCommand({ Bucket: 'Bad_Name' })), { name: 'InvalidBucketName' });
    await assert.rejects(client.send(new CreateBucketCommand({ Bucket: 'elsewhere', CreateBucketConfiguration: { LocationConstraint: 'us-east-2' } })), (e: Error) => /InvalidLocationConstraint/.test(e.name));
    await client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'keep.txt', Body: 'x' }));
    await assert.rejects(client.send(new DeleteBucketCommand({ Bucket: 'photos' })), { name: 'BucketNotEmpty' });
    await client.send(new CreateBucketCommand({ Bucket: 'scratch' }));
    await client.send(new DeleteBucketCommand({ Bucket: 'scratch' }));
    await assert.rejects(client.send(new HeadBucketCommand({ Bucket: 'scratch' })), { name: 'NotFound' });
  });

  test('objects: put (buffer and stream), get, range, head with metadata, list with prefixes and pages, delete', async () => {
    const data = randomBytes(300_000);
    const put = await client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'albums/2026/a.jpg', Body: data, ContentType: 'image/jpeg', Metadata: { camera: 'x100' } }));
    assert.equal(put.ETag, `"${createHash('md5').update(data).digest('hex')}"`);
    assert.equal(put.ServerSideEncryption, 'aws:kms');
    const got = await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'albums/2026/a.jpg' }));
    assert.deepEqual(Buffer.from(await got.Body!.transformToByteArray()), data);
    assert.equal(got.ContentType, 'image/jpeg');
    assert.equal(got.Metadata?.camera, 'x100');
    const part = await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'albums/2026/a.jpg', Range: 'bytes=70000-140000' }));
    assert.equal(part.ContentRange, `bytes 70000-140000/${data.length}`);
    assert.deepEqual(Buffer.from(await part.Body!.transformToByteArray()), data.subarray(70000, 140001));
    const tail = await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'albums/2026/a.jpg', Range: 'bytes=-10' }));
    assert.deepEqual(Buffer.from(await tail.Body!.transformToByteArray()), data.subarray(data.length - 10));
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'albums/2026/a.jpg', Range: `bytes=${data.length}-` })), { name: 'InvalidRange' });
    const head = await client.send(new HeadObjectCommand({ Bucket: 'photos', Key: 'albums/2026/a.jpg' }));
    assert.equal(head.ContentLength, data.length);
    assert.match(head.SSEKMSKeyId ?? '', /^arn:aws:kms:/);

    // A stream of unknown content goes as aws-chunked with a checksum trailer, as the SDK does by default.
    const streamed = randomBytes(200_000);
    await client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'albums/2026/b.jpg', Body: Readable.from([streamed.subarray(0, 100_000), streamed.subarray(100_000)]), ContentLength: streamed.length }));
    assert.deepEqual(Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'albums/2026/b.jpg' }))).Body!.transformToByteArray()), streamed);
    for (const k of ['albums/2025/c.jpg', 'albums/2026/d.jpg', 'readme.txt', 'empty']) await client.send(new PutObjectCommand({ Bucket: 'photos', Key: k, Body: k === 'empty' ? '' : k }));
    assert.equal(Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'empty' }))).Body!.transformToByteArray()).length, 0);

    const top = await client.send(new ListObjectsV2Command({ Bucket: 'photos', Delimiter: '/' }));
    assert.deepEqual(top.CommonPrefixes?.map((p) => p.Prefix), ['albums/']);
    assert.deepEqual(top.Contents?.map((c) => c.Key), ['empty', 'keep.txt', 'readme.txt']);
    const years = await client.send(new ListObjectsV2Command({ Bucket: 'photos', Prefix: 'albums/', Delimiter: '/' }));
    assert.deepEqual(years.CommonPrefixes?.map((p) => p.Prefix), ['albums/2025/', 'albums/2026/']);
    const seen: string[] = [];
    let token: string | undefined;
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: 'photos', MaxKeys: 2, ...(token ? { ContinuationToken: token } : {}) }));
      seen.push(...(page.Contents ?? []).map((c) => c.Key!));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    assert.deepEqual(seen, ['albums/2025/c.jpg', 'albums/2026/a.jpg', 'albums/2026/b.jpg', 'albums/2026/d.jpg', 'empty', 'keep.txt', 'readme.txt']);

    await client.send(new DeleteObjectCommand({ Bucket: 'photos', Key: 'albums/2026/d.jpg' }));
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'albums/2026/d.jpg' })), { name: 'NoSuchKey' });
  });

  test('another tenant cannot list, read or learn of a bucket; bucket names are per account', async () => {
    await assert.rejects(theirs.send(new HeadBucketCommand({ Bucket: 'photos' })), { name: 'NotFound' });
    await assert.rejects(theirs.send(new GetObjectCommand({ Bucket: 'photos', Key: 'keep.txt' })), { name: 'NoSuchBucket' });
    await assert.rejects(theirs.send(new ListObjectsV2Command({ Bucket: 'photos' })), { name: 'NoSuchBucket' });
    await assert.rejects(theirs.send(new PutObjectCommand({ Bucket: 'photos', Key: 'x', Body: 'x' })), { name: 'NoSuchBucket' });
    // Their own bucket of the same name is a different bucket: creating it reveals nothing.
    await theirs.send(new CreateBucketCommand({ Bucket: 'photos' }));
    assert.equal((await theirs.send(new ListObjectsV2Command({ Bucket: 'photos' }))).KeyCount, 0);
    assert.ok(!(await theirs.send(new ListBucketsCommand({}))).Buckets!.some((b) => b.CreationDate && b.Name !== 'photos'));
  });

  test('bad input answers S3 error codes in XML: malformed XML, wrong digest, bad signature', async () => {
    const wrongMd5 = await fetch(`${s.custos.obsUrl}/photos/x`, { method: 'PUT', body: 'x' }).then(async (r) => ({ status: r.status, text: await r.text() }));
    assert.equal(wrongMd5.status, 403, 'unsigned requests are refused');
    assert.match(wrongMd5.text, /<Code>AccessDenied<\/Code>/);
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'md5', Body: 'hello', ContentMD5: Buffer.alloc(16).toString('base64') })), { name: 'BadDigest' });
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'md5' })), { name: 'NoSuchKey' }, 'nothing was stored');
    const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
    const forged = new S3Client({ endpoint: s.custos.obsUrl, region, forcePathStyle: true, credentials: { accessKeyId: r.json.credential.access, secretAccessKey: 'not-the-secret-not-the-secret-000000' } });
    try {
      await assert.rejects(forged.send(new ListBucketsCommand({})), { name: 'SignatureDoesNotMatch' });
    } finally {
      forged.destroy();
      await s.api('DELETE', `/v3.0/OS-CREDENTIAL/credentials/${r.json.credential.access}`, { token: t.token });
    }
    const token = await s.token(t.name, 'admin', PASSWORD);
    const bad = await fetch(`${s.custos.obsUrl}/newbucket`, { method: 'PUT', headers: { 'x-auth-token': token }, body: '<CreateBucketConfiguration><LocationConstraint>' });
    assert.equal(bad.status, 400);
    assert.match(await bad.text(), /<Code>MalformedXML<\/Code>/);
  });

  test('versioning: versions, delete markers, reading and deleting a version, suspension', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'docs' }));
    await client.send(new PutObjectCommand({ Bucket: 'docs', Key: 'plan.txt', Body: 'before versioning' }));
    assert.equal((await client.send(new GetBucketVersioningCommand({ Bucket: 'docs' }))).Status, undefined);
    await client.send(new PutBucketVersioningCommand({ Bucket: 'docs', VersioningConfiguration: { Status: 'Enabled' } }));
    assert.equal((await client.send(new GetBucketVersioningCommand({ Bucket: 'docs' }))).Status, 'Enabled');
    const v1 = await client.send(new PutObjectCommand({ Bucket: 'docs', Key: 'plan.txt', Body: 'version one' }));
    const v2 = await client.send(new PutObjectCommand({ Bucket: 'docs', Key: 'plan.txt', Body: 'version two' }));
    assert.ok(v1.VersionId && v2.VersionId && v1.VersionId !== v2.VersionId && v1.VersionId !== 'null');
    const text = async (r: { Body?: { transformToString(): Promise<string> } }) => r.Body!.transformToString();
    assert.equal(await text(await client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt' }))), 'version two');
    assert.equal(await text(await client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt', VersionId: v1.VersionId }))), 'version one');
    assert.equal(await text(await client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt', VersionId: 'null' }))), 'before versioning', 'the pre-versioning object is the null version');

    const del = await client.send(new DeleteObjectCommand({ Bucket: 'docs', Key: 'plan.txt' }));
    assert.equal(del.DeleteMarker, true);
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt' })), { name: 'NoSuchKey' });
    assert.equal((await client.send(new ListObjectsV2Command({ Bucket: 'docs' }))).KeyCount, 0, 'a deleted key is not listed');
    const versions = await client.send(new ListObjectVersionsCommand({ Bucket: 'docs' }));
    assert.equal(versions.Versions?.length, 3);
    assert.equal(versions.DeleteMarkers?.length, 1);
    assert.equal(versions.DeleteMarkers![0]!.IsLatest, true);
    assert.deepEqual(versions.Versions!.map((v) => v.VersionId), [v2.VersionId, v1.VersionId, 'null'], 'newest first');

    // Removing the delete marker brings the last version back; removing a version removes it for good.
    await client.send(new DeleteObjectCommand({ Bucket: 'docs', Key: 'plan.txt', VersionId: del.VersionId }));
    assert.equal(await text(await client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt' }))), 'version two');
    await client.send(new DeleteObjectCommand({ Bucket: 'docs', Key: 'plan.txt', VersionId: v2.VersionId }));
    assert.equal(await text(await client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt' }))), 'version one');
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt', VersionId: v2.VersionId })), { name: 'NoSuchVersion' });

    // Suspended: new writes replace the null version; older versions stay.
    await client.send(new PutBucketVersioningCommand({ Bucket: 'docs', VersioningConfiguration: { Status: 'Suspended' } }));
    const s1 = await client.send(new PutObjectCommand({ Bucket: 'docs', Key: 'plan.txt', Body: 'suspended one' }));
    assert.equal(s1.VersionId, 'null');
    await client.send(new PutObjectCommand({ Bucket: 'docs', Key: 'plan.txt', Body: 'suspended two' }));
    const after = await client.send(new ListObjectVersionsCommand({ Bucket: 'docs', Prefix: 'plan' }));
    assert.deepEqual(after.Versions!.map((v) => v.VersionId), ['null', v1.VersionId]);
    assert.equal(await text(await client.send(new GetObjectCommand({ Bucket: 'docs', Key: 'plan.txt' }))), 'suspended two');
    await assert.rejects(client.send(new PutBucketVersioningCommand({ Bucket: 'docs', VersioningConfiguration: { Status: 'Off' as never } })), (e: Error) => /IllegalVersioningConfiguration/.test(e.name));
  });

  test('multipart: @aws-sdk/lib-storage uploads a 12 MiB stream in parts; reads span parts; abort leaves nothing', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'big' }));
    const data = randomBytes(12 * 1024 * 1024 + 333);
    const upload = new Upload({ client, params: { Bucket: 'big', Key: 'archive.bin', Body: Readable.from((function* () {
      for (let i = 0; i < data.length; i += 1024 * 1024) yield data.subarray(i, i + 1024 * 1024);
    })()) }, partSize: 5 * 1024 * 1024, queueSize: 2 });
    const done = await upload.done();
    assert.match(done.ETag ?? '', /^"[0-9a-f]{32}-3"$/, 'a multipart ETag names its three parts');
    const got = await client.send(new GetObjectCommand({ Bucket: 'big', Key: 'archive.bin' }));
    assert.equal(got.ContentLength, data.length);
    const body = Buffer.from(await got.Body!.transformToByteArray());
    assert.equal(createHash('sha256').update(body).digest('hex'), createHash('sha256').update(data).digest('hex'));
    const across = `bytes=${5 * 1024 * 1024 - 100}-${10 * 1024 * 1024 + 100}`;
    const part = await client.send(new GetObjectCommand({ Bucket: 'big', Key: 'archive.bin', Range: across }));
    assert.deepEqual(Buffer.from(await part.Body!.transformToByteArray()), data.subarray(5 * 1024 * 1024 - 100, 10 * 1024 * 1024 + 101), 'a range across part boundaries');

    // By hand: list uploads and parts, refuse a too-small middle part, then abort.
    const blobsBefore = filesUnder(path.join(s.dataDir, 'blobs')).filter((f) => !f.includes('.tmp')).length;
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'big', Key: 'partial.bin' }));
    const p1 = await client.send(new UploadPartCommand({ Bucket: 'big', Key: 'partial.bin', UploadId, PartNumber: 1, Body: randomBytes(1000) }));
    const p2 = await client.send(new UploadPartCommand({ Bucket: 'big', Key: 'partial.bin', UploadId, PartNumber: 2, Body: randomBytes(1000) }));
    assert.ok((await client.send(new ListMultipartUploadsCommand({ Bucket: 'big' }))).Uploads!.some((u) => u.UploadId === UploadId));
    assert.deepEqual((await client.send(new ListPartsCommand({ Bucket: 'big', Key: 'partial.bin', UploadId }))).Parts!.map((p) => p.PartNumber), [1, 2]);
    await assert.rejects(client.send(new CompleteMultipartUploadCommand({ Bucket: 'big', Key: 'partial.bin', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag }, { PartNumber: 2, ETag: p2.ETag }] } })), { name: 'EntityTooSmall' });
    await assert.rejects(client.send(new CompleteMultipartUploadCommand({ Bucket: 'big', Key: 'partial.bin', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: '"0000"' }] } })), { name: 'InvalidPart' });
    await client.send(new AbortMultipartUploadCommand({ Bucket: 'big', Key: 'partial.bin', UploadId }));
    await assert.rejects(client.send(new ListPartsCommand({ Bucket: 'big', Key: 'partial.bin', UploadId })), { name: 'NoSuchUpload' });
    assert.equal(filesUnder(path.join(s.dataDir, 'blobs')).filter((f) => !f.includes('.tmp')).length, blobsBefore, 'the aborted parts\' blobs are gone');
    // A single-part completion of a small object is fine (only non-last parts have a minimum).
    const { UploadId: one } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'big', Key: 'one.bin' }));
    const only = await client.send(new UploadPartCommand({ Bucket: 'big', Key: 'one.bin', UploadId: one, PartNumber: 1, Body: 'tiny' }));
    await client.send(new CompleteMultipartUploadCommand({ Bucket: 'big', Key: 'one.bin', UploadId: one, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: only.ETag }] } }));
    assert.equal(await (await client.send(new GetObjectCommand({ Bucket: 'big', Key: 'one.bin' }))).Body!.transformToString(), 'tiny');
  });

  test('presigned URLs: a GET URL signed by the SDK works without credentials; a tampered one is refused', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'big', Key: 'shared.txt', Body: 'shared by link' }));
    const url = await getSignedUrl(client, new GetObjectCommand({ Bucket: 'big', Key: 'shared.txt' }), { expiresIn: 60 });
    const r = await fetch(url);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'shared by link');
    const tampered = url.replace('shared.txt', 'other.txt');
    assert.equal((await fetch(tampered)).status, 403);
  });

  test('CopyObject (metadata kept or replaced, re-encrypted under another KMS key) and DeleteObjects', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'copies' }));
    await client.send(new PutObjectCommand({ Bucket: 'copies', Key: 'src.txt', Body: 'copy me', ContentType: 'text/plain', Metadata: { owner: 'ann' } }));
    const copied = await client.send(new CopyObjectCommand({ Bucket: 'copies', Key: 'dst.txt', CopySource: 'copies/src.txt' }));
    assert.match(copied.CopyObjectResult?.ETag ?? '', /^"[0-9a-f]{32}"$/);
    const dst = await client.send(new GetObjectCommand({ Bucket: 'copies', Key: 'dst.txt' }));
    assert.equal(await dst.Body!.transformToString(), 'copy me');
    assert.deepEqual([dst.ContentType, dst.Metadata?.owner], ['text/plain', 'ann']);

    // Another key of the tenant's, named in the request: the copy is re-encrypted under it.
    const project = t.projects[0]!.id;
    const k = await s.api('POST', `/v1.0/${project}/kms/create-key`, { token: t.token, body: { key_alias: 'copies-key' } });
    const keyId = k.json.key_info.key_id as string;
    await client.send(new CopyObjectCommand({ Bucket: 'photos', Key: 'moved.txt', CopySource: 'copies/src.txt', MetadataDirective: 'REPLACE', ContentType: 'text/markdown', SSEKMSKeyId: keyId, ServerSideEncryption: 'aws:kms' }));
    const moved = await client.send(new HeadObjectCommand({ Bucket: 'photos', Key: 'moved.txt' }));
    assert.equal(moved.ContentType, 'text/markdown');
    assert.equal(moved.Metadata?.owner, undefined);
    assert.match(moved.SSEKMSKeyId ?? '', new RegExp(`key/${keyId}$`));
    await assert.rejects(client.send(new CopyObjectCommand({ Bucket: 'copies', Key: 'x', CopySource: 'copies/none.txt' })), { name: 'NoSuchKey' });

    // A bucket's default key: new objects are encrypted under it without naming it.
    await client.send(new PutBucketEncryptionCommand({ Bucket: 'copies', ServerSideEncryptionConfiguration: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: 'alias/copies-key' } }] } }));
    assert.match((await client.send(new GetBucketEncryptionCommand({ Bucket: 'copies' }))).ServerSideEncryptionConfiguration?.Rules?.[0]?.ApplyServerSideEncryptionByDefault?.KMSMasterKeyID ?? '', new RegExp(`key/${keyId}$`));
    await client.send(new PutObjectCommand({ Bucket: 'copies', Key: 'defaulted.txt', Body: 'x' }));
    assert.match((await client.send(new HeadObjectCommand({ Bucket: 'copies', Key: 'defaulted.txt' }))).SSEKMSKeyId ?? '', new RegExp(`key/${keyId}$`));
    await client.send(new DeleteObjectCommand({ Bucket: 'copies', Key: 'defaulted.txt' }));
    await assert.rejects(client.send(new PutBucketEncryptionCommand({ Bucket: 'copies', ServerSideEncryptionConfiguration: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: 'alias/no-such-key' } }] } })), (e: Error) => /KMS/.test(e.name));
    await assert.rejects(theirs.send(new CopyObjectCommand({ Bucket: 'photos', Key: 'stolen', CopySource: 'copies/src.txt' })), { name: 'NoSuchBucket' });

    const del = await client.send(new DeleteObjectsCommand({ Bucket: 'copies', Delete: { Objects: [{ Key: 'src.txt' }, { Key: 'dst.txt' }, { Key: 'never-was' }] } }));
    assert.deepEqual(del.Deleted?.map((d) => d.Key).sort(), ['dst.txt', 'never-was', 'src.txt']);
    assert.equal((await client.send(new ListObjectsV2Command({ Bucket: 'copies' }))).KeyCount, 0);

    // Under a customer's key the ETag is not the content's MD5 (S3 gives SSE-KMS objects such ETags
    // too): who may list or HEAD, without the key's decrypt permission, cannot confirm a guess of it.
    const md5Of = (b: string | Buffer) => `"${createHash('md5').update(b).digest('hex')}"`;
    assert.notEqual(moved.ETag, md5Of('copy me'));
    const kmsPut = async (k: string) => (await client.send(new PutObjectCommand({ Bucket: 'photos', Key: k, Body: 'guessable', SSEKMSKeyId: keyId, ServerSideEncryption: 'aws:kms' }))).ETag!;
    const [e1, e2] = [await kmsPut('guess-1.txt'), await kmsPut('guess-2.txt')];
    assert.match(e1, /^"[0-9a-f]{32}"$/);
    assert.notEqual(e1, md5Of('guessable'));
    assert.notEqual(e1, e2, 'the same content under two data keys');
    assert.equal((await client.send(new HeadObjectCommand({ Bucket: 'photos', Key: 'guess-1.txt' }))).ETag, e1);
    const guesses = (await client.send(new ListObjectsV2Command({ Bucket: 'photos', Prefix: 'guess-' }))).Contents ?? [];
    assert.deepEqual(guesses.map((o) => o.ETag).sort(), [e1, e2].sort());
    const partData = randomBytes(1000);
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'photos', Key: 'guess-3.bin', SSEKMSKeyId: keyId, ServerSideEncryption: 'aws:kms' }));
    const p1 = await client.send(new UploadPartCommand({ Bucket: 'photos', Key: 'guess-3.bin', UploadId, PartNumber: 1, Body: partData }));
    assert.notEqual(p1.ETag, md5Of(partData));
    await client.send(new CompleteMultipartUploadCommand({ Bucket: 'photos', Key: 'guess-3.bin', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag }] } }));
    assert.deepEqual(Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'guess-3.bin' }))).Body!.transformToByteArray()), partData);
    await client.send(new DeleteObjectsCommand({ Bucket: 'photos', Delete: { Objects: [{ Key: 'guess-1.txt' }, { Key: 'guess-2.txt' }, { Key: 'guess-3.bin' }] } }));
  });

  test('SSE-C: an object stored with a customer key is readable only with that key, and copies out under KMS', async () => {
    const key = randomBytes(32);
    const ssec = { SSECustomerAlgorithm: 'AES256', SSECustomerKey: key as unknown as string };
    const put = await client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'private.bin', Body: 'only with my key', ...ssec }));
    assert.equal(put.SSECustomerAlgorithm, 'AES256');
    // Its ETag is not the content's MD5 (as on S3): a listing must not let anyone confirm a guess of the content.
    const md5 = createHash('md5').update('only with my key').digest('hex');
    assert.match(put.ETag!, /^"[0-9a-f]{32}"$/);
    assert.notEqual(put.ETag, `"${md5}"`);
    const listed = (await client.send(new ListObjectsV2Command({ Bucket: 'photos', Prefix: 'private.bin' }))).Contents!;
    assert.equal(listed[0]!.ETag, put.ETag);
    const got = await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'private.bin', ...ssec }));
    assert.equal(await got.Body!.transformToString(), 'only with my key');
    assert.equal(got.SSECustomerAlgorithm, 'AES256');
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'private.bin' })), { name: 'InvalidRequest' });
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'private.bin', SSECustomerAlgorithm: 'AES256', SSECustomerKey: randomBytes(32) as unknown as string })), { name: 'AccessDenied' });
    await assert.rejects(client.send(new HeadObjectCommand({ Bucket: 'photos', Key: 'private.bin' })), (e: { $metadata: { httpStatusCode: number } }) => e.$metadata.httpStatusCode === 400);
    assert.equal((await client.send(new HeadObjectCommand({ Bucket: 'photos', Key: 'private.bin', ...ssec }))).ContentLength, 16);
    await client.send(new CopyObjectCommand({ Bucket: 'photos', Key: 'shared.bin', CopySource: 'photos/private.bin', CopySourceSSECustomerAlgorithm: 'AES256', CopySourceSSECustomerKey: key as unknown as string }));
    const shared = await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'shared.bin' }));
    assert.equal(await shared.Body!.transformToString(), 'only with my key', 'the copy is under KMS');
    assert.equal(shared.ETag, `"${md5}"`, 'an SSE-KMS object keeps the MD5 ETag clients check downloads against');
    // The key is nowhere on disk or in the database.
    const dump = DB === 'sqlite' ? Buffer.concat(filesUnder(s.dataDir).map((f) => readFileSync(f))) : Buffer.from((await sql<{ r: string }>`select row_to_json(o)::text as r from obs_objects o`.execute(s.custos.store.db)).rows.map((x) => x.r).join(''));
    assert.ok(!dump.includes(key) && !dump.includes(Buffer.from(key.toString('base64'))), 'the customer key is not stored');
  });

  test('tagging: object tags on upload and by API, bucket tags, limits', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'tagged.txt', Body: 'x', Tagging: 'project=apollo&stage=draft' }));
    assert.deepEqual((await client.send(new GetObjectTaggingCommand({ Bucket: 'photos', Key: 'tagged.txt' }))).TagSet, [{ Key: 'project', Value: 'apollo' }, { Key: 'stage', Value: 'draft' }]);
    assert.equal((await client.send(new GetObjectCommand({ Bucket: 'photos', Key: 'tagged.txt' }))).TagCount, 2);
    await client.send(new PutObjectTaggingCommand({ Bucket: 'photos', Key: 'tagged.txt', Tagging: { TagSet: [{ Key: 'stage', Value: 'final' }] } }));
    assert.deepEqual((await client.send(new GetObjectTaggingCommand({ Bucket: 'photos', Key: 'tagged.txt' }))).TagSet, [{ Key: 'stage', Value: 'final' }]);
    await client.send(new DeleteObjectTaggingCommand({ Bucket: 'photos', Key: 'tagged.txt' }));
    assert.deepEqual((await client.send(new GetObjectTaggingCommand({ Bucket: 'photos', Key: 'tagged.txt' }))).TagSet ?? [], []);
    await assert.rejects(client.send(new PutObjectTaggingCommand({ Bucket: 'photos', Key: 'tagged.txt', Tagging: { TagSet: Array.from({ length: 11 }, (_, i) => ({ Key: `k${i}`, Value: 'v' })) } })), (e: Error) => /BadRequest|InvalidTag/.test(e.name));
    await assert.rejects(client.send(new GetBucketTaggingCommand({ Bucket: 'photos' })), { name: 'NoSuchTagSet' });
    await client.send(new PutBucketTaggingCommand({ Bucket: 'photos', Tagging: { TagSet: [{ Key: 'cost-center', Value: 'cc-7' }] } }));
    assert.deepEqual((await client.send(new GetBucketTaggingCommand({ Bucket: 'photos' }))).TagSet, [{ Key: 'cost-center', Value: 'cc-7' }]);
  });

  test('watermarking: x-image-process adds a text or image watermark with sharp; bad parameters are 400', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'images' }));
    const base = await sharp({ create: { width: 320, height: 200, channels: 3, background: '#ffffff' } }).png().toBuffer();
    const logo = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#ff0000' } }).png().toBuffer();
    await client.send(new PutObjectCommand({ Bucket: 'images', Key: 'photo.png', Body: base, ContentType: 'image/png' }));
    await client.send(new PutObjectCommand({ Bucket: 'images', Key: 'logo.png', Body: logo, ContentType: 'image/png' }));
    await client.send(new PutObjectCommand({ Bucket: 'images', Key: 'notes.txt', Body: 'not an image' }));
    const token = await s.token(t.name, 'admin', PASSWORD);
    const b64 = (v: string) => Buffer.from(v).toString('base64url');
    const get = (key: string, process: string) => fetch(`${s.custos.obsUrl}/images/${key}?x-image-process=${encodeURIComponent(process)}`, { headers: { 'x-auth-token': token } });
    const pixels = async (png: Buffer) => sharp(png).raw().toBuffer({ resolveWithObject: true });
    const at = (img: { data: Buffer; info: { width: number; channels: number } }, x: number, y: number) => [...img.data.subarray((y * img.info.width + x) * img.info.channels, (y * img.info.width + x) * img.info.channels + 3)];

    const text = await get('photo.png', `image/watermark,text_${b64('Custos')},size_40,color_${b64('#000000')},g_br,x_10,y_10`);
    assert.equal(text.status, 200, await text.clone().text());
    assert.equal(text.headers.get('content-type'), 'image/png');
    const marked = await pixels(Buffer.from(await text.arrayBuffer()));
    assert.deepEqual([marked.info.width, marked.info.height], [320, 200], 'same size');
    let dark = 0;
    for (let y = 140; y < 200; y++) for (let x = 160; x < 320; x++) if (at(marked, x, y)[0]! < 128) dark++;
    assert.ok(dark > 100, `text drawn in the bottom-right corner (${dark} dark pixels)`);
    assert.deepEqual(at(marked, 5, 5), [255, 255, 255], 'the top-left corner is untouched');

    const image = await get('photo.png', `image/watermark,image_${b64('logo.png')},g_tl,x_0,y_0,t_100`);
    assert.equal(image.status, 200);
    const withLogo = await pixels(Buffer.from(await image.arrayBuffer()));
    assert.deepEqual(at(withLogo, 2, 2), [255, 0, 0], 'the logo sits in the top-left corner');
    assert.deepEqual(at(withLogo, 300, 190), [255, 255, 255]);

    for (const [key, process] of [['photo.png', 'image/resize,w_10'], ['photo.png', 'image/watermark,size_40'], ['photo.png', `image/watermark,text_${b64('x')},g_nowhere`], ['notes.txt', `image/watermark,text_${b64('x')}`]] as const) {
      const r = await get(key, process);
      assert.equal(r.status, 400, `${key} ${process}`);
      assert.match(await r.text(), /<Code>InvalidArgument<\/Code>/);
    }
    // The stored object is unchanged.
    assert.deepEqual(Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'images', Key: 'photo.png' }))).Body!.transformToByteArray()), base);
  });

  test('object lock: retention and legal hold refuse deleting a version; GOVERNANCE yields to a bypass, COMPLIANCE does not', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'worm', ObjectLockEnabledForBucket: true }));
    assert.equal((await client.send(new GetBucketVersioningCommand({ Bucket: 'worm' }))).Status, 'Enabled', 'object lock turns versioning on');
    await assert.rejects(client.send(new PutBucketVersioningCommand({ Bucket: 'worm', VersioningConfiguration: { Status: 'Suspended' } })), { name: 'InvalidBucketState' });
    await client.send(new PutObjectLockConfigurationCommand({ Bucket: 'worm', ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: 'GOVERNANCE', Days: 1 } } } }));
    assert.equal((await client.send(new GetObjectLockConfigurationCommand({ Bucket: 'worm' }))).ObjectLockConfiguration?.Rule?.DefaultRetention?.Mode, 'GOVERNANCE');

    const gov = await client.send(new PutObjectCommand({ Bucket: 'worm', Key: 'ledger.csv', Body: 'governed' }));
    const head = await client.send(new HeadObjectCommand({ Bucket: 'worm', Key: 'ledger.csv' }));
    assert.equal(head.ObjectLockMode, 'GOVERNANCE', 'the default retention applies');
    assert.ok(head.ObjectLockRetainUntilDate! > new Date(clock));
    await assert.rejects(client.send(new DeleteObjectCommand({ Bucket: 'worm', Key: 'ledger.csv', VersionId: gov.VersionId })), { name: 'AccessDenied' });
    // Deleting without a version id only adds a delete marker: allowed, the locked version stays.
    assert.equal((await client.send(new DeleteObjectCommand({ Bucket: 'worm', Key: 'ledger.csv' }))).DeleteMarker, true);
    assert.equal(await (await client.send(new GetObjectCommand({ Bucket: 'worm', Key: 'ledger.csv', VersionId: gov.VersionId }))).Body!.transformToString(), 'governed');
    await client.send(new DeleteObjectCommand({ Bucket: 'worm', Key: 'ledger.csv', VersionId: gov.VersionId, BypassGovernanceRetention: true }));

    const until = new Date(clock + 3 * DAY);
    const comp = await client.send(new PutObjectCommand({ Bucket: 'worm', Key: 'audit.log', Body: 'kept', ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: until }));
    assert.equal((await client.send(new GetObjectRetentionCommand({ Bucket: 'worm', Key: 'audit.log' }))).Retention?.Mode, 'COMPLIANCE');
    await assert.rejects(client.send(new DeleteObjectCommand({ Bucket: 'worm', Key: 'audit.log', VersionId: comp.VersionId, BypassGovernanceRetention: true })), { name: 'AccessDenied' });
    await assert.rejects(client.send(new PutObjectRetentionCommand({ Bucket: 'worm', Key: 'audit.log', Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(clock + DAY) } })), { name: 'AccessDenied' }, 'COMPLIANCE cannot be shortened');
    await client.send(new PutObjectRetentionCommand({ Bucket: 'worm', Key: 'audit.log', Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(clock + 5 * DAY) } }));

    const held = await client.send(new PutObjectCommand({ Bucket: 'worm', Key: 'evidence.bin', Body: 'held', ObjectLockLegalHoldStatus: 'ON', ObjectLockMode: 'GOVERNANCE', ObjectLockRetainUntilDate: new Date(clock + DAY) }));
    assert.equal((await client.send(new GetObjectLegalHoldCommand({ Bucket: 'worm', Key: 'evidence.bin' }))).LegalHold?.Status, 'ON');
    await assert.rejects(client.send(new DeleteObjectCommand({ Bucket: 'worm', Key: 'evidence.bin', VersionId: held.VersionId, BypassGovernanceRetention: true })), { name: 'AccessDenied' }, 'a legal hold wins over a bypass');
    await client.send(new PutObjectLegalHoldCommand({ Bucket: 'worm', Key: 'evidence.bin', LegalHold: { Status: 'OFF' } }));
    await client.send(new DeleteObjectCommand({ Bucket: 'worm', Key: 'evidence.bin', VersionId: held.VersionId, BypassGovernanceRetention: true }));
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'photos', Key: 'x', Body: 'x', ObjectLockMode: 'GOVERNANCE', ObjectLockRetainUntilDate: until })), { name: 'InvalidRequest' }, 'no lock on a bucket without object lock');
  });

  test('lifecycle: current objects expire under a prefix, noncurrent versions and stale uploads go, once per run', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'lifecycle-test' }));
    await client.send(new PutBucketVersioningCommand({ Bucket: 'lifecycle-test', VersioningConfiguration: { Status: 'Enabled' } }));
    await client.send(new PutBucketLifecycleConfigurationCommand({
      Bucket: 'lifecycle-test',
      LifecycleConfiguration: {
        Rules: [
          { ID: 'tmp', Status: 'Enabled', Filter: { Prefix: 'tmp/' }, Expiration: { Days: 1 } },
          { ID: 'old-versions', Status: 'Enabled', Filter: { Prefix: '' }, NoncurrentVersionExpiration: { NoncurrentDays: 1 }, AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } },
        ],
      },
    }));
    const cfg = await client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: 'lifecycle-test' }));
    assert.deepEqual(cfg.Rules?.map((r) => [r.ID, r.Expiration?.Days, r.NoncurrentVersionExpiration?.NoncurrentDays]), [['tmp', 1, undefined], ['old-versions', undefined, 1]]);
    await client.send(new PutObjectCommand({ Bucket: 'lifecycle-test', Key: 'tmp/scratch', Body: 'temporary' }));
    await client.send(new PutObjectCommand({ Bucket: 'lifecycle-test', Key: 'keep/doc', Body: 'first' }));
    await client.send(new PutObjectCommand({ Bucket: 'lifecycle-test', Key: 'keep/doc', Body: 'second' }));
    await client.send(new CreateMultipartUploadCommand({ Bucket: 'lifecycle-test', Key: 'keep/never-finished' }));
    await s.custos.obs.releaseLifecycleLease();
    assert.deepEqual(await s.custos.obs.runLifecycle(), { expired: 0, noncurrent: 0, aborted: 0, markers: 0 }, 'nothing is due yet');

    clock += 2 * DAY;
    t.token = await s.token(t.name, 'admin', PASSWORD);
    await s.custos.obs.releaseLifecycleLease();
    assert.deepEqual(await s.custos.obs.runLifecycle(), { expired: 1, noncurrent: 1, aborted: 1, markers: 0 });
    assert.deepEqual(await s.custos.obs.runLifecycle(), { expired: 0, noncurrent: 0, aborted: 0, markers: 0 }, 'another run within the lease does nothing');
    const later = await s3For(t, clock - Date.now());
    try {
      await assert.rejects(later.send(new GetObjectCommand({ Bucket: 'lifecycle-test', Key: 'tmp/scratch' })), { name: 'NoSuchKey' });
      assert.equal(await (await later.send(new GetObjectCommand({ Bucket: 'lifecycle-test', Key: 'keep/doc' }))).Body!.transformToString(), 'second');
      const versions = await later.send(new ListObjectVersionsCommand({ Bucket: 'lifecycle-test', Prefix: 'keep/' }));
      assert.equal(versions.Versions?.length, 1, 'the noncurrent version is gone');
      assert.equal((await later.send(new ListMultipartUploadsCommand({ Bucket: 'lifecycle-test' }))).Uploads?.length ?? 0, 0);
    } finally {
      later.destroy();
    }
  });

  test('content is stored only encrypted, and destroying the KMS key makes the object unreadable', async () => {
    const canary = `canary-${randomBytes(12).toString('hex')}`;
    const now = await s3For(t, clock - Date.now());
    await now.send(new CreateBucketCommand({ Bucket: 'vault' }));
    await now.send(new PutObjectCommand({ Bucket: 'vault', Key: 'secret.txt', Body: canary.repeat(100) }));
    now.destroy();
    const places: [string, Buffer][] = filesUnder(path.join(s.dataDir, 'blobs')).map((f) => [f, readFileSync(f)]);
    assert.ok(places.length >= 1, 'blobs are where the scan looks');
    if (DB === 'sqlite') for (const f of filesUnder(s.dataDir).filter((f) => !f.includes(`${path.sep}blobs${path.sep}`))) places.push([f, readFileSync(f)]);
    else {
      const rows = (await sql<{ r: string }>`select row_to_json(o)::text as r from obs_objects o`.execute(s.custos.store.db)).rows;
      places.push(['obs_objects rows', Buffer.from(rows.map((x) => x.r).join('\n'))]);
    }
    for (const [where, bytes] of places) assert.ok(!bytes.includes(Buffer.from(canary)), `${where} holds the plaintext`);

    // The tenant's default object key in this project, destroyed after its waiting period.
    const project = t.projects[0]!.id;
    const desc = await s.api('POST', `/v1.0/${project}/kms/list-keys`, { token: t.token, body: {} });
    const key = (desc.json.key_details as { key_id: string; key_alias: string }[]).find((k) => k.key_alias === 'obs/default')!;
    assert.ok(key, 'objects are encrypted under the tenant\'s obs/default key');
    assert.equal((await s.api('POST', `/v1.0/${project}/kms/schedule-key-deletion`, { token: t.token, body: { key_id: key.key_id, pending_days: '7' } })).status, 200);
    // A client whose clock agrees with the server's, moved past the waiting period.
    const fresh = await s3For(t, clock + 7 * DAY + 1000 - Date.now());
    clock += 7 * DAY + 1000;
    t.token = await s.token(t.name, 'admin', PASSWORD);
    assert.equal((await s.custos.kms.runDueJobs()).destroyed, 1);
    try {
      await assert.rejects(fresh.send(new GetObjectCommand({ Bucket: 'vault', Key: 'secret.txt' })), (e: Error & { $metadata: { httpStatusCode: number } }) => {
        assert.equal(e.$metadata.httpStatusCode, 403);
        assert.match(e.name, /KMS/);
        return true;
      });
    } finally {
      fresh.destroy();
    }
  });
});

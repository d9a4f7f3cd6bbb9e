// Conditional requests on the S3 listener with @aws-sdk/client-s3: If-Match / If-None-Match /
// If-Modified-Since / If-Unmodified-Since on GET and HEAD, the x-amz-copy-source-if-* conditions of
// CopyObject, and conditional writes (PutObject, CompleteMultipartUpload) including racing writers.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  CompleteMultipartUploadCommand, CopyObjectCommand, CreateBucketCommand, CreateMultipartUploadCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand,
  ListObjectVersionsCommand, ListPartsCommand, PutBucketVersioningCommand, PutObjectCommand, S3Client, UploadPartCommand,
} from '@aws-sdk/client-s3';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';

let s: TestServer;
let t: Tenant;
let client: S3Client;

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
  assert.equal(r.status, 201, r.text);
  client = new S3Client({ endpoint: s.custos.obsUrl, region: t.projects[0]!.name, forcePathStyle: true, credentials: { accessKeyId: r.json.credential.access, secretAccessKey: r.json.credential.secret } });
  await client.send(new CreateBucketCommand({ Bucket: 'cond' }));
});
after(async () => {
  client?.destroy();
  await s?.close();
});

type SdkError = Error & { $metadata?: { httpStatusCode?: number } };
/** The HTTP status a command ended with (the SDK throws for 304 and 412). */
async function statusOf(p: Promise<{ $metadata: { httpStatusCode?: number } }>): Promise<number> {
  try {
    return (await p).$metadata.httpStatusCode!;
  } catch (e) {
    const status = (e as SdkError).$metadata?.httpStatusCode;
    if (status === undefined) throw e;
    return status;
  }
}
const text = async (key: string, bucket = 'cond') => (await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body!.transformToString();
function blobCount(): number {
  const walk = (dir: string): string[] => readdirSync(dir).flatMap((f) => (statSync(path.join(dir, f)).isDirectory() ? walk(path.join(dir, f)) : [f]));
  return walk(path.join(s.dataDir, 'blobs')).filter((f) => !f.includes('.tmp')).length;
}

describe('conditional requests', () => {
  test('GET and HEAD: If-Match / If-Unmodified-Since fail with 412, If-None-Match / If-Modified-Since answer 304, in RFC 7232 order', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'doc.txt', Body: 'conditional content' }));
    const head = await client.send(new HeadObjectCommand({ Bucket: 'cond', Key: 'doc.txt' }));
    const etag = head.ETag!;
    const lastModified = head.LastModified!;
    assert.equal(etag, `"${createHash('md5').update('conditional content').digest('hex')}"`);
    const before = new Date(lastModified.getTime() - 60_000);
    const other = '"0123456789abcdef0123456789abcdef"';
    const get = (c: Partial<{ IfMatch: string; IfNoneMatch: string; IfModifiedSince: Date; IfUnmodifiedSince: Date }>) => statusOf(client.send(new GetObjectCommand({ Bucket: 'cond', Key: 'doc.txt', ...c })));
    const headWith = (c: Partial<{ IfMatch: string; IfNoneMatch: string; IfModifiedSince: Date; IfUnmodifiedSince: Date }>) => statusOf(client.send(new HeadObjectCommand({ Bucket: 'cond', Key: 'doc.txt', ...c })));
    const cases: [Partial<{ IfMatch: string; IfNoneMatch: string; IfModifiedSince: Date; IfUnmodifiedSince: Date }>, number, string][] = [
      [{ IfMatch: etag }, 200, 'If-Match with the ETag'],
      [{ IfMatch: other }, 412, 'If-Match with another ETag'],
      [{ IfMatch: '*' }, 200, 'If-Match: * on an existing object'],
      [{ IfMatch: `${other}, ${etag}` }, 200, 'If-Match with a list holding the ETag'],
      [{ IfNoneMatch: etag }, 304, 'If-None-Match with the ETag'],
      [{ IfNoneMatch: other }, 200, 'If-None-Match with another ETag'],
      [{ IfModifiedSince: lastModified }, 304, 'not modified since its Last-Modified'],
      [{ IfModifiedSince: before }, 200, 'modified since a minute before'],
      [{ IfUnmodifiedSince: lastModified }, 200, 'unmodified since its Last-Modified'],
      [{ IfUnmodifiedSince: before }, 412, 'modified after the If-Unmodified-Since date'],
      // Precedence as S3 documents it: a true If-Match overrides a false If-Unmodified-Since, a true
      // If-None-Match overrides a false If-Modified-Since, and If-Match is decided before If-None-Match.
      [{ IfMatch: etag, IfUnmodifiedSince: before }, 200, 'If-Match true wins over If-Unmodified-Since false'],
      [{ IfNoneMatch: other, IfModifiedSince: lastModified }, 200, 'If-None-Match true wins over If-Modified-Since false'],
      [{ IfMatch: other, IfNoneMatch: etag }, 412, 'a failed If-Match is 412 before If-None-Match is looked at'],
      [{ IfMatch: etag, IfNoneMatch: etag }, 304, 'If-Match true, then If-None-Match false'],
      [{ IfUnmodifiedSince: before, IfModifiedSince: lastModified }, 412, 'If-Unmodified-Since is decided first'],
    ];
    for (const [c, want, why] of cases) {
      assert.equal(await get(c), want, `GET: ${why}`);
      assert.equal(await headWith(c), want, `HEAD: ${why}`);
    }
    await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'cond', Key: 'doc.txt', IfMatch: other })), { name: 'PreconditionFailed' });

    // Raw: a 304 carries the validators and no body; a 412 is S3's XML error document.
    const token = t.token;
    const r304 = await fetch(`${s.custos.obsUrl}/cond/doc.txt`, { headers: { 'x-auth-token': token, 'if-none-match': etag } });
    assert.equal(r304.status, 304);
    assert.equal(r304.headers.get('etag'), etag);
    assert.equal(r304.headers.get('last-modified'), lastModified.toUTCString());
    assert.equal(await r304.text(), '');
    const r412 = await fetch(`${s.custos.obsUrl}/cond/doc.txt`, { headers: { 'x-auth-token': token, 'if-match': other } });
    assert.equal(r412.status, 412);
    assert.match(await r412.text(), /<Code>PreconditionFailed<\/Code>/);
    // An unparsable date is ignored, as RFC 7232 says.
    assert.equal((await fetch(`${s.custos.obsUrl}/cond/doc.txt`, { headers: { 'x-auth-token': token, 'if-modified-since': 'not a date' } })).status, 200);
    // Conditions come before the range: a failed If-Match is 412, not a 206.
    assert.equal(await statusOf(client.send(new GetObjectCommand({ Bucket: 'cond', Key: 'doc.txt', Range: 'bytes=0-3', IfMatch: other }))), 412);
    assert.equal(await statusOf(client.send(new GetObjectCommand({ Bucket: 'cond', Key: 'doc.txt', Range: 'bytes=0-3', IfMatch: etag }))), 206);
  });

  test('CopyObject: x-amz-copy-source-if-* conditions are 412 when they fail; the copy happens only when they hold', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'source.txt', Body: 'copy source' }));
    const head = await client.send(new HeadObjectCommand({ Bucket: 'cond', Key: 'source.txt' }));
    const etag = head.ETag!;
    const lastModified = head.LastModified!;
    const before = new Date(lastModified.getTime() - 60_000);
    const other = '"0123456789abcdef0123456789abcdef"';
    type C = Partial<{ CopySourceIfMatch: string; CopySourceIfNoneMatch: string; CopySourceIfModifiedSince: Date; CopySourceIfUnmodifiedSince: Date }>;
    const cases: [C, number, string][] = [
      [{ CopySourceIfMatch: other }, 412, 'if-match with another ETag'],
      [{ CopySourceIfNoneMatch: etag }, 412, 'if-none-match with the ETag'],
      [{ CopySourceIfModifiedSince: lastModified }, 412, 'not modified since'],
      [{ CopySourceIfUnmodifiedSince: before }, 412, 'modified after'],
      [{ CopySourceIfNoneMatch: etag, CopySourceIfModifiedSince: before }, 412, 'if-none-match false with if-modified-since true (S3: 412)'],
      [{ CopySourceIfMatch: etag, CopySourceIfUnmodifiedSince: before }, 200, 'if-match true with if-unmodified-since false (S3: copied)'],
      [{ CopySourceIfNoneMatch: other, CopySourceIfModifiedSince: before }, 200, 'both hold'],
    ];
    let n = 0;
    for (const [c, want, why] of cases) {
      const key = `copy-${++n}.txt`;
      assert.equal(await statusOf(client.send(new CopyObjectCommand({ Bucket: 'cond', Key: key, CopySource: 'cond/source.txt', ...c }))), want, why);
      if (want === 200) assert.equal(await text(key), 'copy source', `${why}: copied`);
      else await assert.rejects(client.send(new HeadObjectCommand({ Bucket: 'cond', Key: key })), { name: 'NotFound' }, `${why}: nothing written`);
    }
    await assert.rejects(client.send(new CopyObjectCommand({ Bucket: 'cond', Key: 'x', CopySource: 'cond/source.txt', CopySourceIfMatch: other })), { name: 'PreconditionFailed' });
  });

  test('PutObject: If-None-Match: * writes only a new key, If-Match only over the named ETag', async () => {
    const first = await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'first', IfNoneMatch: '*' }));
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'second', IfNoneMatch: '*' })), { name: 'PreconditionFailed' });
    assert.equal(await text('once.txt'), 'first', 'the refused write changed nothing');
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'third', IfMatch: '"0123456789abcdef0123456789abcdef"' })), { name: 'PreconditionFailed' });
    const replaced = await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'fourth', IfMatch: first.ETag! }));
    assert.equal(await text('once.txt'), 'fourth');
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'fifth', IfMatch: first.ETag! })), { name: 'PreconditionFailed' }, 'the ETag moved on');
    await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'sixth', IfMatch: replaced.ETag! }));
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'never.txt', Body: 'x', IfMatch: first.ETag! })), { name: 'NoSuchKey' }, 'If-Match needs an object');
    // If-None-Match takes only * on a write.
    assert.equal(await statusOf(client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'new.txt', Body: 'x', IfNoneMatch: first.ETag! }))), 501);
    // A deleted key (also one whose current version is a delete marker) is free again.
    await client.send(new DeleteObjectCommand({ Bucket: 'cond', Key: 'once.txt' }));
    await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'once.txt', Body: 'again', IfNoneMatch: '*' }));
    await client.send(new CreateBucketCommand({ Bucket: 'cond-versioned' }));
    await client.send(new PutBucketVersioningCommand({ Bucket: 'cond-versioned', VersioningConfiguration: { Status: 'Enabled' } }));
    await client.send(new PutObjectCommand({ Bucket: 'cond-versioned', Key: 'k', Body: 'v1', IfNoneMatch: '*' }));
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'cond-versioned', Key: 'k', Body: 'v2', IfNoneMatch: '*' })), { name: 'PreconditionFailed' });
    await client.send(new DeleteObjectCommand({ Bucket: 'cond-versioned', Key: 'k' }));
    await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'cond-versioned', Key: 'k', Body: 'v2', IfMatch: '*' })), { name: 'NoSuchKey' }, 'a delete marker is no object');
    await client.send(new PutObjectCommand({ Bucket: 'cond-versioned', Key: 'k', Body: 'v3', IfNoneMatch: '*' }));
    assert.equal(await text('k', 'cond-versioned'), 'v3');
  });

  test('racing writers: of eight concurrent If-None-Match: * (or If-Match) PUTs of one key exactly one wins', async () => {
    for (const versioned of [false, true]) {
      const bucket = versioned ? 'cond-versioned' : 'cond';
      const bodies = Array.from({ length: 8 }, () => randomBytes(2 * 1024 * 1024));
      const blobsBefore = blobCount();
      const results = await Promise.allSettled(bodies.map((Body) => client.send(new PutObjectCommand({ Bucket: bucket, Key: 'race.bin', Body, IfNoneMatch: '*' }))));
      const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      assert.equal(won.length, 1, `one If-None-Match writer wins (${versioned ? 'versioned' : 'unversioned'}): ${results.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as Error).name)).join(' ')}`);
      for (const r of results) if (r.status === 'rejected') assert.equal((r.reason as Error).name, 'PreconditionFailed');
      const got = Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'race.bin' }))).Body!.transformToByteArray());
      assert.ok(got.equals(bodies[won[0]!]!), 'the stored content is the winner\'s');
      assert.equal(blobCount(), blobsBefore + 1, 'the losers\' blobs are gone');

      const current = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: 'race.bin' }));
      const next = Array.from({ length: 8 }, () => randomBytes(1024 * 1024));
      const replaced = await Promise.allSettled(next.map((Body) => client.send(new PutObjectCommand({ Bucket: bucket, Key: 'race.bin', Body, IfMatch: current.ETag! }))));
      const replacedBy = replaced.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      assert.equal(replacedBy.length, 1, `one If-Match writer wins: ${replaced.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as Error).name)).join(' ')}`);
      const now = Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'race.bin' }))).Body!.transformToByteArray());
      assert.ok(now.equals(next[replacedBy[0]!]!));
      if (versioned) assert.equal((await client.send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: 'race.bin' }))).Versions?.length, 2, 'two versions: one per round');
    }
  });

  test('CompleteMultipartUpload: If-None-Match: * over an existing key is 412 and the upload stays; If-Match completes it', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'cond', Key: 'assembled.bin', Body: 'already here' }));
    const existing = await client.send(new HeadObjectCommand({ Bucket: 'cond', Key: 'assembled.bin' }));
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'cond', Key: 'assembled.bin' }));
    const part = await client.send(new UploadPartCommand({ Bucket: 'cond', Key: 'assembled.bin', UploadId, PartNumber: 1, Body: 'new content' }));
    const parts = { Parts: [{ PartNumber: 1, ETag: part.ETag! }] };
    await assert.rejects(client.send(new CompleteMultipartUploadCommand({ Bucket: 'cond', Key: 'assembled.bin', UploadId, MultipartUpload: parts, IfNoneMatch: '*' })), { name: 'PreconditionFailed' });
    assert.equal(await text('assembled.bin'), 'already here');
    assert.deepEqual((await client.send(new ListPartsCommand({ Bucket: 'cond', Key: 'assembled.bin', UploadId }))).Parts?.map((p) => p.PartNumber), [1], 'the upload and its part are still there');
    await assert.rejects(client.send(new CompleteMultipartUploadCommand({ Bucket: 'cond', Key: 'assembled.bin', UploadId, MultipartUpload: parts, IfMatch: '"0123456789abcdef0123456789abcdef"' })), { name: 'PreconditionFailed' });
    await client.send(new CompleteMultipartUploadCommand({ Bucket: 'cond', Key: 'assembled.bin', UploadId, MultipartUpload: parts, IfMatch: existing.ETag! }));
    assert.equal(await text('assembled.bin'), 'new content');
    // And on a new key, If-None-Match: * completes.
    const { UploadId: fresh } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'cond', Key: 'fresh.bin' }));
    const p = await client.send(new UploadPartCommand({ Bucket: 'cond', Key: 'fresh.bin', UploadId: fresh, PartNumber: 1, Body: 'fresh' }));
    await client.send(new CompleteMultipartUploadCommand({ Bucket: 'cond', Key: 'fresh.bin', UploadId: fresh, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p.ETag! }] }, IfNoneMatch: '*' }));
    assert.equal(await text('fresh.bin'), 'fresh');
  });
});

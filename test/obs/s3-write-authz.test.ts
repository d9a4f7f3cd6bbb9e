// What a write may do beyond its own action, and what a request asking for another operation must
// not do: lock and tag headers on PutObject need their own permissions; a DELETE naming a subresource
// not served here is 501, never the deletion; one locked version fails alone in a batch delete; and
// x-amz-* query parameters count as headers only in a presigned SigV4 URL.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import {
  CompleteMultipartUploadCommand, CopyObjectCommand, CreateBucketCommand, CreateMultipartUploadCommand, DeleteBucketEncryptionCommand, ListPartsCommand, UploadPartCommand, DeleteObjectsCommand, PutBucketEncryptionCommand, GetObjectCommand, GetObjectTaggingCommand, HeadBucketCommand, HeadObjectCommand, PutBucketPolicyCommand,
  PutObjectCommand, PutObjectLegalHoldCommand, S3Client,
} from '@aws-sdk/client-s3';
import { sdkFailure as failure, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { accessKey, s3Client } from '../s3.js';

let s: TestServer;
let t: Tenant;
let admin: S3Client;
let writer: S3Client; // a user whose only permission is a bucket policy's s3:PutObject
let signer: SignatureV4;
const clients: S3Client[] = [];

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  const credentials = await accessKey(s, t);
  admin = await s3Client(s, t, { credentials });
  signer = new SignatureV4({ service: 's3', region: t.projects[0]!.name, credentials, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  const u = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name: 'writer', password: 'An0ther-Passw0rd!' } } });
  assert.equal(u.status, 201, u.text);
  writer = await s3Client(s, t, { userId: u.json.user.id });
  clients.push(admin, writer);
  await admin.send(new CreateBucketCommand({ Bucket: 'vault-docs', ObjectLockEnabledForBucket: true }));
  await admin.send(new PutBucketPolicyCommand({
    Bucket: 'vault-docs',
    Policy: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/writer` }, Action: 's3:PutObject', Resource: 'arn:aws:s3:::vault-docs/*' }] }),
  }));
});
after(async () => {
  for (const c of clients) c.destroy();
  await s?.close();
});

/** A request signed with SigV4 in the Authorization header, query included, as the caller sends it. */
async function signed(method: string, path: string, query: Record<string, string>, body = ''): Promise<{ status: number; body: string }> {
  const u = new URL(s.custos.obsUrl);
  const req = await signer.sign({
    method, protocol: 'http:', hostname: u.hostname, port: Number(u.port), path, query,
    headers: { host: u.host, 'x-amz-content-sha256': createHash('sha256').update(body).digest('hex') },
  });
  const qs = new URLSearchParams(query).toString();
  const res = await fetch(`${s.custos.obsUrl}${path}${qs ? `?${qs}` : ''}`, { method, headers: req.headers as Record<string, string>, ...(body ? { body } : {}) });
  return { status: res.status, body: await res.text() };
}

test('retention, legal hold and tags set by a write need their own permissions', async () => {
  await writer.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'plain.txt', Body: 'ok' }));
  const until = new Date(Date.now() + 3650 * 86_400_000);
  const attempts = [
    new PutObjectCommand({ Bucket: 'vault-docs', Key: 'locked.txt', Body: 'x', ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: until }),
    new PutObjectCommand({ Bucket: 'vault-docs', Key: 'held.txt', Body: 'x', ObjectLockLegalHoldStatus: 'ON' }),
    new PutObjectCommand({ Bucket: 'vault-docs', Key: 'tagged.txt', Body: 'x', Tagging: 'custos:subject=alice' }),
    new CreateMultipartUploadCommand({ Bucket: 'vault-docs', Key: 'big.bin', ObjectLockMode: 'COMPLIANCE', ObjectLockRetainUntilDate: until }),
  ];
  for (const cmd of attempts) assert.deepEqual(await failure(writer.send(cmd as never)), { status: 403, code: 'AccessDenied' }, cmd.constructor.name);
  for (const key of ['locked.txt', 'held.txt', 'tagged.txt']) {
    assert.equal((await failure(admin.send(new GetObjectCommand({ Bucket: 'vault-docs', Key: key })))).status, 404, `${key} was not written`);
  }
  // The administrator (FullAccess) may.
  await admin.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'tagged.txt', Body: 'x', Tagging: 'team=docs' }));
  assert.deepEqual((await admin.send(new GetObjectTaggingCommand({ Bucket: 'vault-docs', Key: 'tagged.txt' }))).TagSet, [{ Key: 'team', Value: 'docs' }]);
});

test('a KMS key named for encryption must be one the writer may use', async () => {
  const keyId = (await s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/create-key`, { token: t.token, body: { key_alias: 'payroll-key' } })).json.key_info.key_id as string;
  // The writer has no KMS permission at all: its objects go under the bucket's key, not one it names.
  assert.deepEqual(await failure(writer.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'named.txt', Body: 'x', ServerSideEncryption: 'aws:kms', SSEKMSKeyId: 'alias/payroll-key' }))), { status: 403, code: 'AccessDenied' });
  assert.deepEqual(await failure(writer.send(new CreateMultipartUploadCommand({ Bucket: 'vault-docs', Key: 'named.bin', ServerSideEncryption: 'aws:kms', SSEKMSKeyId: keyId }))), { status: 403, code: 'AccessDenied' });
  await writer.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'unnamed.txt', Body: 'x' }));
  // The administrator may name it.
  await admin.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'named.txt', Body: 'x', ServerSideEncryption: 'aws:kms', SSEKMSKeyId: 'alias/payroll-key' }));
  assert.match((await admin.send(new HeadObjectCommand({ Bucket: 'vault-docs', Key: 'named.txt' }))).SSEKMSKeyId ?? '', new RegExp(keyId));
  // Made the bucket's default key, it is still a customer key: the writer's objects may not use it.
  await admin.send(new PutBucketEncryptionCommand({ Bucket: 'vault-docs', ServerSideEncryptionConfiguration: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: keyId } }] } }));
  try {
    assert.deepEqual(await failure(writer.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'default.txt', Body: 'x' }))), { status: 403, code: 'AccessDenied' });
    await admin.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'default.txt', Body: 'x' }));
  } finally {
    await admin.send(new DeleteBucketEncryptionCommand({ Bucket: 'vault-docs' }));
  }
  await writer.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'default.txt', Body: 'y' }));
});

test('reading an object under a customer KMS key needs permission to decrypt with it; the default key needs none', async () => {
  const keyId = (await s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/create-key`, { token: t.token, body: { key_alias: 'ledger-key' } })).json.key_info.key_id as string;
  await admin.send(new CreateBucketCommand({ Bucket: 'ledger' }));
  const u = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name: 'reader', password: 'An0ther-Passw0rd!' } } });
  assert.equal(u.status, 201, u.text);
  const reader = await s3Client(s, t, { userId: u.json.user.id });
  clients.push(reader);
  await admin.send(new PutBucketPolicyCommand({
    Bucket: 'ledger',
    Policy: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/reader` }, Action: 's3:GetObject', Resource: 'arn:aws:s3:::ledger/*' }] }),
  }));
  await admin.send(new PutObjectCommand({ Bucket: 'ledger', Key: 'default.txt', Body: 'under obs/default' }));
  await admin.send(new PutObjectCommand({ Bucket: 'ledger', Key: 'secret.txt', Body: 'under ledger-key', ServerSideEncryption: 'aws:kms', SSEKMSKeyId: keyId }));
  const read = async (key: string) => (await reader.send(new GetObjectCommand({ Bucket: 'ledger', Key: key }))).Body!.transformToString();
  assert.equal(await read('default.txt'), 'under obs/default');
  // s3:GetObject alone does not decrypt under a customer key, nor does a ranged read.
  assert.deepEqual(await failure(reader.send(new GetObjectCommand({ Bucket: 'ledger', Key: 'secret.txt' }))), { status: 403, code: 'AccessDenied' });
  assert.deepEqual(await failure(reader.send(new GetObjectCommand({ Bucket: 'ledger', Key: 'secret.txt', Range: 'bytes=0-3' }))), { status: 403, code: 'AccessDenied' });
  // HEAD needs no key, unless it asks for the plaintext's checksum.
  assert.equal((await reader.send(new HeadObjectCommand({ Bucket: 'ledger', Key: 'secret.txt' }))).ContentLength, 'under ledger-key'.length);
  assert.equal((await failure(reader.send(new HeadObjectCommand({ Bucket: 'ledger', Key: 'secret.txt', ChecksumMode: 'ENABLED' })))).status, 403, 'a HEAD answer has no body: the SDK sees only the status');
  // A Decrypt grant on the key lets the reader through; the administrator (kms:cmk:* by FullAccess) always was.
  const grant = await s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/create-grant`, { token: t.token, body: { key_id: keyId, grantee_principal: u.json.user.id, operations: ['decrypt-data'] } });
  assert.equal(grant.status, 200, grant.text);
  assert.equal(await read('secret.txt'), 'under ledger-key');
  assert.equal(await (await admin.send(new GetObjectCommand({ Bucket: 'ledger', Key: 'secret.txt' }))).Body!.transformToString(), 'under ledger-key');
  // Copying it is reading it: the writer (s3:PutObject on vault-docs, no KMS permission) may not copy it out.
  await admin.send(new PutBucketPolicyCommand({
    Bucket: 'ledger',
    Policy: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/writer` }, Action: 's3:GetObject', Resource: 'arn:aws:s3:::ledger/*' }] }),
  }));
  assert.deepEqual(await failure(writer.send(new CopyObjectCommand({ Bucket: 'vault-docs', Key: 'copied.txt', CopySource: 'ledger/secret.txt' }))), { status: 403, code: 'AccessDenied' });
  await writer.send(new CopyObjectCommand({ Bucket: 'vault-docs', Key: 'copied.txt', CopySource: 'ledger/default.txt' }));

  // The service-managed key is known by its alias, which no customer key can take and which does not move.
  const kmsApi = (op: string, body: unknown) => s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/${op}`, { token: t.token, body });
  for (const alias of ['obs/default', 'obs/mine', 'vault/default', 'privacy/x']) {
    const created = await kmsApi('create-key', { key_alias: alias });
    assert.equal(created.status, 400, `${alias}: ${created.text}`);
    const renamed = await kmsApi('update-key-alias', { key_id: keyId, key_alias: alias });
    assert.equal(renamed.status, 400, `${alias}: ${renamed.text}`);
  }
  const managed = ((await kmsApi('list-keys', {})).json.key_details as { key_id: string; key_alias: string }[]).find((k) => k.key_alias === 'obs/default')!;
  const moved = await kmsApi('update-key-alias', { key_id: managed.key_id, key_alias: 'mine-now' });
  assert.equal(moved.status, 400, moved.text);
  assert.match(moved.text, /managed by a Custos service/);
});

test('a multipart upload under a customer KMS key: adding and listing parts need its decrypt permission; SSE-C parts are listed with the key', async () => {
  const keyId = (await s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/create-key`, { token: t.token, body: { key_alias: 'drafts-key' } })).json.key_info.key_id as string;
  await admin.send(new CreateBucketCommand({ Bucket: 'drafts' }));
  await admin.send(new PutBucketPolicyCommand({
    Bucket: 'drafts',
    Policy: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/writer` }, Action: ['s3:PutObject', 's3:ListMultipartUploadParts'], Resource: 'arn:aws:s3:::drafts/*' }] }),
  }));
  const { UploadId } = await admin.send(new CreateMultipartUploadCommand({ Bucket: 'drafts', Key: 'plan.bin', ServerSideEncryption: 'aws:kms', SSEKMSKeyId: keyId, ChecksumAlgorithm: 'SHA256' }));
  const content = randomBytes(64);
  const part = (c: S3Client, n: number, body: Buffer) => c.send(new UploadPartCommand({ Bucket: 'drafts', Key: 'plan.bin', UploadId, PartNumber: n, Body: body, ChecksumAlgorithm: 'SHA256' }));
  const p1 = await part(admin, 1, content);
  // The same content again in the same upload: its ETag tells nothing (one ETag key per part).
  const p2 = await part(admin, 2, content);
  assert.notEqual(p1.ETag, p2.ETag);
  // The writer may put objects and list parts in the bucket, but not decrypt with the key: neither a
  // guess added as a part nor the listing of the parts (their ETags and plaintext checksums).
  assert.deepEqual(await failure(part(writer, 9, content)), { status: 403, code: 'AccessDenied' });
  assert.deepEqual(await failure(writer.send(new ListPartsCommand({ Bucket: 'drafts', Key: 'plan.bin', UploadId }))), { status: 403, code: 'AccessDenied' });
  assert.deepEqual(await failure(writer.send(new CompleteMultipartUploadCommand({ Bucket: 'drafts', Key: 'plan.bin', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag }] } }))), { status: 403, code: 'AccessDenied' });
  const listed = await admin.send(new ListPartsCommand({ Bucket: 'drafts', Key: 'plan.bin', UploadId }));
  assert.deepEqual(listed.Parts?.map((x) => x.PartNumber), [1, 2]);
  assert.ok(listed.Parts?.every((x) => typeof x.ChecksumSHA256 === 'string'));
  const grant = await s.api('POST', `/v1.0/${t.projects[0]!.id}/kms/create-grant`, { token: t.token, body: { key_id: keyId, grantee_principal: (await s.api('GET', '/v3/users?name=writer', { token: t.token })).json.users[0].id, operations: ['decrypt-data'] } });
  assert.equal(grant.status, 200, grant.text);
  assert.equal((await part(writer, 3, randomBytes(16))).$metadata.httpStatusCode, 200);
  assert.equal((await writer.send(new ListPartsCommand({ Bucket: 'drafts', Key: 'plan.bin', UploadId }))).Parts?.length, 3);

  // SSE-C: the parts of an upload made with a customer key are listed only with that key.
  const key = randomBytes(32);
  const ssec = { SSECustomerAlgorithm: 'AES256', SSECustomerKey: key as unknown as string };
  const c = await admin.send(new CreateMultipartUploadCommand({ Bucket: 'drafts', Key: 'sealed.bin', ...ssec }));
  await admin.send(new UploadPartCommand({ Bucket: 'drafts', Key: 'sealed.bin', UploadId: c.UploadId, PartNumber: 1, Body: content, ...ssec }));
  assert.deepEqual(await failure(admin.send(new ListPartsCommand({ Bucket: 'drafts', Key: 'sealed.bin', UploadId: c.UploadId }))), { status: 400, code: 'InvalidRequest' });
  assert.equal((await admin.send(new ListPartsCommand({ Bucket: 'drafts', Key: 'sealed.bin', UploadId: c.UploadId, ...ssec }))).Parts?.length, 1);
});

test('a DELETE naming a subresource not served here is 501 and deletes nothing', async () => {
  await admin.send(new CreateBucketCommand({ Bucket: 'empty-site' }));
  for (const sub of ['website', 'replication', 'ownershipControls']) {
    const r = await signed('DELETE', '/empty-site', { [sub]: '' });
    assert.equal(r.status, 501, `${sub}: ${r.body}`);
  }
  await admin.send(new HeadBucketCommand({ Bucket: 'empty-site' }));
  const r = await signed('DELETE', '/vault-docs/plain.txt', { restore: '' });
  assert.equal(r.status, 501, r.body);
  assert.equal(await (await admin.send(new GetObjectCommand({ Bucket: 'vault-docs', Key: 'plain.txt' }))).Body!.transformToString(), 'ok');
});

test('a version under legal hold fails alone in a batch delete', async () => {
  const held = await admin.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'batch/held.txt', Body: 'h' }));
  await admin.send(new PutObjectLegalHoldCommand({ Bucket: 'vault-docs', Key: 'batch/held.txt', VersionId: held.VersionId, LegalHold: { Status: 'ON' } }));
  const free = await admin.send(new PutObjectCommand({ Bucket: 'vault-docs', Key: 'batch/free.txt', Body: 'f' }));
  const r = await admin.send(new DeleteObjectsCommand({ Bucket: 'vault-docs', Delete: { Objects: [{ Key: 'batch/held.txt', VersionId: held.VersionId }, { Key: 'batch/free.txt', VersionId: free.VersionId }] } }));
  assert.deepEqual(r.Errors?.map((e) => [e.Key, e.Code]), [['batch/held.txt', 'AccessDenied']]);
  assert.deepEqual(r.Deleted?.map((d) => d.Key), ['batch/free.txt']);
  assert.equal(await (await admin.send(new GetObjectCommand({ Bucket: 'vault-docs', Key: 'batch/held.txt' }))).Body!.transformToString(), 'h');
});

test('x-amz-* query parameters act as headers only in a presigned SigV4 URL', async () => {
  // Signed in the Authorization header, a query parameter is not a header: a tagging request in the
  // query does not tag (the write is refused as an unknown subresource instead).
  const r = await signed('PUT', '/vault-docs/q.txt', { 'x-amz-tagging': 'team=query' }, 'q');
  assert.equal(r.status, 501, r.body);
  assert.equal((await failure(admin.send(new GetObjectCommand({ Bucket: 'vault-docs', Key: 'q.txt' })))).status, 404);
});

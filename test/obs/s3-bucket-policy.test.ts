// Bucket policies and ACLs on the S3 listener, with @aws-sdk/client-s3 as users call them: a policy
// grants a user with no IAM permission, a Deny beats the administrator's IAM allow, conditions
// (source IP, TLS, tags) hold, policies are validated, cannot lock the account out of fixing them,
// and ACLs are disabled (BucketOwnerEnforced) rather than silently ignored.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CopyObjectCommand, CreateBucketCommand, DeleteBucketPolicyCommand, DeletePublicAccessBlockCommand, PutPublicAccessBlockCommand, DeleteObjectCommand, DeleteObjectsCommand, GetBucketAclCommand, GetBucketOwnershipControlsCommand, GetBucketPolicyCommand,
  GetBucketPolicyStatusCommand, GetObjectAclCommand, GetObjectCommand, ListObjectsV2Command, PutBucketAclCommand, PutBucketPolicyCommand, PutBucketTaggingCommand, PutObjectAclCommand,
  PutObjectCommand, S3Client,
} from '@aws-sdk/client-s3';
import { sdkFailure as failure, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { s3Client } from '../s3.js';

const PASSWORD = 'An0ther-Passw0rd!';
let s: TestServer;
let t: Tenant;
let admin: S3Client;
let reader: S3Client; // a user with no IAM policy at all
const clients: S3Client[] = [];

async function userClient(name: string): Promise<{ client: S3Client; id: string }> {
  const u = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name, password: PASSWORD } } });
  assert.equal(u.status, 201, u.text);
  const id = u.json.user.id as string;
  const client = await s3Client(s, t, { userId: id });
  clients.push(client);
  return { client, id };
}

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  admin = await s3Client(s, t);
  clients.push(admin);
  ({ client: reader } = await userClient('reader'));
  await admin.send(new CreateBucketCommand({ Bucket: 'shared' }));
  await admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'public/readme.txt', Body: 'for readers' }));
  await admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'private/payroll.csv', Body: 'salaries' }));
});
after(async () => {
  for (const c of clients) c.destroy();
  await s?.close();
});

const put = (policy: unknown, bucket = 'shared') => admin.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
const read = (c: S3Client, key: string) => c.send(new GetObjectCommand({ Bucket: 'shared', Key: key })).then((o) => o.Body!.transformToString());

describe('bucket policies', () => {
  test('an Allow grants a user without IAM permissions exactly what it names; removing it takes the access away', async () => {
    assert.deepEqual(await failure(read(reader, 'public/readme.txt')), { status: 403, code: 'AccessDenied' }, 'no IAM policy: denied');
    await put({
      Version: '2012-10-17',
      Statement: [
        { Sid: 'ReadPublic', Effect: 'Allow', Principal: { AWS: [`arn:aws:iam::${t.accountId}:user/reader`] }, Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::shared/public/*'] },
        { Sid: 'List', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/reader` }, Action: 's3:ListBucket', Resource: 'arn:aws:s3:::shared' },
      ],
    });
    assert.equal(await read(reader, 'public/readme.txt'), 'for readers');
    const listed = await reader.send(new ListObjectsV2Command({ Bucket: 'shared' }));
    assert.deepEqual(listed.Contents?.map((o) => o.Key).sort(), ['private/payroll.csv', 'public/readme.txt']);
    assert.equal((await failure(read(reader, 'private/payroll.csv'))).status, 403, 'outside the granted prefix');
    assert.equal((await failure(reader.send(new PutObjectCommand({ Bucket: 'shared', Key: 'public/x.txt', Body: 'x' })))).status, 403, 'GetObject does not grant PutObject');
    assert.equal((await failure(reader.send(new DeleteObjectCommand({ Bucket: 'shared', Key: 'public/readme.txt' })))).status, 403);
    // A batch delete is decided per key: nothing here is granted.
    const none = await reader.send(new DeleteObjectsCommand({ Bucket: 'shared', Delete: { Objects: [{ Key: 'public/readme.txt' }] } }));
    assert.deepEqual(none.Errors?.map((e) => [e.Key, e.Code]), [['public/readme.txt', 'AccessDenied']]);
    assert.equal(await read(admin, 'public/readme.txt'), 'for readers', 'nothing was deleted');
    // The policy comes back as it was sent.
    const got = JSON.parse((await admin.send(new GetBucketPolicyCommand({ Bucket: 'shared' }))).Policy!);
    assert.equal(got.Statement[0].Sid, 'ReadPublic');
    assert.equal((await admin.send(new GetBucketPolicyStatusCommand({ Bucket: 'shared' }))).PolicyStatus?.IsPublic, false);
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
    assert.equal((await failure(read(reader, 'public/readme.txt'))).status, 403, 'the grant went with the policy');
    assert.deepEqual(await failure(admin.send(new GetBucketPolicyCommand({ Bucket: 'shared' }))), { status: 404, code: 'NoSuchBucketPolicy' });
  });

  test('a batch delete is authorized per key: a grant on a prefix deletes those keys and no others', async () => {
    await admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'tmp/a.txt', Body: 'a' }));
    await admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'tmp/b.txt', Body: 'b' }));
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/reader` }, Action: 's3:DeleteObject', Resource: 'arn:aws:s3:::shared/tmp/*' }] });
    const r = await reader.send(new DeleteObjectsCommand({ Bucket: 'shared', Delete: { Objects: [{ Key: 'tmp/a.txt' }, { Key: 'tmp/b.txt' }, { Key: 'private/payroll.csv' }] } }));
    assert.deepEqual(r.Deleted?.map((d) => d.Key).sort(), ['tmp/a.txt', 'tmp/b.txt']);
    assert.deepEqual(r.Errors?.map((e) => [e.Key, e.Code]), [['private/payroll.csv', 'AccessDenied']]);
    assert.equal(await read(admin, 'private/payroll.csv'), 'salaries');
    assert.equal((await failure(read(admin, 'tmp/a.txt'))).status, 404);
    assert.equal((await failure(reader.send(new DeleteObjectsCommand({ Bucket: 'no-such-bucket', Delete: { Objects: [{ Key: 'x' }] } })))).status, 404);
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
  });

  test('a user named in a policy is that user: one deleted and created again under the name is not', async () => {
    const { client, id } = await userClient('temp-reader');
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: [`arn:aws:iam::${t.accountId}:user/temp-reader`] }, Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::shared/*'] }] });
    assert.equal(await read(client, 'public/readme.txt'), 'for readers');
    assert.equal((await s.api('DELETE', `/v3/users/${id}`, { token: t.token })).status, 204);
    const again = await userClient('temp-reader');
    assert.equal((await failure(read(again.client, 'public/readme.txt'))).status, 403);
    // Huawei's form names the user by id.
    await put({ Version: '2008-10-17', Statement: [{ Effect: 'Allow', Principal: { ID: [`domain/${t.accountId}:user/${again.id}`] }, Action: ['GetObject'], Resource: ['shared/public/*'] }] });
    assert.equal(await read(again.client, 'public/readme.txt'), 'for readers');
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
  });

  test('a Deny beats the administrator\'s IAM allow, with conditions on source IP, TLS and the bucket\'s tags', async () => {
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: ['s3:DeleteObject', 's3:PutObject'], Resource: ['arn:aws:s3:::shared/private/*'] }] });
    assert.equal((await failure(admin.send(new DeleteObjectCommand({ Bucket: 'shared', Key: 'private/payroll.csv' })))).status, 403, 'explicit deny');
    assert.equal((await failure(admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'private/new.csv', Body: 'x' })))).status, 403);
    // The copy destination is decided by the bucket policy too.
    assert.equal((await failure(admin.send(new CopyObjectCommand({ Bucket: 'shared', Key: 'private/copy.txt', CopySource: 'shared/public/readme.txt' })))).status, 403);
    await admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'public/new.txt', Body: 'allowed' }));
    assert.equal(await read(admin, 'private/payroll.csv'), 'salaries', 'reads were not denied');

    // Deny everything that does not come from a network the test is not on: the loopback caller is refused.
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*', Condition: { NotIpAddress: { 'aws:SourceIp': ['203.0.113.0/24'] } } }] });
    assert.equal((await failure(read(admin, 'public/readme.txt'))).status, 403);
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*', Condition: { NotIpAddress: { 'aws:SourceIp': ['127.0.0.0/8', '::1/128'] } } }] });
    assert.equal(await read(admin, 'public/readme.txt'), 'for readers');
    // The common "TLS only" policy: this listener is plain HTTP, so it refuses.
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:*', Resource: ['arn:aws:s3:::shared', 'arn:aws:s3:::shared/*'], Condition: { Bool: { 'aws:SecureTransport': 'false' } } }] });
    assert.equal((await failure(read(admin, 'public/readme.txt'))).status, 403);
    assert.equal((await failure(admin.send(new ListObjectsV2Command({ Bucket: 'shared' })))).status, 403);
    // Even so, the policy itself can still be read, replaced and deleted: no policy locks the account out.
    assert.ok((await admin.send(new GetBucketPolicyCommand({ Bucket: 'shared' }))).Policy);
    // A bucket-level condition on the bucket's own tags.
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
    await admin.send(new PutBucketTaggingCommand({ Bucket: 'shared', Tagging: { TagSet: [{ Key: 'classification', Value: 'restricted' }] } }));
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:ListBucket', Resource: 'arn:aws:s3:::shared', Condition: { StringEquals: { 'g:ResourceTag/classification': 'restricted' } } }] });
    assert.equal((await failure(admin.send(new ListObjectsV2Command({ Bucket: 'shared' })))).status, 403);
    await admin.send(new PutBucketTaggingCommand({ Bucket: 'shared', Tagging: { TagSet: [{ Key: 'classification', Value: 'internal' }] } }));
    assert.ok((await admin.send(new ListObjectsV2Command({ Bucket: 'shared' }))).Contents?.length);
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
  });

  test('a policy is validated: each mistake is a 400 MalformedPolicy, and nothing is stored', async () => {
    const bad: [unknown, string][] = [
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::other-bucket/*' }] }, 'another bucket'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: 'arn:aws:iam::999999999999:root' }, Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*' }] }, 'another account'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/nobody` }, Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*' }] }, 'an unknown user'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Action: 'kms:Decrypt', Resource: 'arn:aws:s3:::shared/*' }] }, 'a non-S3 action'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*', Condition: { StringEquals: { 's3:x-amz-acl': 'public-read' } } }] }, 'an unsupported condition key'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*', Condition: { IpAddress: { 'aws:SourceIp': 'not-an-ip' } } }] }, 'a bad CIDR'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Perhaps', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*' }] }, 'a bad effect'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Allow', NotPrincipal: { AWS: '*' }, Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*' }] }, 'NotPrincipal'],
      [{ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Resource: 'arn:aws:s3:::shared/*' }] }, 'no action'],
    ];
    for (const [doc, why] of bad) assert.deepEqual(await failure(put(doc)), { status: 400, code: 'MalformedPolicy' }, why);
    const notJson = await failure(admin.send(new PutBucketPolicyCommand({ Bucket: 'shared', Policy: '{"Version": ' })));
    assert.deepEqual(notJson, { status: 400, code: 'MalformedPolicy' });
    assert.equal((await failure(admin.send(new GetBucketPolicyCommand({ Bucket: 'shared' })))).status, 404, 'no bad policy was stored');
  });

  test('managing the policy needs IAM permission: a user a policy grants everything still cannot change it', async () => {
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${t.accountId}:user/reader` }, Action: 's3:*', Resource: ['arn:aws:s3:::shared', 'arn:aws:s3:::shared/*'] }] });
    assert.equal(await read(reader, 'public/readme.txt'), 'for readers');
    assert.equal((await failure(reader.send(new PutBucketPolicyCommand({ Bucket: 'shared', Policy: JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Deny', Principal: '*', Action: 's3:*', Resource: 'arn:aws:s3:::shared/*' }] }) })))).status, 403);
    assert.equal((await failure(reader.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' })))).status, 403);
    assert.equal((await failure(reader.send(new GetBucketPolicyCommand({ Bucket: 'shared' })))).status, 403);
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
  });

  test('another tenant cannot set, read or learn of a bucket policy', async () => {
    const other = await s.createTenant();
    const c = await s3Client(s, other);
    clients.push(c);
    // Even a public policy (Block Public Access lifted): a signed request names a bucket of the caller's
    // own account, so the other tenant's requests find nothing.
    await admin.send(new DeletePublicAccessBlockCommand({ Bucket: 'shared' }));
    await put({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::shared/*' }] });
    assert.equal((await failure(c.send(new GetBucketPolicyCommand({ Bucket: 'shared' })))).status, 404);
    assert.equal((await failure(c.send(new PutBucketPolicyCommand({ Bucket: 'shared', Policy: '{}' })))).status, 404);
    assert.equal((await failure(c.send(new DeletePublicAccessBlockCommand({ Bucket: 'shared' })))).status, 404);
    assert.equal((await failure(c.send(new GetObjectCommand({ Bucket: 'shared', Key: 'public/readme.txt' })))).status, 404, 'with credentials, a bucket name is one of the caller\'s account');
    await admin.send(new DeleteBucketPolicyCommand({ Bucket: 'shared' }));
    await admin.send(new PutPublicAccessBlockCommand({ Bucket: 'shared', PublicAccessBlockConfiguration: { BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true } }));
  });
});

describe('ACLs (disabled: BucketOwnerEnforced)', () => {
  test('the owner-only ACLs are accepted and reported; any other ACL is refused, never ignored', async () => {
    const acl = await admin.send(new GetBucketAclCommand({ Bucket: 'shared' }));
    assert.equal(acl.Owner?.ID, t.accountId);
    assert.deepEqual(acl.Grants?.map((g) => [g.Grantee?.ID, g.Permission]), [[t.accountId, 'FULL_CONTROL']]);
    const oacl = await admin.send(new GetObjectAclCommand({ Bucket: 'shared', Key: 'public/readme.txt' }));
    assert.deepEqual(oacl.Grants?.map((g) => g.Permission), ['FULL_CONTROL']);
    assert.equal((await admin.send(new GetBucketOwnershipControlsCommand({ Bucket: 'shared' }))).OwnershipControls?.Rules?.[0]?.ObjectOwnership, 'BucketOwnerEnforced');
    await admin.send(new PutBucketAclCommand({ Bucket: 'shared', ACL: 'private' }));
    await admin.send(new PutObjectAclCommand({ Bucket: 'shared', Key: 'public/readme.txt', ACL: 'bucket-owner-full-control' }));
    await admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'acl/ok.txt', Body: 'x', ACL: 'bucket-owner-full-control' }));
    assert.deepEqual(await failure(admin.send(new PutBucketAclCommand({ Bucket: 'shared', ACL: 'public-read' }))), { status: 400, code: 'AccessControlListNotSupported' });
    assert.deepEqual(await failure(admin.send(new PutObjectAclCommand({ Bucket: 'shared', Key: 'public/readme.txt', ACL: 'public-read' }))), { status: 400, code: 'AccessControlListNotSupported' });
    assert.deepEqual(await failure(admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'acl/public.txt', Body: 'x', ACL: 'public-read' }))), { status: 400, code: 'AccessControlListNotSupported' });
    assert.deepEqual(await failure(admin.send(new CreateBucketCommand({ Bucket: 'public-bucket', ACL: 'public-read' }))), { status: 400, code: 'InvalidBucketAclWithObjectOwnership' });
    assert.deepEqual(await failure(admin.send(new PutObjectCommand({ Bucket: 'shared', Key: 'acl/grant.txt', Body: 'x', GrantRead: 'uri="http://acs.amazonaws.com/groups/global/AllUsers"' }))), { status: 400, code: 'AccessControlListNotSupported' });
    assert.equal((await failure(read(admin, 'acl/public.txt'))).status, 404, 'the refused upload stored nothing');
    assert.equal((await failure(admin.send(new GetObjectAclCommand({ Bucket: 'shared', Key: 'no/such.txt' })))).status, 404);
  });
});

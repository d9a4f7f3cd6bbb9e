// S3 clients for tests: a new access key of a tenant's user, and an AWS SDK client on the server's
// S3 listener configured as a user would (path-style, the tenant's first region).
import assert from 'node:assert/strict';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import type { Tenant, TestServer } from './helpers.js';

/** A new permanent access key of a user of the tenant (its administrator by default), as SDK credentials. */
export async function accessKey(s: TestServer, t: Tenant, userId = t.adminUserId): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: userId } } });
  assert.equal(r.status, 201, r.text);
  return { accessKeyId: r.json.credential.access, secretAccessKey: r.json.credential.secret };
}

/**
 * An S3 client with the given credentials, or a new access key of the user (the administrator by
 * default; a user has at most two); `config` adds to or overrides the defaults.
 */
export async function s3Client(s: TestServer, t: Tenant, opts: { userId?: string; credentials?: { accessKeyId: string; secretAccessKey: string }; config?: Partial<S3ClientConfig> } = {}): Promise<S3Client> {
  const credentials = opts.credentials ?? (await accessKey(s, t, opts.userId));
  return new S3Client({ endpoint: s.custos.obsUrl, region: t.projects[0]!.name, forcePathStyle: true, credentials, ...opts.config });
}

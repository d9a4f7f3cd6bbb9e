// Object lock against a concurrent change, on PostgreSQL where two sessions really run side by side:
// a legal hold committed while a version's deletion is waiting on its row keeps the version.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { CreateBucketCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { DB, startTestServer } from '../helpers.js';
import { s3Client } from '../s3.js';

test('a legal hold set while a version is being deleted keeps the version', { skip: DB === 'sqlite' ? 'two database sessions racing; SQLite runs one writer at a time' : false }, async () => {
  const s = await startTestServer();
  const session = new pg.Client({ connectionString: s.config.databaseUrl });
  try {
    const t = await s.createTenant();
    const client = await s3Client(s, t);
    await client.send(new CreateBucketCommand({ Bucket: 'race', ObjectLockEnabledForBucket: true }));
    const { VersionId } = await client.send(new PutObjectCommand({ Bucket: 'race', Key: 'evidence.pdf', Body: 'evidence' }));
    const bucket = (await s.custos.obs.findBucket(t.accountId, 'race'))!;
    await session.connect();
    // Another session puts the version under legal hold and holds its row until it commits.
    await session.query('begin');
    await session.query('update obs_objects set legal_hold = 1 where bucket_id = $1 and key = $2 and version_id = $3', [bucket.id, 'evidence.pdf', VersionId]);
    // The deletion reads the version (no hold yet, as committed) and waits on the row.
    const deletion = s.custos.obs.deleteObject(bucket, 'evidence.pdf', VersionId).then(() => 'deleted', (e: { code?: string }) => e.code ?? String(e));
    await sleep(300);
    await session.query('commit');
    assert.equal(await deletion, 'AccessDenied');
    const head = await client.send(new HeadObjectCommand({ Bucket: 'race', Key: 'evidence.pdf', VersionId }));
    assert.equal(head.ObjectLockLegalHoldStatus, 'ON', 'the version is still there, under its hold');
    client.destroy();
  } finally {
    await session.end().catch(() => undefined);
    await s.close();
  }
});

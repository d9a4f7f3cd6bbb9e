// Crash test for objects: kill -9 the server while eight clients upload, restart it on the same
// storage, and check that every acknowledged upload reads back whole and that no object is partial.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { freshDatabase } from '../helpers.js';
import { startServerProcess } from '../process.js';

/** The content of each key is a function of its name, so any object can be checked on its own. */
function contentOf(key: string): Buffer {
  const size = 256 * 1024 + (Number.parseInt(createHash('sha256').update(key).digest('hex').slice(0, 4), 16) % 65536);
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(key).digest();
  for (let i = 0; i < size; i += 32) {
    block.copy(out, i);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

test('after kill -9 during uploads, every acknowledged object reads back whole and none is partial', { timeout: 120_000 }, async () => {
  const database = await freshDatabase();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-obs-crash-'));
  const client = (url: string, creds: { ak: string; sk: string }) =>
    new S3Client({ endpoint: url, region: 'cn-north-4', forcePathStyle: true, maxAttempts: 1, credentials: { accessKeyId: creds.ak, secretAccessKey: creds.sk } });
  try {
    const first = await startServerProcess({ dataDir, ...(database.url ? { databaseUrl: database.url } : {}) });
    const tenant = await first.createTenant('crashco');
    const c1 = client(first.obsUrl, tenant);
    await c1.send(new CreateBucketCommand({ Bucket: 'crash' }));
    const acked: string[] = [];
    let stop = false;
    const worker = async (w: number) => {
      for (let n = 0; !stop; n++) {
        const key = `w${w}/o${n}`;
        try {
          await c1.send(new PutObjectCommand({ Bucket: 'crash', Key: key, Body: contentOf(key) }));
          acked.push(key);
        } catch {
          return; // the server is gone
        }
      }
    };
    const workers = Array.from({ length: 8 }, (_, w) => worker(w));
    while (acked.length < 40) await new Promise((r) => setTimeout(r, 10));
    await first.kill();
    stop = true;
    await Promise.all(workers);
    c1.destroy();

    const second = await startServerProcess({ dataDir, ...(database.url ? { databaseUrl: database.url } : {}) });
    const c2 = client(second.obsUrl, tenant);
    try {
      const listed: string[] = [];
      let token: string | undefined;
      do {
        const page = await c2.send(new ListObjectsV2Command({ Bucket: 'crash', ...(token ? { ContinuationToken: token } : {}) }));
        listed.push(...(page.Contents ?? []).map((o) => o.Key!));
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
      const missing = acked.filter((k) => !listed.includes(k));
      assert.deepEqual(missing, [], `${missing.length} acknowledged uploads are missing`);
      // Every listed object (acknowledged, or committed just before the kill) is complete and intact.
      for (const key of listed) {
        const body = Buffer.from(await (await c2.send(new GetObjectCommand({ Bucket: 'crash', Key: key }))).Body!.transformToByteArray());
        assert.ok(body.equals(contentOf(key)), `${key} is not whole`);
      }
      assert.ok(listed.length >= acked.length);
    } finally {
      c2.destroy();
      await second.stop();
    }
  } finally {
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

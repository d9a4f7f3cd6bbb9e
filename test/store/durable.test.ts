// Power-loss durability of acknowledged writes. On SQLite (WAL, synchronous=NORMAL) a commit survives
// a crash of the process but reaches the disk only at the next checkpoint; Store.durable() fsyncs the
// WAL. These tests check that it does, that concurrent callers share fsyncs without one of them
// being answered by a sync that started before its commit, and that OBS and KMS acknowledge a write
// only after it resolved (and remove an object's content only after the removal of its row did).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, GetObjectLegalHoldCommand, PutObjectCommand, PutObjectLegalHoldCommand, type S3Client } from '@aws-sdk/client-s3';
import { sql } from 'kysely';
import { DB, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { s3Client } from '../s3.js';

let s: TestServer;
let t: Tenant;
let client: S3Client;

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  client = await s3Client(s, t);
  await client.send(new CreateBucketCommand({ Bucket: 'durable' }));
});
after(async () => {
  client?.destroy();
  await s?.close();
});

/** Holds every durable() call of the server's store until released. */
function holdDurable() {
  const store = s.custos.store;
  const original = store.durable;
  const waiting: (() => void)[] = [];
  let calls = 0;
  store.durable = () => {
    calls++;
    return new Promise<void>((resolve) => waiting.push(resolve));
  };
  return {
    get calls() {
      return calls;
    },
    async untilCalled(n = 1) {
      const end = Date.now() + 10_000;
      while (calls < n && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      assert.ok(calls >= n, `durable() called ${calls} times, expected ${n}`);
    },
    release() {
      store.durable = original;
      for (const w of waiting.splice(0)) w();
    },
  };
}

/** Whether the promise has settled, without waiting for it. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setTimeout(r, 50));
  return done;
}

const blobFiles = () => {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = path.join(d, e);
      if (statSync(p).isDirectory()) {
        if (e !== '.tmp') walk(p);
      } else out.push(p);
    }
  };
  walk(path.join(s.dataDir, 'blobs'));
  return out;
};

describe('durable writes', () => {
  test('Store.durable: on SQLite an fsync of the WAL after the commit; callers arriving during a sync get the next one', async () => {
    const store = s.custos.store;
    await sql`create table durable_probe (n integer)`.execute(store.db);
    await sql`insert into durable_probe values (1)`.execute(store.db);
    const before = store.stats.walSyncs;
    await store.durable();
    if (DB === 'postgres') {
      assert.equal(store.stats.walSyncs, 0, 'PostgreSQL commits are durable already (synchronous_commit): no extra fsync');
      return;
    }
    assert.equal(store.stats.walSyncs, before + 1);
    // Twenty callers at once: the first starts a sync, the others arrive while it runs and share the
    // next one (a sync that started before their call might not cover their commits).
    const all = Array.from({ length: 20 }, () => store.durable());
    await Promise.all(all);
    assert.equal(store.stats.walSyncs, before + 3);
    // One after the other: one sync each.
    await store.durable();
    await store.durable();
    assert.equal(store.stats.walSyncs, before + 5);
  });

  test('an object PUT is acknowledged only once durable() resolved; a DELETE removes the content only after', async () => {
    const held = holdDurable();
    const put = client.send(new PutObjectCommand({ Bucket: 'durable', Key: 'a.txt', Body: 'kept' }));
    try {
      await held.untilCalled();
      assert.equal(await settled(put), false, 'the PUT is not answered while its row may not survive a power loss');
    } finally {
      held.release();
    }
    await put;
    assert.equal(await (await client.send(new GetObjectCommand({ Bucket: 'durable', Key: 'a.txt' }))).Body!.transformToString(), 'kept');

    const filesBefore = blobFiles().length;
    const held2 = holdDurable();
    const del = client.send(new DeleteObjectCommand({ Bucket: 'durable', Key: 'a.txt' }));
    try {
      await held2.untilCalled();
      assert.equal(await settled(del), false);
      assert.equal(blobFiles().length, filesBefore, 'the content stays until the row\'s removal is durable');
    } finally {
      held2.release();
    }
    await del;
    assert.equal(blobFiles().length, filesBefore - 1);
  });

  test('object lock: a legal hold is acknowledged only once durable() resolved', async () => {
    await client.send(new CreateBucketCommand({ Bucket: 'durable-locked', ObjectLockEnabledForBucket: true }));
    await client.send(new PutObjectCommand({ Bucket: 'durable-locked', Key: 'held.txt', Body: 'x' }));
    const held = holdDurable();
    const hold = client.send(new PutObjectLegalHoldCommand({ Bucket: 'durable-locked', Key: 'held.txt', LegalHold: { Status: 'ON' } }));
    try {
      await held.untilCalled();
      assert.equal(await settled(hold), false);
    } finally {
      held.release();
    }
    await hold;
    assert.equal((await client.send(new GetObjectLegalHoldCommand({ Bucket: 'durable-locked', Key: 'held.txt' }))).LegalHold?.Status, 'ON');
  });

  /** Starts `call`, checks it is not answered while durable() is held, then releases it and returns its answer. */
  async function answeredOnlyWhenDurable<T>(what: string, call: () => Promise<T>): Promise<T> {
    const held = holdDurable();
    const p = call();
    try {
      await held.untilCalled();
      assert.equal(await settled(p), false, `${what} is answered only once durable() resolved`);
    } finally {
      held.release();
    }
    return p;
  }

  test('IAM: disabling an access key; vault: deleting a record; both acknowledged only once durable() resolved', async () => {
    const key = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
    assert.equal(key.status, 201, key.text);
    const disabled = await answeredOnlyWhenDurable('disabling an access key', () =>
      s.api('PUT', `/v3.0/OS-CREDENTIAL/credentials/${key.json.credential.access}`, { token: t.token, body: { credential: { status: 'inactive' } } }));
    assert.equal(disabled.status, 200, disabled.text);

    const api = (method: string, p: string, body?: unknown) => s.api(method, p, { token: t.token, ...(body !== undefined ? { body } : {}) });
    const c = await api('POST', '/v1/vault/collections', {
      name: 'durable', project_id: t.projects[0]!.id,
      access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write', 'delete'], unmask: [] }],
      properties: [{ name: 'email', pii_type: 'email', purposes: ['support'], collection_method: 'form', deletion: { after: 'P1Y' } }],
    });
    assert.equal(c.status, 201, c.text);
    const rec = await api('POST', '/v1/vault/collections/durable/records', { subject_id: 'subject-1', fields: { email: 'someone@example.com' } });
    assert.equal(rec.status, 201, rec.text);
    const deleted = await answeredOnlyWhenDurable('deleting a vault record', () => api('DELETE', `/v1/vault/collections/durable/records/${rec.json.id}`));
    assert.equal(deleted.status, 204, deleted.text);
    assert.equal((await api('GET', `/v1/vault/collections/durable/records/${rec.json.id}?reason=support`)).status, 404);
  });

  test('audit: a signed digest is durable, with the traces it covers, before writing it returns', async () => {
    const digests = await answeredOnlyWhenDurable('a digest', () => s.custos.audit.writeDueDigests({ force: true }));
    assert.ok(digests.length > 0);
  });

  test('KMS: creating, disabling and scheduling the deletion of a key are acknowledged only once durable() resolved', async () => {
    const base = `/v1.0/${t.projects[0]!.id}/kms`;
    let held = holdDurable();
    const created = s.api('POST', `${base}/create-key`, { token: t.token, body: { key_alias: 'durable-key' } });
    try {
      await held.untilCalled();
      assert.equal(await settled(created), false);
    } finally {
      held.release();
    }
    const r = await created;
    assert.equal(r.status, 200, r.text);
    const keyId = r.json.key_info.key_id as string;
    for (const [op, body] of [['disable-key', { key_id: keyId }], ['schedule-key-deletion', { key_id: keyId, pending_days: '7' }]] as const) {
      held = holdDurable();
      const call = s.api('POST', `${base}/${op}`, { token: t.token, body });
      try {
        await held.untilCalled();
        assert.equal(await settled(call), false, op);
      } finally {
        held.release();
      }
      const res = await call;
      assert.equal(res.status, 200, `${op}: ${res.text}`);
    }
  });
});

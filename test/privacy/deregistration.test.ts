// Account deregistration over real HTTP with an injectable clock: MFA to ask, frozen during the
// retention period, cancellable, then destroyed — nothing decryptable left in the database files
// or the blob directory — with a signed destruction certificate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPublicKey, randomBytes, verify as verifySig } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { sql } from 'kysely';
import { totpCode } from '../../src/iam/mfa.js';
import { canonicalJson } from '../../src/privacy/deregistration.js';
import { DB, freshDatabase, PASSWORD, startTestServer } from '../helpers.js';

const DAY = 86_400_000;

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

test('deregistration: MFA to ask, frozen, cancellable, then destroyed with a signed certificate', { timeout: 120_000 }, async () => {
  let clock = Date.now();
  const database = await freshDatabase();
  const s = await startTestServer({ now: () => clock, database, config: { deregistrationRetentionDays: 30 } });
  try {
    const t = await s.createTenant();
    const other = await s.createTenant();
    const api = (method: string, p: string, body?: unknown, token = t.token) => s.api(method, p, { token, ...(body !== undefined ? { body } : {}) });
    const project = t.projects[0]!;
    const canary = `canary-${randomBytes(8).toString('hex')}`;

    // ---- plant data everywhere: vault, object storage, KMS, credentials
    const col = await api('POST', '/v1/vault/collections', {
      name: 'people', project_id: project.id, access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write'], unmask: ['*'] }],
      properties: [{ name: 'email', pii_type: 'email', purposes: ['support'], collection_method: 'form', deletion: { after: 'P5Y' } }],
    });
    assert.equal(col.status, 201, col.text);
    const rec = await api('POST', '/v1/vault/collections/people/records', { subject_id: 's1', fields: { email: `${canary}@example.com` } });
    assert.equal(rec.status, 201, rec.text);
    const key = await api('POST', `/v1.0/${project.id}/kms/create-key`, { key_alias: 'app' });
    const enc = await api('POST', `/v1.0/${project.id}/kms/encrypt-data`, { key_id: key.json.key_info.key_id, plain_text: canary });
    assert.equal(enc.status, 200, enc.text);
    const cred = await api('POST', '/v3.0/OS-CREDENTIAL/credentials', { credential: { user_id: t.adminUserId } });
    const s3 = () => new S3Client({ endpoint: s.custos.obsUrl, region: project.name, forcePathStyle: true, systemClockOffset: clock - Date.now(), credentials: { accessKeyId: cred.json.credential.access, secretAccessKey: cred.json.credential.secret } });
    await s3().send(new CreateBucketCommand({ Bucket: 'docs', CreateBucketConfiguration: { LocationConstraint: project.name as never } }));
    await s3().send(new PutObjectCommand({ Bucket: 'docs', Key: 'contract.txt', Body: `${canary} contract` }));
    const otherCol = await api('POST', '/v1/vault/collections', { name: 'people', project_id: other.projects[0]!.id, access: [{ type: 'user', id: other.adminUserId, permissions: ['read', 'write'] }], properties: [{ name: 'email', pii_type: 'email', purposes: ['support'], collection_method: 'form', deletion: { after: 'P5Y' } }] }, other.token);
    assert.equal(otherCol.status, 201);
    const otherRec = await api('POST', '/v1/vault/collections/people/records', { subject_id: 'o1', fields: { email: 'other@example.com' } }, other.token);

    // The wrapped secrets that would make the data readable again with the root key.
    const db = s.custos.store.db;
    const wrapped = [
      ...(await sql<{ m: string }>`select v.material_wrapped as m from kms_key_versions v join kms_keys k on k.id = v.key_id where k.account_id = ${t.accountId}`.execute(db)).rows.map((r) => r.m),
      ...(await sql<{ m: string }>`select data_key as m from vault_records where account_id = ${t.accountId}`.execute(db)).rows.map((r) => r.m),
      ...(await sql<{ m: string }>`select secret_wrapped as m from vault_collections where account_id = ${t.accountId}`.execute(db)).rows.map((r) => r.m),
      ...(await sql<{ m: string }>`select o.data_key as m from obs_objects o join obs_buckets b on b.id = o.bucket_id where b.account_id = ${t.accountId}`.execute(db)).rows.map((r) => r.m),
    ].filter(Boolean);
    assert.ok(wrapped.length >= 5, `wrapped material to look for: ${wrapped.length}`);
    const blobsBefore = filesUnder(path.join(s.dataDir, 'blobs')).filter((f) => !f.includes('.tmp'));
    assert.ok(blobsBefore.length >= 1);

    // ---- asking needs MFA and the account's name
    const noMfa = await api('POST', '/v1/privacy/deregistration', { confirm_account_name: t.name });
    assert.equal(noMfa.status, 403, noMfa.text);
    assert.equal(noMfa.json.error.code, 'MfaRequired');
    const dev = await api('POST', '/v3.0/OS-MFA/virtual-mfa-devices', { virtual_mfa_device: { name: 'phone', user_id: t.adminUserId } });
    const seed = dev.json.virtual_mfa_device.base32_string_seed as string;
    const bind = await api('PUT', '/v3.0/OS-MFA/mfa-devices/bind', { binding_device: { user_id: t.adminUserId, serial_number: dev.json.virtual_mfa_device.serial_number, authentication_code_first: totpCode(seed, clock - 30_000), authentication_code_second: totpCode(seed, clock) } });
    assert.equal(bind.status, 204, bind.text);
    const mfaLogin = async () => {
      clock += 30_000;
      const r = await s.login(t.name, 'admin', PASSWORD, { totp: { id: t.adminUserId, code: totpCode(seed, clock) } });
      assert.equal(r.status, 201, r.text);
      return r.headers.get('x-subject-token')!;
    };
    let mfa = await mfaLogin();
    assert.equal((await api('POST', '/v1/privacy/deregistration', { confirm_account_name: 'wrong' }, mfa)).status, 400);
    const asked = await api('POST', '/v1/privacy/deregistration', { confirm_account_name: t.name }, mfa);
    assert.equal(asked.status, 202, asked.text);
    assert.equal(asked.json.status, 'frozen');
    assert.equal(Date.parse(asked.json.destroy_after) - clock, 30 * DAY);
    assert.equal((await api('POST', '/v1/privacy/deregistration', { confirm_account_name: t.name }, mfa)).status, 409);
    const opAsk = await s.api('POST', '/v1/privacy/deregistration', { token: s.operator.token, body: { confirm_account_name: s.operator.account } });
    assert.equal(opAsk.status, 403, 'the operator account can never be deregistered');

    // ---- frozen: content out of reach on every listener, the deregistration itself in reach
    mfa = await mfaLogin();
    const frozenRead = await api('GET', `/v1/vault/collections/people/records/${rec.json.id}?reason=support`, undefined, mfa);
    assert.equal(frozenRead.status, 403);
    assert.equal(frozenRead.json.error.code, 'IAM.0010');
    assert.equal((await api('POST', `/v1.0/${project.id}/kms/decrypt-data`, { cipher_text: enc.json.cipher_text }, mfa)).status, 403);
    await assert.rejects(s3().send(new GetObjectCommand({ Bucket: 'docs', Key: 'contract.txt' })), (e: { name: string }) => e.name === 'AccessDenied');
    assert.equal((await api('GET', '/v1/privacy/deregistration', undefined, mfa)).json.status, 'frozen');
    // Nor can it mint temporary credentials (a route every caller may use, frozen ones excepted).
    const minted = await api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { auth: { identity: { methods: ['token'] } } }, mfa);
    assert.equal(minted.status, 403, minted.text);

    // ---- cancelled within the period: access comes back
    const cancel = await api('DELETE', '/v1/privacy/deregistration', undefined, mfa);
    assert.equal(cancel.status, 200, cancel.text);
    assert.equal(cancel.json.status, 'cancelled');
    mfa = await mfaLogin();
    const back = await api('GET', `/v1/vault/collections/people/records/${rec.json.id}?reason=support&unmask=email`, undefined, mfa);
    assert.equal(back.status, 200, back.text);
    assert.equal(back.json.fields.email, `${canary}@example.com`);
    const obj = await s3().send(new GetObjectCommand({ Bucket: 'docs', Key: 'contract.txt' }));
    assert.equal(await obj.Body!.transformToString(), `${canary} contract`);

    // ---- asked again, the period ends, the job destroys the account
    const again = await api('POST', '/v1/privacy/deregistration', { confirm_account_name: t.name }, mfa);
    assert.equal(again.status, 202, again.text);
    clock += 29 * DAY;
    assert.deepEqual(await s.custos.deregistration.runDue(), [], 'not before the period ends');
    clock += 2 * DAY;
    const destroyed = await s.custos.deregistration.runDue();
    assert.deepEqual(destroyed, [t.accountId]);
    assert.deepEqual(await s.custos.deregistration.runDue(), [], 'destroyed once');
    assert.equal((await api('DELETE', '/v1/privacy/deregistration', undefined, mfa)).status, 401, 'the users are gone');
    assert.notEqual((await s.login(t.name, 'admin', PASSWORD)).status, 201);

    // ---- the certificate, signed and verifiable with the published key
    const op = await s.token(s.operator.account, s.operator.user, s.operator.password);
    other.token = await s.token(other.name, 'admin', PASSWORD);
    const cert = await s.api('GET', `/v1/privacy/destruction-certificates/${t.accountId}`, { token: op });
    assert.equal(cert.status, 200, cert.text);
    assert.equal((await s.api('GET', `/v1/privacy/destruction-certificates/${t.accountId}`, { token: other.token })).status, 403);
    const pub = await s.api('GET', '/v1/privacy/certificate-key');
    assert.equal(pub.json.key_id, cert.json.key_id);
    assert.ok(verifySig(null, Buffer.from(canonicalJson(cert.json.certificate)), createPublicKey(pub.json.public_key), Buffer.from(cert.json.signature, 'base64')));
    const forged = { ...cert.json.certificate, destroyed_at: new Date(0).toISOString() };
    assert.ok(!verifySig(null, Buffer.from(canonicalJson(forged)), createPublicKey(pub.json.public_key), Buffer.from(cert.json.signature, 'base64')));
    const c = cert.json.certificate;
    assert.equal(c.account.id, t.accountId);
    assert.deepEqual(c.destroyed.vault, { collections: 1, records: 1 });
    assert.equal(c.destroyed.object_storage.buckets, 1);
    assert.equal(c.destroyed.object_storage.object_versions, 1);
    assert.ok(c.destroyed.kms.key_ids.includes(key.json.key_info.key_id));
    assert.ok(c.destroyed.iam.users >= 1 && c.destroyed.iam.access_keys >= 1);

    // ---- nothing decryptable left: no rows, no wrapped material, no blobs
    const count = async (q: ReturnType<typeof sql<{ n: number }>>) => Number((await q.execute(db)).rows[0]!.n);
    assert.equal(await count(sql<{ n: number }>`select count(*) as n from vault_records where account_id = ${t.accountId}`), 0);
    assert.equal(await count(sql<{ n: number }>`select count(*) as n from obs_buckets where account_id = ${t.accountId}`), 0);
    assert.equal(await count(sql<{ n: number }>`select count(*) as n from kms_key_versions v join kms_keys k on k.id = v.key_id where k.account_id = ${t.accountId} and v.material_wrapped is not null`), 0);
    assert.equal(await count(sql<{ n: number }>`select count(*) as n from iam_users where account_id = ${t.accountId}`), 0);
    assert.equal(await count(sql<{ n: number }>`select count(*) as n from iam_access_keys where account_id = ${t.accountId}`), 0);
    const blobsAfter = filesUnder(path.join(s.dataDir, 'blobs')).filter((f) => !f.includes('.tmp'));
    for (const b of blobsBefore) assert.ok(!blobsAfter.includes(b), 'the object\'s blob is gone');
    const needles = [...wrapped, canary];
    const scan = (where: string, bytes: Buffer) => {
      const text = bytes.toString('latin1');
      for (const n of needles) assert.ok(!text.includes(n), `${where} still holds ${n.slice(0, 16)}…`);
    };
    if (DB === 'sqlite') {
      for (const f of filesUnder(s.dataDir)) scan(f, readFileSync(f));
    } else {
      scan('pg_dump', execFileSync('pg_dump', ['--no-owner', '--data-only', database.url!], { maxBuffer: 512 * 1024 * 1024 }));
    }

    // ---- the other tenant is untouched
    const o = await api('GET', `/v1/vault/collections/people/records/${otherRec.json.id}?reason=support`, undefined, other.token);
    assert.equal(o.status, 200, o.text);
    assert.equal(o.json.fields.email, 'o***@example.com');
  } finally {
    await s.close();
  }
});

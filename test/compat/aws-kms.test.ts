// Custos KMS through clients no one here wrote, configured as a user would: the AWS SDK for
// JavaScript v3 (@aws-sdk/client-kms), the AWS CLI, and the AWS Encryption SDK with a KMS keyring.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, randomBytes, verify as cryptoVerify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  CancelKeyDeletionCommand, CreateAliasCommand, CreateGrantCommand, CreateKeyCommand, DecryptCommand, DescribeKeyCommand, DisableKeyCommand,
  EnableKeyCommand, EnableKeyRotationCommand, EncryptCommand, GenerateDataKeyCommand, GenerateDataKeyWithoutPlaintextCommand,
  GenerateRandomCommand, GetKeyRotationStatusCommand, GetPublicKeyCommand, KMSClient, ListAliasesCommand, ListGrantsCommand, ListKeysCommand,
  ListResourceTagsCommand, ReEncryptCommand, RetireGrantCommand, RevokeGrantCommand, ScheduleKeyDeletionCommand, SignCommand, TagResourceCommand,
  UntagResourceCommand, VerifyCommand,
} from '@aws-sdk/client-kms';
import { buildClient, CommitmentPolicy, getClient, KMS, KmsKeyringNode } from '@aws-crypto/client-node';
import { PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { available, CLIENTS_REQUIRED } from '../clients.js';

const required = CLIENTS_REQUIRED;
const awsCli = available('aws', ['--version']);

let s: TestServer;
let t: Tenant;
let other: Tenant;
let region: string;
let creds: { accessKeyId: string; secretAccessKey: string };
let client: KMSClient;

async function credentialsFor(tenant: Tenant) {
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: tenant.token, body: { credential: { user_id: tenant.adminUserId, description: 'aws clients' } } });
  assert.equal(r.status, 201, r.text);
  return { accessKeyId: r.json.credential.access as string, secretAccessKey: r.json.credential.secret as string };
}

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  other = await s.createTenant();
  region = t.projects[0]!.name;
  creds = await credentialsFor(t);
  client = new KMSClient({ endpoint: s.url, region, credentials: creds });
});
after(async () => {
  client?.destroy();
  await s?.close();
});

describe('@aws-sdk/client-kms', () => {
  test('every supported operation, with the SDK\'s own signing and parsing', async () => {
    const created = await client.send(new CreateKeyCommand({ Description: 'sdk key', Tags: [{ TagKey: 'env', TagValue: 'test' }] }));
    const meta = created.KeyMetadata!;
    assert.equal(meta.KeySpec, 'SYMMETRIC_DEFAULT');
    assert.equal(meta.KeyState, 'Enabled');
    assert.equal(meta.Arn, `arn:aws:kms:${region}:${t.accountId}:key/${meta.KeyId}`);
    assert.ok(meta.CreationDate instanceof Date && Math.abs(meta.CreationDate.getTime() - Date.now()) < 60_000);
    const keyId = meta.KeyId!;
    assert.equal((await client.send(new DescribeKeyCommand({ KeyId: meta.Arn }))).KeyMetadata!.Description, 'sdk key');
    assert.ok((await client.send(new ListKeysCommand({}))).Keys!.some((k) => k.KeyId === keyId));

    await client.send(new CreateAliasCommand({ AliasName: 'alias/sdk-orders', TargetKeyId: keyId }));
    assert.ok((await client.send(new ListAliasesCommand({}))).Aliases!.some((a) => a.AliasName === 'alias/sdk-orders' && a.TargetKeyId === keyId));
    const ctx = { purpose: 'test', order: '7' };
    const enc = await client.send(new EncryptCommand({ KeyId: 'alias/sdk-orders', Plaintext: Buffer.from('hello from the SDK'), EncryptionContext: ctx }));
    assert.equal(enc.KeyId, meta.Arn);
    const dec = await client.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ctx }));
    assert.equal(Buffer.from(dec.Plaintext!).toString(), 'hello from the SDK');
    await assert.rejects(client.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { purpose: 'other' } })), { name: 'InvalidCiphertextException' });

    const second = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    const re = await client.send(new ReEncryptCommand({ CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ctx, DestinationKeyId: second }));
    assert.equal(re.SourceKeyId, meta.Arn);
    assert.equal(Buffer.from((await client.send(new DecryptCommand({ CiphertextBlob: re.CiphertextBlob }))).Plaintext!).toString(), 'hello from the SDK');

    const dk = await client.send(new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_256', EncryptionContext: ctx }));
    assert.equal(dk.Plaintext!.length, 32);
    assert.deepEqual(Buffer.from((await client.send(new DecryptCommand({ CiphertextBlob: dk.CiphertextBlob, EncryptionContext: ctx }))).Plaintext!), Buffer.from(dk.Plaintext!));
    const dkw = await client.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: keyId, NumberOfBytes: 16 }));
    assert.ok(!('Plaintext' in dkw), 'no plaintext data key');
    assert.equal((await client.send(new DecryptCommand({ CiphertextBlob: dkw.CiphertextBlob }))).Plaintext!.length, 16);
    assert.equal((await client.send(new GenerateRandomCommand({ NumberOfBytes: 48 }))).Plaintext!.length, 48);

    await client.send(new DisableKeyCommand({ KeyId: keyId }));
    await assert.rejects(client.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })), { name: 'DisabledException' });
    await client.send(new EnableKeyCommand({ KeyId: keyId }));
    await client.send(new EnableKeyRotationCommand({ KeyId: keyId, RotationPeriodInDays: 90 }));
    const rot = await client.send(new GetKeyRotationStatusCommand({ KeyId: keyId }));
    assert.equal(rot.KeyRotationEnabled, true);
    assert.equal(rot.RotationPeriodInDays, 90);

    await client.send(new TagResourceCommand({ KeyId: keyId, Tags: [{ TagKey: 'team', TagValue: 'pay' }] }));
    await client.send(new UntagResourceCommand({ KeyId: keyId, TagKeys: ['env'] }));
    assert.deepEqual((await client.send(new ListResourceTagsCommand({ KeyId: keyId }))).Tags, [{ TagKey: 'team', TagValue: 'pay' }]);

    const grant = await client.send(new CreateGrantCommand({ KeyId: keyId, GranteePrincipal: t.adminUserId, RetiringPrincipal: t.adminUserId, Operations: ['Encrypt', 'Decrypt'] }));
    assert.ok(grant.GrantId);
    assert.equal((await client.send(new ListGrantsCommand({ KeyId: keyId }))).Grants!.length, 1);
    await client.send(new RetireGrantCommand({ KeyId: keyId, GrantId: grant.GrantId }));
    const g2 = await client.send(new CreateGrantCommand({ KeyId: keyId, GranteePrincipal: t.adminUserId, Operations: ['Encrypt'] }));
    await client.send(new RevokeGrantCommand({ KeyId: keyId, GrantId: g2.GrantId! }));
    assert.equal((await client.send(new ListGrantsCommand({ KeyId: keyId }))).Grants!.length, 0);

    const sched = await client.send(new ScheduleKeyDeletionCommand({ KeyId: second, PendingWindowInDays: 7 }));
    assert.equal(sched.KeyState, 'PendingDeletion');
    assert.ok(sched.DeletionDate instanceof Date);
    await assert.rejects(client.send(new EncryptCommand({ KeyId: second, Plaintext: Buffer.from('x') })), { name: 'KMSInvalidStateException' });
    await client.send(new CancelKeyDeletionCommand({ KeyId: second }));
    assert.equal((await client.send(new DescribeKeyCommand({ KeyId: second }))).KeyMetadata!.KeyState, 'Disabled');

    for (const [KeySpec, SigningAlgorithm, hash] of [['RSA_2048', 'RSASSA_PSS_SHA_256', 'sha256'], ['ECC_NIST_P256', 'ECDSA_SHA_256', 'sha256']] as const) {
      const signer = (await client.send(new CreateKeyCommand({ KeySpec, KeyUsage: 'SIGN_VERIFY' }))).KeyMetadata!;
      assert.deepEqual(signer.SigningAlgorithms!.includes(SigningAlgorithm), true);
      const message = Buffer.from('release 1.0.0');
      const sig = await client.send(new SignCommand({ KeyId: signer.KeyId, Message: message, MessageType: 'RAW', SigningAlgorithm }));
      assert.equal((await client.send(new VerifyCommand({ KeyId: signer.KeyId, Message: message, MessageType: 'RAW', Signature: sig.Signature, SigningAlgorithm }))).SignatureValid, true);
      await assert.rejects(client.send(new VerifyCommand({ KeyId: signer.KeyId, Message: Buffer.from('release 1.0.1'), MessageType: 'RAW', Signature: sig.Signature, SigningAlgorithm })), { name: 'KMSInvalidSignatureException' });
      const pub = await client.send(new GetPublicKeyCommand({ KeyId: signer.KeyId }));
      const key = createPublicKey({ key: Buffer.from(pub.PublicKey!), format: 'der', type: 'spki' });
      const opts = KeySpec === 'RSA_2048' ? { padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: 32 } : { dsaEncoding: 'der' as const };
      assert.ok(cryptoVerify(hash, message, { key, ...opts }, Buffer.from(sig.Signature!)));
    }
  });

  test('errors come back as the SDK\'s exception types; another tenant\'s key is NotFound', async () => {
    const keyId = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    const theirs = new KMSClient({ endpoint: s.url, region, credentials: await credentialsFor(other) });
    try {
      await assert.rejects(theirs.send(new DescribeKeyCommand({ KeyId: keyId })), { name: 'NotFoundException' });
      await assert.rejects(theirs.send(new EncryptCommand({ KeyId: `arn:aws:kms:${region}:${t.accountId}:key/${keyId}`, Plaintext: Buffer.from('x') })), { name: 'NotFoundException' });
      const enc = await client.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('mine') }));
      await assert.rejects(theirs.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob })), { name: 'NotFoundException' });
    } finally {
      theirs.destroy();
    }
    await assert.rejects(client.send(new EncryptCommand({ KeyId: keyId, Plaintext: randomBytes(4097) })), { name: 'ValidationException' });
    await assert.rejects(client.send(new DecryptCommand({ CiphertextBlob: randomBytes(64) })), { name: 'InvalidCiphertextException' });
    await assert.rejects(client.send(new CreateKeyCommand({ KeySpec: 'HMAC_256' as never })), { name: 'UnsupportedOperationException' });
    await assert.rejects(client.send(new DescribeKeyCommand({ KeyId: 'alias/does-not-exist' })), { name: 'NotFoundException' });
    // A user of the account without any KMS policy is denied, in the SDK's terms.
    const u = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name: `nokms${randomBytes(3).toString('hex')}`, password: 'N0-Kms-Passw0rd!' } } });
    assert.equal(u.status, 201, u.text);
    const uk = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: u.json.user.id } } });
    const plain = new KMSClient({ endpoint: s.url, region, credentials: { accessKeyId: uk.json.credential.access, secretAccessKey: uk.json.credential.secret } });
    try {
      await assert.rejects(plain.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })), { name: 'AccessDeniedException' });
    } finally {
      plain.destroy();
    }
    const bad = new KMSClient({ endpoint: s.url, region, credentials: { accessKeyId: creds.accessKeyId, secretAccessKey: 'wrong-secret-key-wrong-secret-key-0000' } });
    try {
      await assert.rejects(bad.send(new ListKeysCommand({})), (e: { name: string; $metadata: { httpStatusCode: number } }) => e.$metadata.httpStatusCode === 401 && e.name === 'InvalidSignatureException');
    } finally {
      bad.destroy();
    }
  });

  test('bad input on the wire: each is a 4xx with the AWS JSON error shape', async () => {
    const keyId = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    // A project-scoped token works too (the project's region stands for the signed region).
    const token = await s.token(t.name, 'admin', PASSWORD, region);
    const raw = async (target: string, body: string) => {
      const r = await fetch(`${s.url}/`, { method: 'POST', headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${target}`, 'x-auth-token': token }, body });
      return { status: r.status, json: (await r.json()) as { __type: string; message: string } };
    };
    const cases: [string, string, number, string][] = [
      ['Encrypt', JSON.stringify({ KeyId: keyId, Plaintext: '%%%not base64%%%' }), 400, 'ValidationException'],
      ['Encrypt', JSON.stringify({ KeyId: keyId, Plaintext: randomBytes(5000).toString('base64') }), 400, 'ValidationException'],
      ['Decrypt', JSON.stringify({ CiphertextBlob: randomBytes(20).toString('base64') }), 400, 'InvalidCiphertextException'],
      ['Encrypt', '{"KeyId":', 400, 'SerializationException'],
      ['CreateKey', JSON.stringify({ KeySpec: 'AES_512' }), 400, 'UnsupportedOperationException'],
      ['Encrypt', JSON.stringify({ KeyId: keyId }), 400, 'ValidationException'],
      ['NoSuchOperation', '{}', 400, 'UnknownOperationException'],
    ];
    for (const [target, body, status, type] of cases) {
      const r = await raw(target, body);
      assert.equal(r.status, status, `${target} ${body.slice(0, 40)}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.__type, type, `${target}: ${JSON.stringify(r.json)}`);
      assert.ok(r.json.message.length > 0);
    }
    const enc = await client.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('truncate me') }));
    const truncated = Buffer.from(enc.CiphertextBlob!).subarray(0, 45).toString('base64');
    assert.equal((await raw('Decrypt', JSON.stringify({ CiphertextBlob: truncated }))).json.__type, 'InvalidCiphertextException');
  });

  test('ReEncrypt decides on the source key with its tags: a tag-conditioned Deny keeps data under that key', async () => {
    const restricted = (await client.send(new CreateKeyCommand({ Tags: [{ TagKey: 'tier', TagValue: 'restricted' }] }))).KeyMetadata!.KeyId!;
    const open = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    const enc = await client.send(new EncryptCommand({ KeyId: restricted, Plaintext: Buffer.from('restricted data') }));
    // A user with every KMS permission but those on keys tagged tier=restricted.
    const u = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name: 'kms-user', password: 'An0ther-Passw0rd!' } } });
    const group = (await s.api('POST', '/v3/groups', { token: t.token, body: { group: { name: 'kms-users' } } })).json.group.id as string;
    const role = (await s.api('POST', '/v3.0/OS-ROLE/roles', { token: t.token, body: { role: { display_name: 'kms-but-restricted', policy: { Version: '1.1', Statement: [
      { Effect: 'Allow', Action: ['kms:*:*'] },
      { Effect: 'Deny', Action: ['kms:cmk:*'], Condition: { StringEquals: { 'g:ResourceTag/tier': ['restricted'] } } },
    ] } } } })).json.role.id as string;
    assert.equal((await s.api('PUT', `/v3/domains/${t.accountId}/groups/${group}/roles/${role}`, { token: t.token })).status, 204);
    assert.equal((await s.api('PUT', `/v3/groups/${group}/users/${u.json.user.id}`, { token: t.token })).status, 204);
    const k = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: u.json.user.id } } });
    const user = new KMSClient({ endpoint: s.url, region, credentials: { accessKeyId: k.json.credential.access, secretAccessKey: k.json.credential.secret } });
    try {
      await assert.rejects(user.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob })), { name: 'AccessDeniedException' });
      await assert.rejects(user.send(new ReEncryptCommand({ CiphertextBlob: enc.CiphertextBlob, DestinationKeyId: open })), { name: 'AccessDeniedException' }, 'not moved to a key the user may decrypt with');
      const mine = await user.send(new EncryptCommand({ KeyId: open, Plaintext: Buffer.from('mine') }));
      assert.ok(mine.CiphertextBlob, 'the untagged key is the user\'s to use');
    } finally {
      user.destroy();
    }
  });

  test('a grantee holding CreateGrant passes on only what its own grants hold', async () => {
    const key = (await client.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    const mkUser = async (name: string) => {
      const u = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name, password: 'An0ther-Passw0rd!' } } });
      const k = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: u.json.user.id } } });
      return { id: u.json.user.id as string, client: new KMSClient({ endpoint: s.url, region, credentials: { accessKeyId: k.json.credential.access, secretAccessKey: k.json.credential.secret } }) };
    };
    const granter = await mkUser('granter'); // no KMS policy at all: only grants
    const other = await mkUser('grant-receiver');
    try {
      await client.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: granter.id, Operations: ['CreateGrant', 'Encrypt'] }));
      await assert.rejects(granter.client.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: granter.id, Operations: ['Decrypt'] })), { name: 'AccessDeniedException' }, 'not Decrypt for itself');
      await assert.rejects(granter.client.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: other.id, Operations: ['Encrypt', 'GenerateDataKey'] })), { name: 'AccessDeniedException' });
      await granter.client.send(new CreateGrantCommand({ KeyId: key, GranteePrincipal: other.id, Operations: ['Encrypt'] }));
      assert.ok((await other.client.send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('x') }))).CiphertextBlob);
      await assert.rejects(granter.client.send(new DecryptCommand({ CiphertextBlob: (await client.send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('y') }))).CiphertextBlob })), { name: 'AccessDeniedException' });
    } finally {
      granter.client.destroy();
      other.client.destroy();
    }
  });

  test('credentials scoped to a project act in its region only', async () => {
    const scoped = await s.token(t.name, 'admin', t.adminPassword, t.projects[0]!.name);
    const tmp = await s.api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { token: scoped, body: { auth: { identity: { methods: ['token'] } } } });
    assert.equal(tmp.status, 201, tmp.text);
    const credentials = { accessKeyId: tmp.json.credential.access, secretAccessKey: tmp.json.credential.secret, sessionToken: tmp.json.credential.securitytoken };
    const home = new KMSClient({ endpoint: s.url, region: t.projects[0]!.name, credentials });
    const away = new KMSClient({ endpoint: s.url, region: t.projects[1]!.name, credentials });
    try {
      assert.ok((await home.send(new ListKeysCommand({}))).Keys);
      await assert.rejects(away.send(new ListKeysCommand({})), { name: 'AccessDeniedException' });
    } finally {
      home.destroy();
      away.destroy();
    }
  });

  test('a key made through the Huawei API is the same key through the AWS API, both ways', async () => {
    const project = t.projects[0]!.id;
    const hw = await s.api('POST', `/v1.0/${project}/kms/create-key`, { token: t.token, body: { key_alias: 'made-in-huawei-api' } });
    assert.equal(hw.status, 200, hw.text);
    const keyId = hw.json.key_info.key_id as string;
    const enc = await client.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('crosses dialects'), EncryptionContext: { a: 'b' } }));
    const back = await s.api('POST', `/v1.0/${project}/kms/decrypt-data`, { token: t.token, body: { cipher_text: Buffer.from(enc.CiphertextBlob!).toString('base64'), encryption_context: { a: 'b' } } });
    assert.equal(back.json.plain_text, 'crosses dialects');
    const hwEnc = await s.api('POST', `/v1.0/${project}/kms/encrypt-data`, { token: t.token, body: { key_id: keyId, plain_text: 'the other way' } });
    assert.equal(Buffer.from((await client.send(new DecryptCommand({ CiphertextBlob: Buffer.from(hwEnc.json.cipher_text, 'base64') }))).Plaintext!).toString(), 'the other way');
    assert.equal((await client.send(new DescribeKeyCommand({ KeyId: 'alias/made-in-huawei-api' }))).KeyMetadata!.KeyId, keyId);
  });
});

describe('AWS CLI', { skip: !awsCli && !required ? 'the aws CLI is not installed (apt-get install -y awscli)' : false }, () => {
  test('aws kms encrypt, decrypt and generate-data-key against --endpoint-url', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'custos-awscli-'));
    const env = {
      ...process.env, AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey, AWS_DEFAULT_REGION: region,
      AWS_CONFIG_FILE: path.join(dir, 'config'), AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'credentials'), AWS_EC2_METADATA_DISABLED: 'true', AWS_PAGER: '',
    };
    const aws = async (...args: string[]) => (await promisify(execFile)('aws', ['kms', ...args, '--endpoint-url', s.url, '--output', 'json'], { env, timeout: 60_000 })).stdout;
    try {
      const keyId = JSON.parse(await aws('create-key', '--description', 'from the CLI')).KeyMetadata.KeyId as string;
      const secret = randomBytes(200);
      writeFileSync(path.join(dir, 'plain.bin'), secret);
      const enc = JSON.parse(await aws('encrypt', '--key-id', keyId, '--plaintext', `fileb://${path.join(dir, 'plain.bin')}`, '--encryption-context', 'app=cli'));
      writeFileSync(path.join(dir, 'ct.bin'), Buffer.from(enc.CiphertextBlob, 'base64'));
      const dec = JSON.parse(await aws('decrypt', '--ciphertext-blob', `fileb://${path.join(dir, 'ct.bin')}`, '--encryption-context', 'app=cli'));
      assert.deepEqual(Buffer.from(dec.Plaintext, 'base64'), secret);
      const dk = JSON.parse(await aws('generate-data-key', '--key-id', keyId, '--key-spec', 'AES_256'));
      assert.equal(Buffer.from(dk.Plaintext, 'base64').length, 32);
      writeFileSync(path.join(dir, 'dk.bin'), Buffer.from(dk.CiphertextBlob, 'base64'));
      assert.equal(JSON.parse(await aws('decrypt', '--ciphertext-blob', `fileb://${path.join(dir, 'dk.bin')}`)).Plaintext, dk.Plaintext);
      await assert.rejects(aws('decrypt', '--ciphertext-blob', `fileb://${path.join(dir, 'ct.bin')}`, '--encryption-context', 'app=other'), /InvalidCiphertextException/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('AWS Encryption SDK (@aws-crypto/client-node)', () => {
  test('encrypts and decrypts a file end to end with a KMS keyring on a Custos key', async () => {
    const arn = (await client.send(new CreateKeyCommand({ Description: 'esdk' }))).KeyMetadata!.Arn!;
    const clientProvider = getClient(KMS, { endpoint: s.url, credentials: creds });
    const keyring = new KmsKeyringNode({ generatorKeyId: arn, clientProvider });
    const { encrypt, decrypt } = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
    const file = randomBytes(256 * 1024);
    const context = { stage: 'test', purpose: 'file' };
    const { result } = await encrypt(keyring, file, { encryptionContext: context });
    assert.ok(!result.includes(file.subarray(0, 64)));
    const opened = await decrypt(keyring, result);
    assert.equal(createHash('sha256').update(opened.plaintext).digest('hex'), createHash('sha256').update(file).digest('hex'));
    assert.equal(opened.messageHeader.encryptionContext.stage, 'test');
    // Another tenant's credentials cannot open it.
    const theirs = new KmsKeyringNode({ generatorKeyId: arn, clientProvider: getClient(KMS, { endpoint: s.url, credentials: await credentialsFor(other) }) });
    await assert.rejects(decrypt(theirs, result));
  });
});

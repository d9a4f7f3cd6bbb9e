// The pkcs11 root-key provider against SoftHSMv2, with a token this test creates for itself.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { sql } from 'kysely';
import { DecryptError } from '../../src/crypto/aead.js';
import { openPkcs11RootKey } from '../../src/crypto/rootkey-pkcs11.js';
import { DB, freshDatabase, startTestServer } from '../helpers.js';

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const required = process.env.CI === 'true' || process.env.CUSTOS_TEST_PKCS11 === '1';
const available = existsSync(MODULE) && (() => {
  try {
    execFileSync('softhsm2-util', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
if (!available && required) throw new Error('SoftHSMv2 (Debian package softhsm2) is required for the pkcs11 tests: apt-get install -y softhsm2');
const skip = available ? false : 'SoftHSMv2 is not installed (apt-get install -y softhsm2)';

const PIN = `${randomBytes(4).toString('hex')}`;
const LABEL = `custos-${randomBytes(4).toString('hex')}`;
let dir: string;

function filesUnder(d: string): string[] {
  return readdirSync(d).flatMap((f) => {
    const p = path.join(d, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

describe('pkcs11 root key (SoftHSMv2)', { skip }, () => {
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'custos-hsm-'));
    mkdirSync(path.join(dir, 'tokens'));
    writeFileSync(path.join(dir, 'softhsm2.conf'), `directories.tokendir = ${path.join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    process.env.SOFTHSM2_CONF = path.join(dir, 'softhsm2.conf');
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', LABEL, '--pin', PIN, '--so-pin', `${PIN}so`], { stdio: 'ignore' });
    process.env.CUSTOS_TEST_HSM_PIN = PIN;
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  const opts = () => ({ modulePath: MODULE, tokenLabel: LABEL, keyLabel: 'custos-root', pin: PIN, pinEnv: 'CUSTOS_TEST_HSM_PIN' });

  test('wraps inside the HSM, binds the AAD, refuses tampering, and a second session finds the same key', async () => {
    const first = openPkcs11RootKey(opts());
    assert.equal(first.created, true);
    assert.equal(first.provider.kind, 'pkcs11');
    const secret = randomBytes(32);
    const wrapped = await first.provider.wrap(secret, Buffer.from('context-a'));
    assert.ok(!wrapped.includes(secret), 'the wrapped form does not contain the plaintext');
    assert.deepEqual(await first.provider.unwrap(wrapped, Buffer.from('context-a')), secret);
    await assert.rejects(first.provider.unwrap(wrapped, Buffer.from('context-b')), DecryptError);
    const tampered = Buffer.from(wrapped);
    tampered[tampered.length - 3]! ^= 1;
    await assert.rejects(first.provider.unwrap(tampered, Buffer.from('context-a')), DecryptError);
    await assert.rejects(first.provider.unwrap(wrapped.subarray(0, 10), Buffer.from('context-a')), DecryptError);
    await first.provider.close();

    const second = openPkcs11RootKey(opts());
    assert.equal(second.created, false, 'the key is found, not made again');
    assert.deepEqual(await second.provider.unwrap(wrapped, Buffer.from('context-a')), secret);
    await second.provider.close();
  });

  test('the key is sensitive and not extractable: its value cannot be read out', () => {
    const lib = new pkcs11js.PKCS11();
    lib.load(MODULE);
    lib.C_Initialize();
    try {
      const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === LABEL)!;
      const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
      lib.C_Login(session, pkcs11js.CKU_USER, PIN);
      lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_LABEL, value: 'custos-root' }]);
      const [key] = lib.C_FindObjects(session, 1);
      lib.C_FindObjectsFinal(session);
      assert.ok(key);
      const attrs = lib.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_TOKEN }]);
      assert.deepEqual(attrs.map((a) => (a.value as Buffer)[0]), [1, 0, 1]);
      assert.throws(() => lib.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
      lib.C_Logout(session);
      lib.C_CloseSession(session);
    } finally {
      lib.C_Finalize();
    }
  });

  test('wrong PIN, unknown token and missing PIN are clear errors', () => {
    assert.throws(() => openPkcs11RootKey({ ...opts(), pin: 'wrong-pin' }), /refused the login with the PIN from CUSTOS_TEST_HSM_PIN \(CKR_PIN_INCORRECT\)/);
    assert.throws(() => openPkcs11RootKey({ ...opts(), tokenLabel: 'no-such-token' }), /no HSM token labelled "no-such-token"/);
    assert.throws(() => openPkcs11RootKey({ ...opts(), pin: undefined }), /needs its user PIN: set CUSTOS_TEST_HSM_PIN/);
  });

  test('a server on the HSM root key serves AK/SK, restarts, and keeps no unwrapped key on disk', async () => {
    const database = await freshDatabase();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-hsm-data-'));
    const config = { rootKeyProvider: 'pkcs11' as const, pkcs11Module: MODULE, pkcs11TokenLabel: LABEL, pkcs11PinEnv: 'CUSTOS_TEST_HSM_PIN' };
    try {
      const s1 = await startTestServer({ database, dataDir, config });
      assert.equal(existsSync(path.join(dataDir, 'root-key.json')), false, 'no local root key file is made');
      const t = await s1.createTenant();
      const k = await s1.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
      const { access, secret } = k.json.credential as { access: string; secret: string };
      const signedGet = async (url: string) => {
        const u = new URL(url);
        const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', credentials: { accessKeyId: access, secretAccessKey: secret }, sha256: Sha256 });
        const req = await signer.sign({ method: 'GET', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: '/v3/users', query: {}, headers: { host: u.host, 'x-custos-nonce': randomBytes(8).toString('hex') } });
        return fetch(`${url}/v3/users`, { headers: req.headers as Record<string, string> });
      };
      assert.equal((await signedGet(s1.url)).status, 200);
      // The system keys as the HSM unwraps them: they must not sit anywhere on disk in the clear.
      const rows = (await sql`select name, wrapped from system_keys`.execute(s1.custos.store.db)).rows as { name: string; wrapped: string }[];
      const plain: Buffer[] = [];
      for (const r of rows) plain.push(await s1.custos.root.unwrap(Buffer.from(r.wrapped, 'base64'), Buffer.from(`custos system key ${r.name}`)));
      assert.ok(plain.length >= 2);
      await s1.stop();

      const s2 = await startTestServer({ database, dataDir, config, join: true });
      try {
        assert.equal((await signedGet(s2.url)).status, 200, 'the sealed SK still opens after a restart');
      } finally {
        await s2.stop();
      }
      const places = [...filesUnder(path.join(dir, 'tokens')), ...(DB === 'sqlite' ? filesUnder(dataDir) : [])];
      for (const f of places) {
        const bytes = readFileSync(f);
        for (const p of plain) {
          assert.ok(!bytes.includes(p) && !bytes.includes(Buffer.from(p.toString('base64'))) && !bytes.includes(Buffer.from(p.toString('hex'))), `${path.basename(f)} holds an unwrapped key`);
        }
      }
    } finally {
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

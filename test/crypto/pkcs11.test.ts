// The pkcs11 root-key provider against SoftHSMv2, with a token this test creates for itself: the
// provider alone, a full server over HTTP across a restart, the `custos serve` exit on HSM errors, and
// a scan of the database and the token files for unwrapped keys.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import pkcs11js from 'pkcs11js';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { sql } from 'kysely';
import { ConfigError, loadConfig } from '../../src/config.js';
import { DecryptError } from '../../src/crypto/aead.js';
import { RootKeyError } from '../../src/crypto/rootkey.js';
import { openPkcs11RootKey, type Pkcs11RootKeyOptions } from '../../src/crypto/rootkey-pkcs11.js';
import { DB, freshDatabase, startTestServer } from '../helpers.js';
import { CLI_MAIN } from '../process.js';

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
const MISSING = `SoftHSMv2 is not installed (${MODULE} and softhsm2-util): apt-get install -y softhsm2`;

test('SoftHSMv2 is installed where the pkcs11 tests are required (CI=true or CUSTOS_TEST_PKCS11=1)', { skip: !required }, () => {
  assert.ok(available, MISSING);
});

describe('pkcs11 configuration', () => {
  test('the pkcs11 provider needs a module and a token label, named in the error', () => {
    assert.throws(() => loadConfig({ env: { CUSTOS_ROOT_KEY_PROVIDER: 'pkcs11' } }), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /needs pkcs11Module \(CUSTOS_PKCS11_MODULE\)/);
      assert.match(e.message, /needs pkcs11TokenLabel \(CUSTOS_PKCS11_TOKEN_LABEL\)/);
      return true;
    });
  });

  test('settings come from the environment; pkcs11PinEnv must be a variable name, not a PIN', () => {
    const cfg = loadConfig({
      env: { CUSTOS_ROOT_KEY_PROVIDER: 'pkcs11', CUSTOS_PKCS11_MODULE: MODULE, CUSTOS_PKCS11_TOKEN_LABEL: 'tok', CUSTOS_PKCS11_PIN_ENV: 'HSM_PIN' },
    });
    assert.deepEqual(
      [cfg.rootKeyProvider, cfg.pkcs11Module, cfg.pkcs11TokenLabel, cfg.pkcs11KeyLabel, cfg.pkcs11PinEnv],
      ['pkcs11', MODULE, 'tok', 'custos-root', 'HSM_PIN'],
    );
    assert.equal(loadConfig({ env: {} }).pkcs11PinEnv, 'CUSTOS_PKCS11_PIN');
    assert.throws(() => loadConfig({ env: { CUSTOS_PKCS11_PIN_ENV: '12 34-56' } }), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /\/pkcs11PinEnv/);
      assert.ok(!e.message.includes('12 34-56'), 'the rejected value is not echoed');
      return true;
    });
  });
});

const PIN = randomBytes(6).toString('hex');
const LABEL = `custos-${randomBytes(4).toString('hex')}`;
const PIN_ENV = 'CUSTOS_TEST_HSM_PIN';
let dir: string;

function filesUnder(d: string): string[] {
  return readdirSync(d).flatMap((f) => {
    const p = path.join(d, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

/**
 * A session of the test's own on the token, through a second handle on the same module (the same
 * library in this process). The module is finalised afterwards only if this handle initialised it.
 */
function inspect<T>(fn: (lib: pkcs11js.PKCS11, session: Buffer, slot: Buffer) => T): T {
  const lib = new pkcs11js.PKCS11();
  lib.load(MODULE);
  let owns = true;
  try {
    lib.C_Initialize();
  } catch (e) {
    if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test(String(e))) throw e;
    owns = false;
  }
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === LABEL)!;
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      try {
        lib.C_Login(session, pkcs11js.CKU_USER, PIN);
      } catch (e) {
        if (!/CKR_USER_ALREADY_LOGGED_IN/.test(String(e))) throw e;
      }
      return fn(lib, session, slot);
    } finally {
      try {
        lib.C_CloseSession(session);
      } catch {
        /* closed by the test itself */
      }
    }
  } finally {
    if (owns) lib.C_Finalize();
  }
}

function secretKeys(lib: pkcs11js.PKCS11, session: Buffer, label?: string): Buffer[] {
  lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }, ...(label ? [{ type: pkcs11js.CKA_LABEL, value: label }] : [])]);
  const found = lib.C_FindObjects(session, 100);
  lib.C_FindObjectsFinal(session);
  return found;
}

describe('pkcs11 root key (SoftHSMv2)', { skip: available ? false : MISSING }, () => {
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'custos-hsm-'));
    mkdirSync(path.join(dir, 'tokens'));
    writeFileSync(path.join(dir, 'softhsm2.conf'), `directories.tokendir = ${path.join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    // Read by SoftHSM when the module is initialised, here and in the `custos serve` processes started below.
    process.env.SOFTHSM2_CONF = path.join(dir, 'softhsm2.conf');
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', LABEL, '--pin', PIN, '--so-pin', `${PIN}so`], { stdio: 'ignore' });
    process.env[PIN_ENV] = PIN;
  });
  after(() => {
    delete process.env[PIN_ENV];
    rmSync(dir, { recursive: true, force: true });
  });
  const opts = (over: Partial<Pkcs11RootKeyOptions> = {}): Pkcs11RootKeyOptions => ({
    modulePath: MODULE, tokenLabel: LABEL, keyLabel: 'custos-root', pin: PIN, pinEnv: PIN_ENV, create: true, ...over,
  });

  test('wraps inside the HSM, binds the AAD, refuses tampering, and a second provider finds the same key', async () => {
    const first = openPkcs11RootKey(opts());
    assert.equal(first.created, true);
    assert.equal(first.provider.kind, 'pkcs11');
    assert.equal(first.provider.development, false);
    const secret = randomBytes(32);
    const aad = Buffer.from('custos system key a');
    const wrapped = await first.provider.wrap(secret, aad);
    assert.equal(wrapped[0], 0x01, 'version byte');
    assert.equal(wrapped.length, 1 + 12 + 32 + 16, 'version | IV | ciphertext | tag');
    assert.ok(!wrapped.includes(secret), 'the wrapped form does not contain the plaintext');
    assert.notDeepEqual((await first.provider.wrap(secret, aad)).subarray(1, 13), wrapped.subarray(1, 13), 'a fresh IV per wrap');
    assert.deepEqual(await first.provider.unwrap(wrapped, aad), secret);
    await assert.rejects(first.provider.unwrap(wrapped, Buffer.from('custos system key b')), DecryptError, 'another AAD');
    for (const at of [0, 1, 13, wrapped.length - 1]) {
      const tampered = Buffer.from(wrapped);
      tampered[at]! ^= 1;
      await assert.rejects(first.provider.unwrap(tampered, aad), DecryptError, `byte ${at} changed`);
    }
    await assert.rejects(first.provider.unwrap(wrapped.subarray(0, 20), aad), DecryptError, 'truncated');
    await assert.rejects(first.provider.unwrap(wrapped.subarray(0, wrapped.length - 1), aad), DecryptError, 'tag cut short');
    assert.deepEqual(await first.provider.unwrap(wrapped, aad), secret, 'a failed unwrap leaves the session usable');

    // Two providers on one token in one process: closing one must not log the other out.
    const second = openPkcs11RootKey(opts());
    assert.equal(second.created, false, 'the key is found, not made again');
    assert.deepEqual(await second.provider.unwrap(wrapped, aad), secret);
    await first.provider.close();
    assert.deepEqual(await second.provider.unwrap(wrapped, aad), secret, 'still logged in after the other provider closed');
    await second.provider.close();
    await assert.rejects(second.provider.unwrap(wrapped, aad), RootKeyError, 'closed');
    inspect((lib, session) => assert.equal(secretKeys(lib, session, 'custos-root').length, 1, 'exactly one root key in the token'));
  });

  test('the key is sensitive and never extractable: its value cannot be read or wrapped out', () => {
    inspect((lib, session) => {
      const [key] = secretKeys(lib, session, 'custos-root');
      assert.ok(key);
      const attrs = lib.C_GetAttributeValue(session, key, [
        { type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_TOKEN }, { type: pkcs11js.CKA_PRIVATE },
        { type: pkcs11js.CKA_ALWAYS_SENSITIVE }, { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
      ]);
      assert.deepEqual(attrs.map((a) => (a.value as Buffer)[0]), [1, 0, 1, 1, 1, 1]);
      assert.throws(() => lib.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
      const kek = lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }, { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 }, { type: pkcs11js.CKA_TOKEN, value: false }, { type: pkcs11js.CKA_WRAP, value: true },
      ]);
      assert.throws(() => lib.C_WrapKey(session, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, kek, key, Buffer.alloc(128)), /CKR_KEY_UNEXTRACTABLE/);
      lib.C_DestroyObject(session, kek);
    });
  });

  test('concurrent operations share a few sessions, and a lost session is replaced', async () => {
    const { provider } = openPkcs11RootKey(opts({ create: false }));
    try {
      const secrets = Array.from({ length: 64 }, () => randomBytes(32));
      const wrapped = await Promise.all(secrets.map((s, i) => provider.wrap(s, Buffer.from(`k${i}`))));
      const opened = await Promise.all(wrapped.map((w, i) => provider.unwrap(w, Buffer.from(`k${i}`))));
      opened.forEach((p, i) => assert.deepEqual(p, secrets[i]));
      assert.ok((provider as unknown as { openSessions: number }).openSessions <= 4, 'at most 4 HSM sessions for 64 concurrent operations');

      // What a network HSM restart does to a client: every session and the login are gone.
      inspect((lib, _s, slot) => lib.C_CloseAllSessions(slot));
      assert.deepEqual(await provider.unwrap(wrapped[0]!, Buffer.from('k0')), secrets[0], 'logged in again on a fresh session');
      const again = await provider.wrap(secrets[1]!, Buffer.from('k1'));
      assert.deepEqual(await provider.unwrap(again, Buffer.from('k1')), secrets[1]);
    } finally {
      await provider.close();
    }
  });

  test('a wrong PIN, a missing PIN, an unknown token, a missing module, a missing key and an unfit key are clear errors', () => {
    const fails = (o: Partial<Pkcs11RootKeyOptions>, re: RegExp) =>
      assert.throws(() => openPkcs11RootKey(opts(o)), (e: Error) => {
        assert.ok(e instanceof RootKeyError, `${e.name}: ${e.message}`);
        assert.match(e.message, re);
        assert.ok(!e.message.includes(PIN) && !e.message.includes('wrong-pin-123'), 'no PIN in the message');
        return true;
      });
    fails({ pin: 'wrong-pin-123' }, /refused the login with the PIN from CUSTOS_TEST_HSM_PIN \(CKR_PIN_INCORRECT\)/);
    fails({ pin: undefined }, /needs its user PIN: set CUSTOS_TEST_HSM_PIN/);
    fails({ tokenLabel: 'no-such-token' }, new RegExp(`no HSM token labelled "no-such-token".*tokens present: .*"${LABEL}"`));
    fails({ modulePath: '/nonexistent/libpkcs11.so' }, /cannot load the PKCS#11 module \/nonexistent\/libpkcs11\.so/);
    fails({ keyLabel: 'not-there', create: false }, /no key labelled "not-there" \(pkcs11KeyLabel\) in HSM token .*check the token and key labels/);
    inspect((lib, session) => {
      // A key provisioned by hand that could leave the HSM is refused as a root key.
      lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }, { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 }, { type: pkcs11js.CKA_TOKEN, value: true }, { type: pkcs11js.CKA_LABEL, value: 'weak' },
        { type: pkcs11js.CKA_SENSITIVE, value: false }, { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        { type: pkcs11js.CKA_ENCRYPT, value: true }, { type: pkcs11js.CKA_DECRYPT, value: true },
      ]);
    });
    fails({ keyLabel: 'weak' }, /the key "weak" .* cannot be the root key: CKA_SENSITIVE is false; CKA_EXTRACTABLE is true/);
    inspect((lib, session) => {
      for (const k of secretKeys(lib, session, 'weak')) lib.C_DestroyObject(session, k);
      assert.equal(secretKeys(lib, session, 'not-there').length, 0, 'no key was generated where creating was not allowed');
    });
  });

  test('a server on the HSM root key serves AK/SK, restarts, and keeps no unwrapped key on disk', async () => {
    const database = await freshDatabase();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-hsm-data-'));
    // Its own key label: this installation's first start generates the key.
    const config = { rootKeyProvider: 'pkcs11' as const, pkcs11Module: MODULE, pkcs11TokenLabel: LABEL, pkcs11KeyLabel: 'custos-server-root', pkcs11PinEnv: PIN_ENV };
    try {
      const s1 = await startTestServer({ database, dataDir, config });
      assert.equal(s1.custos.root.kind, 'pkcs11');
      assert.equal(s1.custos.rootKeyCreated, true);
      assert.equal(existsSync(path.join(dataDir, 'root-key.json')), false, 'no local root key file is made');
      assert.ok(!s1.logs().includes(PIN), 'the PIN is not logged');
      const t = await s1.createTenant(); // a password login
      const k = await s1.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
      assert.equal(k.status, 201, k.text);
      const { access, secret } = k.json.credential as { access: string; secret: string };
      const signedGet = async (url: string) => {
        const u = new URL(url);
        const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', credentials: { accessKeyId: access, secretAccessKey: secret }, sha256: Sha256 });
        const req = await signer.sign({ method: 'GET', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: '/v3/users', query: {}, headers: { host: u.host, 'x-custos-nonce': randomBytes(8).toString('hex') } });
        return fetch(`${url}/v3/users`, { headers: req.headers as Record<string, string> });
      };
      assert.equal((await signedGet(s1.url)).status, 200);
      // The system keys (the layer right below the root key) as the HSM unwraps them.
      const rows = (await sql`select name, wrapped from system_keys`.execute(s1.custos.store.db)).rows as { name: string; wrapped: string }[];
      const systemKeys: Buffer[] = [];
      for (const r of rows) systemKeys.push(await s1.custos.root.unwrap(Buffer.from(r.wrapped, 'base64'), Buffer.from(`custos system key ${r.name}`)));
      assert.ok(systemKeys.length >= 2);
      const pgDump = DB === 'postgres' ? await dumpPostgres(s1) : '';
      await s1.stop();

      const s2 = await startTestServer({ database, dataDir, config, join: true });
      try {
        assert.equal(s2.custos.rootKeyCreated, false);
        assert.equal((await signedGet(s2.url)).status, 200, 'the SK sealed under the HSM-wrapped system key still opens after a restart');
      } finally {
        await s2.stop();
      }

      // An existing installation pointed at a wrong key label stops with the reason, and makes no new key.
      await assert.rejects(startTestServer({ database, dataDir, config: { ...config, pkcs11KeyLabel: 'custos-typo' }, join: true }), /no key labelled "custos-typo"/);
      inspect((lib, session) => assert.equal(secretKeys(lib, session, 'custos-typo').length, 0));

      // The scan. What it proves: neither the database (SQLite files, or every PostgreSQL row) nor the
      // token directory holds any system key in the clear (raw, base64 or hex), nor the secret access
      // key, which is stored only sealed under a system key. It cannot look for the root key itself,
      // whose bytes nobody outside the HSM can read: that is what the attribute test above attests.
      // The tenant's name is looked for too and must be found, so a scan that reads nothing fails.
      const places: [string, Buffer][] = [
        ...filesUnder(path.join(dir, 'tokens')).map((f): [string, Buffer] => [`token file ${path.basename(f)}`, readFileSync(f)]),
        ...(DB === 'sqlite' ? filesUnder(dataDir).map((f): [string, Buffer] => [`data file ${path.basename(f)}`, readFileSync(f)]) : [['PostgreSQL rows', Buffer.from(pgDump)] as [string, Buffer]]),
      ];
      const planted = [...systemKeys.flatMap((p) => [p, Buffer.from(p.toString('base64')), Buffer.from(p.toString('hex'))]), Buffer.from(secret)];
      for (const [where, bytes] of places) for (const p of planted) assert.ok(!bytes.includes(p), `${where} holds an unwrapped key or secret`);
      const db = Buffer.concat(places.filter(([w]) => !w.startsWith('token')).map(([, b]) => b));
      assert.ok(db.includes(Buffer.from(t.name)), 'the scan sees the stored data');
      for (const p of systemKeys) p.fill(0);
    } finally {
      await database.drop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test('`custos serve` exits with code 2 and the reason on HSM errors, without the PIN', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-hsm-cli-'));
    const serve = (env: Record<string, string>) =>
      promisify(execFile)(process.execPath, [CLI_MAIN, 'serve', '--data-dir', dataDir, '--port', '0'], {
        env: { ...process.env, CUSTOS_ROOT_KEY_PROVIDER: 'pkcs11', CUSTOS_PKCS11_MODULE: MODULE, CUSTOS_PKCS11_TOKEN_LABEL: LABEL, ...env },
        timeout: 30_000,
      }).then(
        () => assert.fail('the server started'),
        (e: { code: number; stderr: string }) => e,
      );
    try {
      const wrongPin = await serve({ CUSTOS_PKCS11_PIN: 'wrong-pin-456' });
      assert.equal(wrongPin.code, 2);
      assert.match(wrongPin.stderr, /custos: the HSM refused the login with the PIN from CUSTOS_PKCS11_PIN \(CKR_PIN_INCORRECT\)/);
      assert.ok(!wrongPin.stderr.includes('wrong-pin-456'));
      const noPin = await serve({ CUSTOS_PKCS11_PIN_ENV: 'CUSTOS_TEST_UNSET_PIN' });
      assert.equal(noPin.code, 2);
      assert.match(noPin.stderr, /needs its user PIN: set CUSTOS_TEST_UNSET_PIN/);
      const noModule = await serve({ CUSTOS_PKCS11_PIN: PIN, CUSTOS_PKCS11_MODULE: '/nonexistent/libvendor.so' });
      assert.equal(noModule.code, 2);
      assert.match(noModule.stderr, /cannot load the PKCS#11 module \/nonexistent\/libvendor\.so/);
      const noToken = await serve({ CUSTOS_PKCS11_PIN: PIN, CUSTOS_PKCS11_TOKEN_LABEL: 'absent' });
      assert.equal(noToken.code, 2);
      assert.match(noToken.stderr, /no HSM token labelled "absent"/);
      assert.ok(!noToken.stderr.includes(PIN));
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

/** Every row of every table of the test's PostgreSQL database, as text. */
async function dumpPostgres(s: Awaited<ReturnType<typeof startTestServer>>): Promise<string> {
  const db = s.custos.store.db;
  const tables = (await sql<{ table_name: string }>`select table_name from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE'`.execute(db)).rows;
  let out = '';
  for (const { table_name } of tables) {
    const rows = (await sql<{ r: string }>`select row_to_json(t)::text as r from ${sql.table(table_name)} t`.execute(db)).rows;
    out += rows.map((r) => r.r).join('\n') + '\n';
  }
  assert.ok(tables.length > 3 && out.length > 1000, 'the dump holds the tables');
  return out;
}

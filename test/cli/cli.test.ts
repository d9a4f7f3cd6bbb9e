// The `custos` command as an operator and a tenant administrator use it: admin commands on the local
// storage, then client commands through a stored profile against a running server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freshDatabase } from '../helpers.js';
import { CLI_MAIN, startServerProcess } from '../process.js';

const run = promisify(execFile);

test('admin commands, then login, users, keys and an unlock through the CLI', { timeout: 120_000 }, async () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-cli-data-'));
  const home = mkdtempSync(path.join(tmpdir(), 'custos-cli-home-'));
  const profiles = path.join(home, 'profiles.json');
  const env = (extra: Record<string, string> = {}) => ({ ...process.env, CUSTOS_PROFILES_FILE: profiles, ...extra });
  const database = await freshDatabase();
  // Admin commands and the server share the store: SQLite in dataDir, or the test's PostgreSQL database.
  const custos = (args: string[], extra: Record<string, string> = {}) =>
    run(process.execPath, [CLI_MAIN, ...args, ...(database.url && args.includes('--data-dir') ? ['--database-url', database.url] : [])], { env: env(extra) });
  try {
    const boot = await custos(['admin', 'bootstrap', '--data-dir', dataDir]);
    assert.match(boot.stdout, /operator account custos, user admin, password \S+ \(shown once\)/);
    assert.match((await custos(['admin', 'bootstrap', '--data-dir', dataDir])).stdout, /already bootstrapped/);

    const created = JSON.parse((await custos(['admin', 'create-account', '--name', 'acme', '--data-dir', dataDir, '-o', 'json'])).stdout) as { account: string; password: string }[];
    assert.equal(created[0]!.account, 'acme');
    const firstPassword = created[0]!.password;
    const accounts = JSON.parse((await custos(['admin', 'list-accounts', '--data-dir', dataDir, '-o', 'json'])).stdout) as { name: string }[];
    assert.deepEqual(accounts.map((a) => a.name).sort(), ['acme', 'custos']);
    const reset = (await custos(['admin', 'reset-password', '--account', 'acme', '--user', 'admin', '--data-dir', dataDir])).stdout;
    const password = /new password for admin in acme: (\S+)/.exec(reset)?.[1];
    assert.ok(password);

    const srv = await startServerProcess({ dataDir, ...(database.url ? { databaseUrl: database.url } : {}) });
    try {
      await assert.rejects(custos(['login', '--endpoint', srv.url, '--account', 'acme', '--user', 'admin'], { CUSTOS_PASSWORD: firstPassword }), (e: { code: number; stderr: string }) => {
        assert.equal(e.code, 2);
        assert.match(e.stderr, /login failed/);
        return true;
      });
      const login = await custos(['login', '--endpoint', srv.url, '--account', 'acme', '--user', 'admin'], { CUSTOS_PASSWORD: password! });
      assert.match(login.stderr, /logged in as admin@acme/);
      assert.equal(statSync(profiles).mode & 0o777, 0o600, 'the profile file is readable by its owner only');
      assert.ok(!readFileSync(profiles, 'utf8').includes(password!), 'the password is not stored');

      await custos(['iam', 'users', 'create', '--name', 'alice', '--group', 'admin'], { CUSTOS_PASSWORD: 'Al1ce-Passw0rd!' });
      const users = JSON.parse((await custos(['iam', 'users', 'list', '-o', 'json'])).stdout) as { name: string }[];
      assert.deepEqual(users.map((u) => u.name).sort(), ['admin', 'alice']);
      const table = (await custos(['iam', 'users', 'list'])).stdout;
      assert.match(table, /alice/);
      assert.match(table, /│|\|/, 'a table for people');

      const key = JSON.parse((await custos(['iam', 'keys', 'create', '-o', 'json'])).stdout) as { access: string; secret: string }[];
      assert.match(key[0]!.access, /^[A-Z0-9]{20}$/);
      assert.ok(key[0]!.secret.length >= 30);
      const listed = (await custos(['iam', 'keys', 'list', '-o', 'json'])).stdout;
      assert.ok(listed.includes(key[0]!.access));
      assert.ok(!listed.includes(key[0]!.secret), 'the secret is shown once only');

      // Lock alice with wrong passwords, then unlock her from the server host.
      for (let i = 0; i < 5; i++) await assert.rejects(custos(['login', '--endpoint', srv.url, '--account', 'acme', '--user', 'alice', '--profile', 'alice'], { CUSTOS_PASSWORD: 'Wr0ng-Passw0rd!' }));
      await assert.rejects(custos(['login', '--endpoint', srv.url, '--account', 'acme', '--user', 'alice', '--profile', 'alice'], { CUSTOS_PASSWORD: 'Al1ce-Passw0rd!' }), /locked/);
      await custos(['admin', 'unlock-user', '--account', 'acme', '--user', 'alice', '--data-dir', dataDir]);
      const alice = await custos(['login', '--endpoint', srv.url, '--account', 'acme', '--user', 'alice', '--profile', 'alice'], { CUSTOS_PASSWORD: 'Al1ce-Passw0rd!' });
      assert.match(alice.stderr, /logged in as alice@acme/);

      await assert.rejects(custos(['accounts', 'list']), /403|not authorized|only the platform operator/i, 'a tenant administrator cannot list accounts');
    } finally {
      await srv.stop();
    }
  } finally {
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  }
});

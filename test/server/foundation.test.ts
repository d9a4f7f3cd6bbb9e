// The server foundation as an operator meets it: configuration errors, TLS, plumbing endpoints,
// request ids, graceful shutdown and the CLI's help.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig } from '../../src/config.js';
import { PassThrough } from 'node:stream';
import { startCustos } from '../../src/server/index.js';
import { startTestServer } from '../helpers.js';
import { CLI_MAIN, startServerProcess } from '../process.js';

describe('configuration', () => {
  test('every problem is named, and defaults apply', () => {
    const c = loadConfig({ env: {}, flags: {} });
    assert.equal(c.host, '127.0.0.1');
    assert.equal(c.port, 8080);
    assert.equal(c.auditDigestIntervalSeconds, 3600);
    assert.throws(() => loadConfig({ env: { CUSTOS_PORT: '99999', CUSTOS_LOG_LEVEL: 'loud' } }), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /\/port/);
      assert.match(e.message, /\/logLevel/);
      return true;
    });
    assert.throws(() => loadConfig({ env: { CUSTOS_AUDIT_DIGEST_INTERVAL_SECONDS: '5' } }), /auditDigestIntervalSeconds/);
    assert.throws(() => loadConfig({ env: { CUSTOS_DATABASE_URL: 'mysql://x' } }), /databaseUrl/);
  });

  test('a non-loopback address needs TLS or --insecure; TLS needs both files', () => {
    assert.throws(() => loadConfig({ env: {}, flags: { host: '0.0.0.0' } }), /refusing to listen on non-loopback address 0\.0\.0\.0 without TLS/);
    assert.equal(loadConfig({ env: {}, flags: { host: '0.0.0.0', insecure: true } }).host, '0.0.0.0');
    assert.throws(() => loadConfig({ env: {}, flags: { tlsCert: '/x.pem' } }), /tlsCert and tlsKey must be given together/);
  });
});

describe('serving', () => {
  test('health, readiness, metrics, OpenAPI and request ids', async () => {
    const s = await startTestServer();
    try {
      assert.equal((await s.api('GET', '/health')).json.status, 'ok');
      assert.equal((await s.api('GET', '/ready')).json.status, 'ready');
      await s.api('GET', '/v3/users', { token: s.operator.token });
      const metrics = (await s.api('GET', '/metrics')).text;
      assert.match(metrics, /custos_http_request_duration_seconds_bucket\{[^}]*route="\/v3\/users"/);
      assert.match(metrics, /custos_process_cpu_user_seconds_total/);
      const doc = (await s.api('GET', '/openapi.json')).json;
      assert.ok(doc.openapi || doc.swagger);
      for (const p of ['/v1/accounts', '/v1/audit/retention', '/v1/audit/public-keys']) assert.ok(doc.paths[p], `OpenAPI documents ${p}`);
      const given = await s.api('GET', '/health', { headers: { 'x-request-id': 'my-request-0001' } });
      assert.equal(given.headers.get('x-request-id'), 'my-request-0001');
      const bad = await s.api('GET', '/health', { headers: { 'x-request-id': 'bad id with spaces' } });
      assert.match(bad.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/, 'a malformed request id is replaced');
    } finally {
      await s.close();
    }
  });

  test('serves HTTPS from certificate and key files', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'custos-tls-'));
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    // Started directly: the test helper's own HTTPS calls would not trust this self-signed certificate.
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-tls-data-'));
    const s = await startCustos(loadConfig({ env: {}, flags: { dataDir, port: 0, tlsCert: cert, tlsKey: key, logLevel: 'silent' } }), { logStream: new PassThrough() });
    try {
      assert.match(s.url, /^https:/);
      const body = await new Promise<string>((resolve, reject) => {
        https.get(`${s.url}/health`, { ca: readFileSync(cert) }, (res) => {
          let t = '';
          res.on('data', (c: Buffer) => (t += c.toString()));
          res.on('end', () => resolve(t));
        }).on('error', reject);
      });
      assert.equal(JSON.parse(body).status, 'ok');
    } finally {
      await s.close();
      rmSync(dir, { recursive: true, force: true });
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test('SIGTERM finishes the requests in flight, then exits 0', async () => {
    const srv = await startServerProcess();
    await srv.createTenant('shutdownco');
    const u = new URL(srv.url);
    const body = JSON.stringify({ auth: { identity: { methods: ['password'], password: { user: { name: 'admin', password: 'Bench-Passw0rd!', domain: { name: 'shutdownco' } } } }, scope: { domain: { name: 'shutdownco' } } } });
    // Requests whose headers and half their body the server already has when it is told to stop.
    const started = Array.from({ length: 4 }, () => {
      const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/v3/auth/tokens', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } });
      const done = new Promise<number>((resolve, reject) => {
        req.on('response', (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
      });
      req.write(body.slice(0, 40));
      return { req, done };
    });
    await new Promise((r) => setTimeout(r, 200));
    const exited = new Promise<number | null>((r) => srv.child.once('exit', (code) => r(code)));
    srv.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 100));
    for (const s of started) s.req.end(body.slice(40));
    assert.deepEqual(await Promise.all(started.map((s) => s.done)), [201, 201, 201, 201]);
    assert.equal(await exited, 0);
    rmSync(srv.dataDir, { recursive: true, force: true });
  });
});

describe('CLI', () => {
  test('--help works on every level', () => {
    for (const args of [['--help'], ['serve', '--help'], ['admin', '--help'], ['audit', '--help'], ['audit', 'verify', '--help'], ['iam', 'users', '--help'], ['login', '--help']]) {
      const r = spawnSync(process.execPath, [CLI_MAIN, ...args], { encoding: 'utf8' });
      assert.equal(r.status, 0, `custos ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /Usage: custos/);
    }
  });

  test('a configuration error exits 2 with the reason', () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-cfg-'));
    const r = spawnSync(process.execPath, [CLI_MAIN, 'serve', '--host', '0.0.0.0', '--port', '0'], { encoding: 'utf8', env: { ...process.env, CUSTOS_DATA_DIR: dataDir } });
    rmSync(dataDir, { recursive: true, force: true });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /refusing to listen on non-loopback address/);
  });
});

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { loadConfig, type Config } from '../src/config.js';
import { startCustos, type Custos } from '../src/server/index.js';

export const DB = (process.env.CUSTOS_TEST_DB ?? 'sqlite') as 'sqlite' | 'postgres';
const PG_URL = process.env.CUSTOS_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface ApiResponse {
  status: number;
  headers: Headers;
  json: any;
  text: string;
}

export interface TestServer {
  url: string;
  custos: Custos;
  config: Config;
  dataDir: string;
  operator: { account: string; user: string; password: string; token: string };
  /** Everything the server logged so far, one JSON object per line. */
  logs(): string;
  api(method: string, p: string, opts?: { token?: string; body?: unknown; rawBody?: string | Buffer; headers?: Record<string, string> }): Promise<ApiResponse>;
  login(account: string, user: string, password: string, extra?: { project?: string; totp?: { id: string; code: string } }): Promise<ApiResponse>;
  token(account: string, user: string, password: string, project?: string): Promise<string>;
  createTenant(name?: string): Promise<Tenant>;
  /** Stops the server; the database and data directory stay until `destroy`. */
  stop(): Promise<void>;
  close(): Promise<void>;
}

export interface Tenant {
  name: string;
  accountId: string;
  adminUserId: string;
  adminPassword: string;
  token: string;
  projects: { id: string; name: string }[];
}

export const PASSWORD = 'Str0ng-Passw0rd!';

/** A fresh database (SQLite file or a new PostgreSQL database) for one test server. */
export async function freshDatabase(): Promise<{ url?: string; drop(): Promise<void> }> {
  if (DB === 'sqlite') return { drop: async () => undefined };
  const name = `custos_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(PG_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: PG_URL });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

/** Two servers on one fresh database and data directory (several nodes); both stopped and everything dropped after `fn`. */
export async function withTwoNodes(fn: (n1: TestServer, n2: TestServer) => Promise<void>): Promise<void> {
  const database = await freshDatabase();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-nodes-'));
  const n1 = await startTestServer({ database, dataDir });
  const n2 = await startTestServer({ database, dataDir, join: true });
  try {
    await fn(n1, n2);
  } finally {
    await n2.stop();
    await n1.stop();
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

export async function startTestServer(opts: { now?: () => number; config?: Partial<Config>; dataDir?: string; database?: { url?: string; drop(): Promise<void> }; join?: boolean } = {}): Promise<TestServer> {
  const dataDir = opts.dataDir ?? mkdtempSync(path.join(tmpdir(), 'custos-test-'));
  const database = opts.database ?? (await freshDatabase());
  const config = loadConfig({ env: {}, flags: { dataDir, port: 0, logLevel: 'info', ...(database.url ? { databaseUrl: database.url } : {}), ...opts.config } });
  const logLines: string[] = [];
  const logStream = new PassThrough();
  logStream.on('data', (c: Buffer) => logLines.push(c.toString('utf8')));
  const custos = await startCustos(config, { logStream, ...(opts.now ? { now: opts.now } : {}) });
  const url = custos.url;

  const api: TestServer['api'] = async (method, p, o = {}) => {
    const headers: Record<string, string> = { ...(o.headers ?? {}) };
    if (o.token) headers['x-auth-token'] = o.token;
    let body: string | Buffer | undefined;
    if (o.rawBody !== undefined) body = o.rawBody;
    else if (o.body !== undefined) {
      body = JSON.stringify(o.body);
      headers['content-type'] ??= 'application/json';
    }
    const res = await fetch(url + p, { method, headers, ...(body !== undefined ? { body: typeof body === 'string' ? body : new Uint8Array(body) } : {}) });
    const text = await res.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, json, text };
  };
  const login: TestServer['login'] = (account, user, password, extra = {}) => {
    const identity: any = { methods: ['password'], password: { user: { name: user, password, domain: { name: account } } } };
    if (extra.totp) {
      identity.methods.push('totp');
      identity.totp = { user: { id: extra.totp.id, passcode: extra.totp.code } };
    }
    return api('POST', '/v3/auth/tokens', { body: { auth: { identity, scope: extra.project ? { project: { name: extra.project } } : { domain: { name: account } } } } });
  };
  const token: TestServer['token'] = async (account, user, password, project) => {
    const r = await login(account, user, password, project ? { project } : {});
    if (r.status !== 201) throw new Error(`login of ${user}@${account} failed: ${r.status} ${r.text}`);
    return r.headers.get('x-subject-token')!;
  };
  if (!custos.bootstrap.password && !opts.join) throw new Error('test server expected a fresh bootstrap');
  const operator = { account: custos.bootstrap.accountName, user: custos.bootstrap.userName, password: custos.bootstrap.password ?? '', token: '' };
  // A second node joining an existing database has no bootstrap password to log in with.
  if (custos.bootstrap.password) operator.token = await token(operator.account, operator.user, operator.password);

  let tenants = 0;
  const createTenant: TestServer['createTenant'] = async (name) => {
    const n = name ?? `tenant${++tenants}${randomBytes(3).toString('hex')}`;
    const r = await api('POST', '/v1/accounts', { token: operator.token, body: { name: n, admin: { name: 'admin', password: PASSWORD } } });
    if (r.status !== 201) throw new Error(`create tenant failed: ${r.status} ${r.text}`);
    const t = await token(n, 'admin', PASSWORD);
    const projects = (await api('GET', '/v3/projects', { token: t })).json.projects as { id: string; name: string }[];
    return { name: n, accountId: r.json.account.id, adminUserId: r.json.admin_user_id, adminPassword: PASSWORD, token: t, projects };
  };
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await custos.close();
  };
  return {
    url, custos, config, dataDir, operator, api, login, token, createTenant, stop,
    logs: () => logLines.join(''),
    close: async () => {
      await stop();
      await database.drop();
      if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** How an AWS SDK call failed: its HTTP status and error code (a call that succeeds fails the test). */
export async function sdkFailure(p: Promise<unknown>): Promise<{ status: number; code: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as Error & { name: string; $metadata?: { httpStatusCode?: number } };
    if (err.$metadata?.httpStatusCode === undefined) throw e;
    return { status: err.$metadata.httpStatusCode, code: err.name };
  }
  throw new Error('the request succeeded');
}

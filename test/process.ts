// Starts `custos serve` as a separate process (for benchmarks, so the load generator does not share its
// event loop; for crash tests, so it can be killed) and prepares tenants with a token and an access key.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface BenchTenant { accountId: string; userId: string; token: string; ak: string; sk: string }
export interface ServerProcess {
  /** The S3/OBS listener. */
  obsUrl: string;
  url: string;
  child: ChildProcess;
  dataDir: string;
  /** Empty when the server joined an already bootstrapped store. */
  operatorToken: string;
  createTenant(name: string): Promise<BenchTenant>;
  /** SIGTERM and wait; removes the data directory unless it was given. */
  stop(): Promise<void>;
  /** SIGKILL, as a crash: no shutdown code runs. */
  kill(): Promise<void>;
}

const PASSWORD = 'Bench-Passw0rd!';
export const CLI_MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');

async function json(url: string, init: RequestInit & { token?: string } = {}): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(url, { ...init, headers: { 'content-type': 'application/json', ...(init.token ? { 'x-auth-token': init.token } : {}), ...(init.headers as Record<string, string>) } });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
}

export async function login(url: string, account: string, user: string, password: string): Promise<{ token: string; userId: string }> {
  const r = await json(`${url}/v3/auth/tokens`, { method: 'POST', body: JSON.stringify({ auth: { identity: { methods: ['password'], password: { user: { name: user, password, domain: { name: account } } } }, scope: { domain: { name: account } } } }) });
  if (r.status !== 201) throw new Error(`login failed: ${r.status} ${JSON.stringify(r.body)}`);
  return { token: r.headers.get('x-subject-token')!, userId: r.body.token.user.id };
}

export async function startServerProcess(
  opts: { databaseUrl?: string | undefined; dataDir?: string; extraArgs?: string[]; env?: Record<string, string>; entry?: string; nodeArgs?: string[] } = {},
): Promise<ServerProcess> {
  const dataDir = opts.dataDir ?? mkdtempSync(path.join(tmpdir(), 'custos-bench-'));
  const args = [...(opts.nodeArgs ?? []), opts.entry ?? CLI_MAIN, 'serve', '--data-dir', dataDir, '--port', '0', '--log-level', 'warn', ...(opts.databaseUrl ? ['--database-url', opts.databaseUrl] : []), ...(opts.extraArgs ?? [])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...opts.env } });
  let err = '';
  const ready = await new Promise<{ url: string; password: string | null; obsUrl: string }>((resolve, reject) => {
    child.stderr!.on('data', (c: Buffer) => {
      err += c.toString();
      const url = /listening on (\S+)/.exec(err)?.[1];
      const obsUrl = /S3\/OBS listener on (\S+)/.exec(err)?.[1] ?? '';
      const password = /password: (\S+)/.exec(err)?.[1];
      if (url && password) resolve({ url, password, obsUrl });
      else if (url && /Log in as an existing user/.test(err)) resolve({ url, password: null, obsUrl });
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}: ${err}`)));
  });
  const operator = ready.password ? await login(ready.url, 'custos', 'admin', ready.password) : { token: '' };
  const exited = new Promise((r) => child.once('exit', r));
  return {
    url: ready.url,
    obsUrl: ready.obsUrl,
    child,
    dataDir,
    operatorToken: operator.token,
    async createTenant(name) {
      const r = await json(`${ready.url}/v1/accounts`, { method: 'POST', token: operator.token, body: JSON.stringify({ name, admin: { name: 'admin', password: PASSWORD } }) });
      if (r.status !== 201) throw new Error(`create account failed: ${r.status} ${JSON.stringify(r.body)}`);
      const { token, userId } = await login(ready.url, name, 'admin', PASSWORD);
      const k = await json(`${ready.url}/v3.0/OS-CREDENTIAL/credentials`, { method: 'POST', token, body: JSON.stringify({ credential: { user_id: userId } }) });
      return { accountId: r.body.account.id, userId, token, ak: k.body.credential.access, sk: k.body.credential.secret };
    },
    async stop() {
      child.kill('SIGTERM');
      await exited;
      if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
    async kill() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { Command } from 'commander';
import { print, type OutputFormat } from './output.js';

/** Stored like `aws configure`: one file, readable by its owner only. */
interface Profile {
  endpoint: string;
  account: string;
  user: string;
  token?: string;
  expires_at?: string;
  domain_id?: string;
  user_id?: string;
}
const profilesFile = () => process.env.CUSTOS_PROFILES_FILE ?? path.join(homedir(), '.custos', 'profiles.json');

function loadProfiles(): Record<string, Profile> {
  try {
    return JSON.parse(readFileSync(profilesFile(), 'utf8')) as Record<string, Profile>;
  } catch {
    return {};
  }
}
function saveProfile(name: string, p: Profile): void {
  const all = loadProfiles();
  all[name] = p;
  mkdirSync(path.dirname(profilesFile()), { recursive: true, mode: 0o700 });
  writeFileSync(profilesFile(), JSON.stringify(all, null, 2) + '\n', { mode: 0o600 });
}
export function profile(name: string): Profile {
  const p = loadProfiles()[name];
  if (!p?.token) throw Object.assign(new Error(`profile ${name} is not logged in: run custos login --profile ${name}`), { exitCode: 2 });
  if (p.expires_at && Date.parse(p.expires_at) <= Date.now()) throw Object.assign(new Error(`the token of profile ${name} has expired: run custos login again`), { exitCode: 2 });
  return p;
}

async function readSecret(prompt: string): Promise<string> {
  if (process.env.CUSTOS_PASSWORD) return process.env.CUSTOS_PASSWORD;
  if (!process.stdin.isTTY) {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8').split('\n')[0] ?? '';
  }
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  // Hide what is typed: overwrite the echo with nothing.
  (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = (s: string) => {
    if (s.startsWith(prompt)) process.stderr.write(prompt);
  };
  const answer = await rl.question(prompt);
  rl.close();
  process.stderr.write('\n');
  return answer;
}

/** Calls the API with the profile's token; turns an error body into a readable failure. */
export async function call(p: Profile, method: string, url: string, body?: unknown): Promise<unknown> {
  const res = await fetch(new URL(url, p.endpoint), {
    method,
    headers: { 'x-auth-token': p.token ?? '', ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  const json = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  if (!res.ok) {
    // Huawei IAM/CTS {error_code, error_msg}; Huawei KMS {error: {error_code, error_msg}}; Custos {error: {code, message}}.
    const e = json as { error_msg?: string; error_code?: string; error?: { message?: string; code?: string; error_code?: string; error_msg?: string } };
    throw Object.assign(new Error(`${res.status} ${e.error_code ?? e.error?.code ?? e.error?.error_code ?? ''}: ${e.error_msg ?? e.error?.message ?? e.error?.error_msg ?? text}`), { exitCode: 1 });
  }
  return json;
}

/** Like `call`, for routes that answer text (CSV, Markdown). */
export async function callText(p: Profile, method: string, url: string): Promise<string> {
  const res = await fetch(new URL(url, p.endpoint), { method, headers: { 'x-auth-token': p.token ?? '' } });
  const text = await res.text();
  if (!res.ok) {
    let msg = text;
    try {
      const e = JSON.parse(text) as { error?: { code?: string; message?: string } };
      msg = `${e.error?.code ?? ''}: ${e.error?.message ?? text}`;
    } catch {
      // not JSON: the text says it
    }
    throw Object.assign(new Error(`${res.status} ${msg}`), { exitCode: 1 });
  }
  return text;
}

export function clientCommands(): Command[] {
  const common = (c: Command) => c.option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default').option('-o, --output <format>', 'json or table', 'table');

  const login = new Command('login')
    .description('log in with a password (and MFA code) and store the token in a profile')
    .requiredOption('--endpoint <url>', 'Custos main listener, e.g. http://127.0.0.1:8080')
    .requiredOption('--account <name>', 'account (domain) name')
    .requiredOption('--user <name>', 'user name')
    .option('--project <name>', 'scope the token to a project (e.g. a region name)')
    .option('--totp <code>', 'MFA code when MFA is on (otherwise asked for)')
    .option('--profile <name>', 'profile to store the token in', process.env.CUSTOS_PROFILE ?? 'default')
    .action(async (opts) => {
      const password = await readSecret('Password: ');
      const identity: Record<string, unknown> = { methods: ['password'], password: { user: { name: opts.user, password, domain: { name: opts.account } } } };
      if (opts.totp) Object.assign(identity, { methods: ['password', 'totp'], totp: { user: { id: opts.user, passcode: opts.totp } } });
      const scope = opts.project ? { project: { name: opts.project } } : { domain: { name: opts.account } };
      const res = await fetch(new URL('/v3/auth/tokens', opts.endpoint), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ auth: { identity, scope } }) });
      const json = (await res.json()) as { error_code?: string; error_msg?: string; token?: { expires_at: string; user: { id: string; domain: { id: string } } } };
      if (res.status === 401 && json.error_code === 'IAM.0007' && !opts.totp) throw Object.assign(new Error('MFA is on for this user: add --totp <code from your device>'), { exitCode: 2 });
      if (!res.ok || !json.token) throw Object.assign(new Error(`login failed: ${json.error_msg ?? res.status}`), { exitCode: 2 });
      const token = res.headers.get('x-subject-token') ?? '';
      saveProfile(opts.profile, { endpoint: opts.endpoint, account: opts.account, user: opts.user, token, expires_at: json.token.expires_at, domain_id: json.token.user.domain.id, user_id: json.token.user.id });
      process.stderr.write(`logged in as ${opts.user}@${opts.account}; token stored in profile ${opts.profile} until ${json.token.expires_at}\n`);
    });

  const iam = new Command('iam').description('IAM: users, groups, access keys, policies');
  const users = iam.command('users').description('IAM users');
  common(users.command('list').description('list users of the account')).action(async (opts) => {
    const p = profile(opts.profile);
    const r = (await call(p, 'GET', '/v3/users')) as { users: { id: string; name: string; enabled: boolean; email: string; mfa_enabled: boolean; is_locked: boolean }[] };
    print(opts.output as OutputFormat, r.users.map((u) => ({ name: u.name, id: u.id, enabled: u.enabled, mfa: u.mfa_enabled, locked: u.is_locked, email: u.email })));
  });
  common(users.command('create').description('create a user (password read from CUSTOS_PASSWORD, stdin or a prompt)'))
    .requiredOption('--name <name>', 'user name')
    .option('--email <email>', 'email')
    .option('--group <name>', 'add the user to this group')
    .action(async (opts) => {
      const p = profile(opts.profile);
      const password = await readSecret('New user password: ');
      const r = (await call(p, 'POST', '/v3.0/OS-USER/users', { user: { domain_id: p.domain_id, name: opts.name, password, ...(opts.email ? { email: opts.email } : {}) } })) as { user: { id: string; name: string } };
      if (opts.group) {
        const g = (await call(p, 'GET', `/v3/groups?name=${encodeURIComponent(opts.group)}`)) as { groups: { id: string }[] };
        if (!g.groups[0]) throw Object.assign(new Error(`no group ${opts.group}`), { exitCode: 3 });
        await call(p, 'PUT', `/v3/groups/${g.groups[0].id}/users/${r.user.id}`);
      }
      print(opts.output as OutputFormat, [{ name: r.user.name, id: r.user.id }]);
    });
  common(users.command('delete').description('delete a user')).requiredOption('--id <id>', 'user id').action(async (opts) => {
    await call(profile(opts.profile), 'DELETE', `/v3/users/${encodeURIComponent(opts.id)}`);
  });
  common(iam.command('groups').description('list groups')).action(async (opts) => {
    const r = (await call(profile(opts.profile), 'GET', '/v3/groups')) as { groups: { id: string; name: string; description: string }[] };
    print(opts.output as OutputFormat, r.groups.map((g) => ({ name: g.name, id: g.id, description: g.description })));
  });
  const keys = iam.command('keys').description('permanent access keys (AK/SK)');
  common(keys.command('create').description('create an access key; the secret is shown once')).option('--user-id <id>', 'user (default: yourself)').option('--description <text>', 'description', '').action(async (opts) => {
    const p = profile(opts.profile);
    const r = (await call(p, 'POST', '/v3.0/OS-CREDENTIAL/credentials', { credential: { user_id: opts.userId ?? p.user_id, description: opts.description } })) as { credential: { access: string; secret: string; status: string } };
    print(opts.output as OutputFormat, [{ access: r.credential.access, secret: r.credential.secret, status: r.credential.status }]);
  });
  common(keys.command('list').description('list access keys')).option('--user-id <id>', 'only this user').action(async (opts) => {
    const p = profile(opts.profile);
    const r = (await call(p, 'GET', `/v3.0/OS-CREDENTIAL/credentials${opts.userId ? `?user_id=${encodeURIComponent(opts.userId)}` : ''}`)) as { credentials: Record<string, unknown>[] };
    print(opts.output as OutputFormat, r.credentials);
  });

  const accounts = new Command('accounts').description('accounts (tenants); operator only');
  common(accounts.command('list').description('list accounts')).action(async (opts) => {
    const r = (await call(profile(opts.profile), 'GET', '/v1/accounts')) as { accounts: Record<string, unknown>[] };
    print(opts.output as OutputFormat, r.accounts);
  });
  common(accounts.command('create').description('create an account; the admin password is read from CUSTOS_PASSWORD, stdin or a prompt'))
    .requiredOption('--name <name>', 'account name')
    .option('--admin-name <name>', 'first administrator', 'admin')
    .action(async (opts) => {
      const password = await readSecret('Administrator password: ');
      const r = (await call(profile(opts.profile), 'POST', '/v1/accounts', { name: opts.name, admin: { name: opts.adminName, password } })) as { account: Record<string, unknown> };
      print(opts.output as OutputFormat, [r.account]);
    });
  return [login, iam, accounts];
}

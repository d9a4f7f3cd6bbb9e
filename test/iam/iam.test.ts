import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { totpCode } from '../../src/iam/mfa.js';
import { PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';

let clockOffset = 0;
let s: TestServer;
let a: Tenant;
let b: Tenant;

before(async () => {
  s = await startTestServer({ now: () => Date.now() + clockOffset });
  a = await s.createTenant();
  b = await s.createTenant();
});
after(async () => {
  await s?.close();
});

async function createUser(t: Tenant, name: string, password = PASSWORD) {
  const r = await s.api('POST', '/v3.0/OS-USER/users', { token: t.token, body: { user: { domain_id: t.accountId, name, password } } });
  assert.equal(r.status, 201, r.text);
  return r.json.user.id as string;
}

describe('login and tokens', () => {
  test('password login returns a token in X-Subject-Token that authorizes calls', async () => {
    const r = await s.login(a.name, 'admin', PASSWORD);
    assert.equal(r.status, 201);
    const token = r.headers.get('x-subject-token');
    assert.ok(token && token.length > 30);
    assert.equal(r.json.token.user.name, 'admin');
    assert.equal(r.json.token.domain.id, a.accountId);
    assert.ok(Date.parse(r.json.token.expires_at) > Date.now() + 23 * 3600_000);
    const users = await s.api('GET', '/v3/users', { token: token! });
    assert.equal(users.status, 200);
    assert.deepEqual(users.json.users.map((u: { name: string }) => u.name), ['admin']);
  });

  test('a project-scoped token names its project and region', async () => {
    const r = await s.login(a.name, 'admin', PASSWORD, { project: 'cn-north-4' });
    assert.equal(r.status, 201);
    assert.equal(r.json.token.project.name, 'cn-north-4');
    assert.equal((await s.login(a.name, 'admin', PASSWORD, { project: 'nowhere-1' })).status, 400);
  });

  test('wrong password, unknown user and unknown account all answer the same 401', async () => {
    const bodies = await Promise.all([
      s.login(a.name, 'admin', 'Wrong-Passw0rd!'),
      s.login(a.name, 'nobody', PASSWORD),
      s.login('no-such-account', 'admin', PASSWORD),
    ]);
    for (const r of bodies) {
      assert.equal(r.status, 401);
      assert.equal(r.json.error_code, 'IAM.0002');
      assert.equal(r.json.error_msg, 'the user name or password is wrong');
    }
  });

  test('GET validates a token, DELETE revokes it, and a revoked token is refused', async () => {
    const token = await s.token(a.name, 'admin', PASSWORD);
    const v = await s.api('GET', '/v3/auth/tokens', { token: a.token, headers: { 'x-subject-token': token } });
    assert.equal(v.status, 200);
    assert.equal(v.json.token.user.name, 'admin');
    const d = await s.api('DELETE', '/v3/auth/tokens', { token, headers: { 'x-subject-token': token } });
    assert.equal(d.status, 204);
    const after = await s.api('GET', '/v3/users', { token });
    assert.equal(after.status, 401);
    // Another tenant's token is not there for this tenant.
    const other = await s.api('GET', '/v3/auth/tokens', { token: b.token, headers: { 'x-subject-token': a.token } });
    assert.equal(other.status, 404);
  });

  test('an expired token is refused', async () => {
    const token = await s.token(a.name, 'admin', PASSWORD);
    assert.equal((await s.api('GET', '/v3/users', { token })).status, 200);
    clockOffset = 24 * 3600_000 + 1000;
    try {
      const r = await s.api('GET', '/v3/users', { token });
      assert.equal(r.status, 401);
      assert.match(r.json.error_msg, /expired/);
    } finally {
      clockOffset = 0;
    }
  });

  test('no credentials, or a made-up token, is 401', async () => {
    assert.equal((await s.api('GET', '/v3/users')).status, 401);
    assert.equal((await s.api('GET', '/v3/users', { token: 'CUS1made-up-token-value-xxxxxxxx' })).status, 401);
  });
});

describe('lockout', () => {
  test('five wrong passwords lock the user, even the right password is refused, and an unlock restores it', async () => {
    await createUser(a, 'locky');
    for (let i = 0; i < 5; i++) assert.equal((await s.login(a.name, 'locky', 'Wrong-Passw0rd!')).status, 401);
    const locked = await s.login(a.name, 'locky', PASSWORD);
    assert.equal(locked.status, 401);
    assert.equal(locked.json.error_code, 'IAM.0006');
    const list = await s.api('GET', '/v3/users?name=locky', { token: a.token });
    assert.equal(list.json.users[0].is_locked, true);
    const unlock = await s.api('POST', `/v1/iam/users/${list.json.users[0].id}/unlock`, { token: a.token });
    assert.equal(unlock.status, 204);
    assert.equal((await s.login(a.name, 'locky', PASSWORD)).status, 201);
  });

  test('the lock expires after the lockout duration', async () => {
    await createUser(a, 'locky2');
    for (let i = 0; i < 5; i++) await s.login(a.name, 'locky2', 'Wrong-Passw0rd!');
    assert.equal((await s.login(a.name, 'locky2', PASSWORD)).json.error_code, 'IAM.0006');
    clockOffset = 16 * 60_000;
    try {
      assert.equal((await s.login(a.name, 'locky2', PASSWORD)).status, 201);
    } finally {
      clockOffset = 0;
    }
  });
});

describe('passwords', () => {
  test('the password policy rejects weak passwords with the rule broken', async () => {
    const r = await s.api('POST', '/v3.0/OS-USER/users', { token: a.token, body: { user: { domain_id: a.accountId, name: 'weak', password: 'short' } } });
    assert.equal(r.status, 400);
    assert.equal(r.json.error_code, 'IAM.0008');
    assert.match(r.json.error_msg, /at least 8 characters/);
  });

  test('a user changes its own password; reusing a recent one is refused; old sessions end', async () => {
    const id = await createUser(a, 'changer');
    const t = await s.token(a.name, 'changer', PASSWORD);
    const reuse = await s.api('PUT', `/v3/users/${id}/password`, { token: t, body: { user: { password: PASSWORD, original_password: PASSWORD } } });
    assert.equal(reuse.status, 400);
    assert.match(reuse.json.error_msg, /differ from the last/);
    const ok = await s.api('PUT', `/v3/users/${id}/password`, { token: t, body: { user: { password: 'N3w-Passw0rd!x', original_password: PASSWORD } } });
    assert.equal(ok.status, 204);
    assert.equal((await s.api('GET', `/v3/users/${id}`, { token: t })).status, 401);
    assert.equal((await s.login(a.name, 'changer', 'N3w-Passw0rd!x')).status, 201);
  });
});

describe('MFA', () => {
  test('bind a TOTP device, then login needs a passcode, and a passcode works only once', async () => {
    const id = await createUser(a, 'mfauser');
    const t = await s.token(a.name, 'mfauser', PASSWORD);
    const dev = await s.api('POST', '/v3.0/OS-MFA/virtual-mfa-devices', { token: t, body: { virtual_mfa_device: { name: 'phone', user_id: id } } });
    assert.equal(dev.status, 201, dev.text);
    const seed: string = dev.json.virtual_mfa_device.base32_string_seed;
    const serial: string = dev.json.virtual_mfa_device.serial_number;
    assert.match(dev.json.virtual_mfa_device.otpauth_uri, /^otpauth:\/\/totp\//);
    const bad = await s.api('PUT', '/v3.0/OS-MFA/mfa-devices/bind', { token: t, body: { binding_device: { user_id: id, serial_number: serial, authentication_code_first: '000000', authentication_code_second: '000001' } } });
    assert.equal(bad.status, 400);
    const now = Date.now();
    const bind = await s.api('PUT', '/v3.0/OS-MFA/mfa-devices/bind', {
      token: t,
      body: { binding_device: { user_id: id, serial_number: serial, authentication_code_first: totpCode(seed, now - 30_000), authentication_code_second: totpCode(seed, now) } },
    });
    assert.equal(bind.status, 204, bind.text);

    const noCode = await s.login(a.name, 'mfauser', PASSWORD);
    assert.equal(noCode.status, 401);
    assert.equal(noCode.json.error_code, 'IAM.0007');
    // The binding consumed the current step; the next one is good once.
    const code = totpCode(seed, now + 30_000);
    const wrong = await s.login(a.name, 'mfauser', PASSWORD, { totp: { id, code: code === '123456' ? '654321' : '123456' } });
    assert.equal(wrong.status, 401);
    const good = await s.login(a.name, 'mfauser', PASSWORD, { totp: { id, code } });
    assert.equal(good.status, 201, good.text);
    assert.deepEqual(good.json.token.methods, ['password', 'totp']);
    const replay = await s.login(a.name, 'mfauser', PASSWORD, { totp: { id, code } });
    assert.equal(replay.status, 401);
    assert.match(replay.json.error_msg, /already used/);
  });

  test('a policy can require MFA for an action', async () => {
    const id = await createUser(a, 'mfaneeded');
    const pol = await s.api('POST', '/v3.0/OS-ROLE/roles', {
      token: a.token,
      body: { role: { display_name: 'users-with-mfa', type: 'AX', policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:listUsers'], Condition: { Bool: { 'g:MFAPresent': ['true'] } } }] } } },
    });
    assert.equal(pol.status, 201, pol.text);
    assert.equal((await s.api('PUT', `/v3/domains/${a.accountId}/users/${id}/roles/${pol.json.role.id}`, { token: a.token })).status, 204);
    const t = await s.token(a.name, 'mfaneeded', PASSWORD);
    const r = await s.api('GET', '/v3/users', { token: t });
    assert.equal(r.status, 403);
    // With MFA on, the same user gets through.
    const dev = await s.api('POST', '/v3.0/OS-MFA/virtual-mfa-devices', { token: t, body: { virtual_mfa_device: { name: 'p', user_id: id } } });
    const seed = dev.json.virtual_mfa_device.base32_string_seed;
    const now = Date.now();
    await s.api('PUT', '/v3.0/OS-MFA/mfa-devices/bind', { token: t, body: { binding_device: { user_id: id, serial_number: dev.json.virtual_mfa_device.serial_number, authentication_code_first: totpCode(seed, now - 30_000), authentication_code_second: totpCode(seed, now) } } });
    const withMfa = await s.login(a.name, 'mfaneeded', PASSWORD, { totp: { id, code: totpCode(seed, now + 30_000) } });
    assert.equal(withMfa.status, 201, withMfa.text);
    assert.equal((await s.api('GET', '/v3/users', { token: withMfa.headers.get('x-subject-token')! })).status, 200);
  });
});

describe('policies', () => {
  test('default deny, allow through a group, explicit deny wins, wildcard actions', async () => {
    const id = await createUser(a, 'polly');
    const t = await s.token(a.name, 'polly', PASSWORD);
    assert.equal((await s.api('GET', '/v3/users', { token: t })).status, 403);
    assert.equal((await s.api('GET', '/v3/groups', { token: t })).status, 403);
    const group = await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'readers', domain_id: a.accountId } } });
    assert.equal(group.status, 201);
    const gid = group.json.group.id;
    assert.equal((await s.api('PUT', `/v3/groups/${gid}/users/${id}`, { token: a.token })).status, 204);
    const allow = await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'iam-list', policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:*:list*'] }] } } } });
    assert.equal((await s.api('PUT', `/v3/domains/${a.accountId}/groups/${gid}/roles/${allow.json.role.id}`, { token: a.token })).status, 204);
    assert.equal((await s.api('GET', '/v3/users', { token: t })).status, 200);
    assert.equal((await s.api('GET', '/v3/groups', { token: t })).status, 200);
    // Reading is allowed, writing is not.
    const create = await s.api('POST', '/v3/groups', { token: t, body: { group: { name: 'nope' } } });
    assert.equal(create.status, 403);
    const deny = await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'no-groups', policy: { Version: '1.1', Statement: [{ Effect: 'Deny', Action: ['iam:groups:*'] }] } } } });
    await s.api('PUT', `/v3/domains/${a.accountId}/users/${id}/roles/${deny.json.role.id}`, { token: a.token });
    const denied = await s.api('GET', '/v3/groups', { token: t });
    assert.equal(denied.status, 403);
    assert.match(denied.json.error_msg, /explicitly denied/);
    assert.equal((await s.api('GET', '/v3/users', { token: t })).status, 200);
  });

  test('a source-IP condition allows loopback and refuses another network', async () => {
    const id = await createUser(a, 'ipuser');
    const mk = async (name: string, cidr: string) =>
      (await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: name, policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:listUsers'], Condition: { IpAddress: { 'g:SourceIp': [cidr] } } }] } } } })).json.role.id;
    const elsewhere = await mk('from-elsewhere', '203.0.113.0/24');
    await s.api('PUT', `/v3/domains/${a.accountId}/users/${id}/roles/${elsewhere}`, { token: a.token });
    const t = await s.token(a.name, 'ipuser', PASSWORD);
    assert.equal((await s.api('GET', '/v3/users', { token: t })).status, 403);
    const local = await mk('from-loopback', '127.0.0.0/8');
    await s.api('PUT', `/v3/domains/${a.accountId}/users/${id}/roles/${local}`, { token: a.token });
    assert.equal((await s.api('GET', '/v3/users', { token: t })).status, 200);
  });

  test('an invalid policy document is a clear 400', async () => {
    const r = await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'bad', policy: { Version: '1.1', Statement: [{ Effect: 'Maybe', Action: ['iam:users:listUsers'] }] } } } });
    assert.equal(r.status, 400);
    assert.match(r.json.error_msg, /invalid policy/);
  });
});

describe('agencies', () => {
  test('account A delegates to B; B assumes, is limited to the delegated rights; A revokes', async () => {
    const ag = await s.api('POST', '/v3.0/OS-AGENCY/agencies', { token: a.token, body: { agency: { name: 'ops-from-b', domain_id: a.accountId, trust_domain_name: b.name, duration: 'FOREVER' } } });
    assert.equal(ag.status, 201, ag.text);
    const agencyId = ag.json.agency.id;
    const ro = await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'list-users', policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:listUsers'] }] } } } });
    assert.equal((await s.api('PUT', `/v3.0/OS-AGENCY/domains/${a.accountId}/agencies/${agencyId}/roles/${ro.json.role.id}`, { token: a.token })).status, 204);

    // A third account cannot assume it; nor can B assume an agency that does not exist.
    const c = await s.createTenant();
    const assume = (token: string, agency = 'ops-from-b') =>
      s.api('POST', '/v3/auth/tokens', { token, body: { auth: { identity: { methods: ['assume_role'], assume_role: { domain_name: a.name, agency_name: agency, duration_seconds: 3600 } } } } });
    assert.equal((await assume(c.token)).status, 404);
    assert.equal((await assume(b.token, 'no-such')).status, 404);

    const r = await assume(b.token);
    assert.equal(r.status, 201, r.text);
    const at = r.headers.get('x-subject-token')!;
    assert.equal(r.json.token.agency.name, 'ops-from-b');
    const users = await s.api('GET', '/v3/users', { token: at });
    assert.equal(users.status, 200);
    assert.ok(users.json.users.some((u: { name: string }) => u.name === 'admin'));
    assert.ok(users.json.users.every((u: { domain_id: string }) => u.domain_id === a.accountId));
    assert.equal((await s.api('POST', '/v3/groups', { token: at, body: { group: { name: 'x' } } })).status, 403);

    // Temporary AK/SK through the agency also exist, and die with it.
    const tmp = await s.api('POST', '/v3.0/OS-CREDENTIAL/securitytokens', { token: b.token, body: { auth: { identity: { methods: ['assume_role'], assume_role: { domain_name: a.name, agency_name: 'ops-from-b' } } } } });
    assert.equal(tmp.status, 201, tmp.text);
    assert.ok(tmp.json.credential.securitytoken);

    assert.equal((await s.api('DELETE', `/v3.0/OS-AGENCY/agencies/${agencyId}`, { token: a.token })).status, 204);
    assert.equal((await s.api('GET', '/v3/users', { token: at })).status, 401);
  });
});

describe('tenant isolation', () => {
  test("every IAM route answers 404 for another account's ids", async () => {
    const uid = await createUser(a, 'target');
    const group = (await s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: 'target-group' } } })).json.group.id;
    const role = (await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, body: { role: { display_name: 'target-role', policy: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['iam:users:getUser'] }] } } } })).json.role.id;
    const agency = (await s.api('POST', '/v3.0/OS-AGENCY/agencies', { token: a.token, body: { agency: { name: 'target-agency', domain_id: a.accountId, trust_domain_name: b.name } } })).json.agency.id;
    const key = (await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: a.token, body: { credential: { user_id: uid } } })).json.credential.access;
    const project = a.projects[0]!.id;
    const attempts: [string, string, unknown?][] = [
      ['GET', `/v3/users/${uid}`],
      ['GET', `/v3.0/OS-USER/users/${uid}`],
      ['PUT', `/v3.0/OS-USER/users/${uid}`, { user: { enabled: false } }],
      ['DELETE', `/v3/users/${uid}`],
      ['PUT', `/v3/users/${uid}/password`, { user: { password: 'Anoth3r-Passw0rd!', original_password: PASSWORD } }],
      ['GET', `/v3/users/${uid}/groups`],
      ['POST', `/v1/iam/users/${uid}/unlock`],
      ['GET', `/v3/groups/${group}`],
      ['DELETE', `/v3/groups/${group}`],
      ['GET', `/v3/groups/${group}/users`],
      ['PUT', `/v3/groups/${group}/users/${uid}`],
      ['DELETE', `/v3/groups/${group}/users/${uid}`],
      ['GET', `/v3/projects/${project}`],
      ['GET', `/v3/roles/${role}`],
      ['PATCH', `/v3.0/OS-ROLE/roles/${role}`, { role: { description: 'x' } }],
      ['DELETE', `/v3.0/OS-ROLE/roles/${role}`],
      ['PUT', `/v3/domains/${a.accountId}/groups/${group}/roles/${role}`],
      ['PUT', `/v3/domains/${b.accountId}/groups/${group}/roles/${role}`],
      ['PUT', `/v3/projects/${project}/groups/${group}/roles/${role}`],
      ['PUT', `/v3/domains/${a.accountId}/users/${uid}/roles/${role}`],
      ['GET', `/v3/domains/${a.accountId}/groups/${group}/roles`],
      ['GET', `/v3.0/OS-AGENCY/agencies/${agency}`],
      ['DELETE', `/v3.0/OS-AGENCY/agencies/${agency}`],
      ['PUT', `/v3.0/OS-AGENCY/domains/${a.accountId}/agencies/${agency}/roles/${role}`],
      ['GET', `/v3.0/OS-CREDENTIAL/credentials/${key}`],
      ['PUT', `/v3.0/OS-CREDENTIAL/credentials/${key}`, { credential: { status: 'inactive' } }],
      ['DELETE', `/v3.0/OS-CREDENTIAL/credentials/${key}`],
      ['GET', `/v3.0/OS-CREDENTIAL/credentials?user_id=${uid}`],
      ['POST', '/v3.0/OS-CREDENTIAL/credentials', { credential: { user_id: uid } }],
      ['POST', '/v3.0/OS-MFA/virtual-mfa-devices', { virtual_mfa_device: { name: 'x', user_id: uid } }],
      ['GET', `/v3.0/OS-MFA/users/${uid}/virtual-mfa-device`],
      ['POST', '/v3.0/OS-USER/users', { user: { domain_id: a.accountId, name: 'intruder', password: PASSWORD } }],
      ['GET', `/v3/users?domain_id=${a.accountId}`],
      ['GET', `/v3.0/OS-SECURITYPOLICY/domains/${a.accountId}/login-policy`],
      ['PUT', `/v3.0/OS-SECURITYPOLICY/domains/${a.accountId}/password-policy`, { password_policy: { minimum_password_length: 6 } }],
    ];
    for (const [method, url, body] of attempts) {
      const r = await s.api(method, url, { token: b.token, ...(body !== undefined ? { body } : {}) });
      assert.equal(r.status, 404, `${method} ${url} answered ${r.status} ${r.text}`);
    }
    // And nothing changed in A.
    const still = await s.api('GET', `/v3/users/${uid}`, { token: a.token });
    assert.equal(still.status, 200);
    assert.equal(still.json.user.enabled, true);
    assert.equal((await s.api('GET', `/v3.0/OS-CREDENTIAL/credentials/${key}`, { token: a.token })).json.credential.status, 'active');
    // Listing shows only one's own.
    const bUsers = await s.api('GET', '/v3/users', { token: b.token });
    assert.ok(bUsers.json.users.every((u: { domain_id: string }) => u.domain_id === b.accountId));
  });

  test('a tenant administrator cannot create accounts; the operator can', async () => {
    const r = await s.api('POST', '/v1/accounts', { token: a.token, body: { name: 'sneaky', admin: { name: 'admin', password: PASSWORD } } });
    assert.equal(r.status, 403);
    assert.equal((await s.api('GET', '/v1/accounts', { token: a.token })).status, 403);
  });
});

describe('bad input', () => {
  test('malformed JSON, wrong types, unknown fields, huge bodies and wrong content types are clear 4xx', async () => {
    const cases: [string, { rawBody?: string; body?: unknown; headers?: Record<string, string> }, number][] = [
      ['malformed', { rawBody: '{"auth": ', headers: { 'content-type': 'application/json' } }, 400],
      ['wrong type', { body: { auth: { identity: { methods: 'password' } } } }, 400],
      ['unknown field', { body: { auth: { identity: { methods: ['password'], password: { user: { name: 'a', password: 'b', domain: { name: 'c' } } } }, extra: 1 } } }, 400],
      ['huge', { rawBody: JSON.stringify({ x: 'a'.repeat(2 * 1024 * 1024) }), headers: { 'content-type': 'application/json' } }, 413],
      ['content type', { rawBody: 'hello', headers: { 'content-type': 'text/plain' } }, 400],
      ['empty', { rawBody: '', headers: { 'content-type': 'application/json' } }, 400],
    ];
    for (const [name, opts, status] of cases) {
      const r = await s.api('POST', '/v3/auth/tokens', opts);
      assert.equal(r.status, status, `${name}: ${r.status} ${r.text}`);
      assert.equal(typeof r.json.error_code, 'string', name);
      assert.equal(typeof r.json.error_msg, 'string', name);
    }
    const badId = await s.api('GET', '/v3/users/..%2f..%2fetc', { token: a.token });
    assert.ok(badId.status === 400 || badId.status === 404, String(badId.status));
    const custos = await s.api('POST', '/v1/accounts', { token: s.operator.token, rawBody: '{', headers: { 'content-type': 'application/json' } });
    assert.equal(custos.status, 400);
    assert.equal(typeof custos.json.error.code, 'string');
    // A policy document nested 200,000 deep: JSON.parse takes it, storing it again would overflow the stack.
    const deep = `{"role":{"display_name":"deep","type":"AX","policy":${'['.repeat(200_000)}${']'.repeat(200_000)}}}`;
    const nested = await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, rawBody: deep, headers: { 'content-type': 'application/json' } });
    assert.equal(nested.status, 400, nested.text);
    assert.match(nested.json.error_msg, /nests deeper than 64/);
    // Sixty levels are fine (the role is then refused for what it says, not for its shape).
    const shallow = await s.api('POST', '/v3.0/OS-ROLE/roles', { token: a.token, rawBody: `{"role":{"display_name":"deep","type":"AX","policy":${'['.repeat(60)}${']'.repeat(60)}}}`, headers: { 'content-type': 'application/json' } });
    assert.equal(shallow.status, 400, shallow.text);
    assert.doesNotMatch(shallow.text, /nests deeper/);
  });

  test('the server is still healthy and the logs hold no password or token', async () => {
    assert.equal((await s.api('GET', '/health')).status, 200);
    const logs = s.logs();
    assert.ok(logs.length > 0);
    assert.ok(!logs.includes(PASSWORD), 'a password reached the logs');
    assert.ok(!logs.includes(s.operator.password), 'the operator password reached the logs');
    assert.ok(!logs.includes(a.token), 'a token reached the logs');
  });
});

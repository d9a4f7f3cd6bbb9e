import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { RouteDef, RouteMeta } from '../../server/route.js';
import { principalOf } from '../../server/route.js';
import { IamCodes, IamError } from '../errors.js';
import { mfaSerial, type IamService, type IssuedToken, type Principal, type ResourceRef } from '../iam.js';
import type { AccessKeyRow, ProjectRow, UserRow } from '../store.js';

const S = { additionalProperties: false } as const;
const Name = Type.String({ minLength: 1, maxLength: 64, pattern: '^[^\\s<>"\'&]+( [^\\s<>"\'&]+)*$' });
const Id = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$' });
const Desc = Type.String({ maxLength: 255 });
const Password = Type.String({ minLength: 1, maxLength: 128 });
const Params = (...names: string[]) => Type.Object(Object.fromEntries(names.map((n) => [n, Id])), S);

type Req = FastifyRequest;
const body = <T>(req: Req) => req.body as T;
const params = (req: Req) => req.params as Record<string, string>;
const query = (req: Req) => req.query as Record<string, string | undefined>;
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

// ---------------------------------------------------------------- response shapes (Huawei IAM)

function userView(u: UserRow) {
  return {
    id: u.id, name: u.name, domain_id: u.account_id, enabled: u.enabled === 1, email: u.email ?? '', description: u.description,
    pwd_status: u.password_hash !== null, create_time: iso(u.created_at), is_locked: u.locked_until !== null && u.locked_until > Date.now(),
    mfa_enabled: u.mfa_secret !== null, links: { self: `/v3/users/${u.id}` },
  };
}
function projectView(p: ProjectRow) {
  return { id: p.id, name: p.name, domain_id: p.account_id, parent_id: p.account_id, region: p.region, description: p.description, enabled: true, is_domain: false, links: { self: `/v3/projects/${p.id}` } };
}
function credentialView(k: AccessKeyRow) {
  return { access: k.access_key, user_id: k.user_id, status: k.status, description: k.description, create_time: iso(k.created_at), last_use_time: iso(k.last_used_at) };
}
function tokenView(t: { principal: Principal; methods: string[]; issuedAt: number; expiresAt: number }, roles: { id: string; name: string }[]) {
  const p = t.principal;
  return {
    token: {
      methods: t.methods,
      issued_at: new Date(t.issuedAt).toISOString(),
      expires_at: new Date(t.expiresAt).toISOString(),
      user: { id: p.userId, name: p.userName, domain: p.agency ? { id: p.agency.sourceAccountId, name: p.agency.sourceAccountName } : { id: p.accountId, name: p.accountName } },
      ...(p.projectId ? { project: { id: p.projectId, name: p.projectName, domain: { id: p.accountId, name: p.accountName } } } : { domain: { id: p.accountId, name: p.accountName } }),
      ...(p.agency ? { assumed_by: { user: { id: p.userId, name: p.userName, domain: { id: p.agency.sourceAccountId, name: p.agency.sourceAccountName } } }, agency: { id: p.agency.id, name: p.agency.name } } : {}),
      roles,
      catalog: [],
    },
  };
}

// ---------------------------------------------------------------- request schemas

const Scope = Type.Optional(
  Type.Object(
    {
      project: Type.Optional(Type.Object({ id: Type.Optional(Id), name: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })), domain: Type.Optional(Type.Object({ id: Type.Optional(Id), name: Type.Optional(Name) }, S)) }, S)),
      domain: Type.Optional(Type.Object({ id: Type.Optional(Id), name: Type.Optional(Name) }, S)),
    },
    S,
  ),
);
const TokenBody = Type.Object(
  {
    auth: Type.Object(
      {
        identity: Type.Object(
          {
            methods: Type.Array(Type.Union([Type.Literal('password'), Type.Literal('token'), Type.Literal('totp'), Type.Literal('assume_role')]), { minItems: 1, maxItems: 2, uniqueItems: true }),
            password: Type.Optional(Type.Object({ user: Type.Object({ name: Name, password: Password, domain: Type.Object({ name: Name }, S) }, S) }, S)),
            token: Type.Optional(Type.Object({ id: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })) }, S)),
            totp: Type.Optional(Type.Object({ user: Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }), passcode: Type.String({ minLength: 1, maxLength: 16 }) }, S) }, S)),
            assume_role: Type.Optional(
              Type.Object(
                { domain_name: Name, agency_name: Name, duration_seconds: Type.Optional(Type.Integer({ minimum: 900, maximum: 86400 })) },
                S,
              ),
            ),
          },
          S,
        ),
        scope: Scope,
      },
      S,
    ),
  },
  S,
);
type TokenBodyT = {
  auth: {
    identity: {
      methods: string[];
      password?: { user: { name: string; password: string; domain: { name: string } } };
      token?: { id?: string };
      totp?: { user: { id: string; passcode: string } };
      assume_role?: { domain_name: string; agency_name: string; duration_seconds?: number };
    };
    scope?: { project?: { id?: string; name?: string }; domain?: { id?: string; name?: string } };
  };
};

// ---------------------------------------------------------------- routes

export function huaweiIamRoutes(iam: IamService): RouteDef[] {
  const meta = (action: string | null, resourceType: string, resource?: RouteMeta['resource'], extra: Partial<RouteMeta> = {}): RouteMeta => ({
    dialect: 'huawei', service: 'IAM', action, resourceType, ...(resource ? { resource } : {}), ...extra,
  });
  const account = (p: Principal): ResourceRef => ({ service: 'iam', type: 'domain', id: p.accountId, name: p.accountName, accountId: p.accountId });
  /** `domain_id` given in a body or query must be the caller's own account; otherwise nothing is there. */
  const inAccount = (domainId: string | undefined) => async (_req: Req, p: Principal) => (domainId === undefined || domainId === p.accountId ? account(p) : null);
  const userRes = (param = 'user_id') => async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const u = await iam.getUserForRead(p.accountId, params(req)[param] ?? '');
    return u ? { service: 'iam', type: 'user', id: u.id, name: u.name, accountId: u.account_id, self: u.id === p.userId } : null;
  };
  const userFromBody = (get: (b: any) => string | undefined) => async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const id = get(req.body);
    const u = id ? await iam.getUser(p.accountId, id) : undefined;
    return u ? { service: 'iam', type: 'user', id: u.id, name: u.name, accountId: u.account_id, self: u.id === p.userId } : null;
  };
  const groupRes = async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const g = await iam.getGroup(p.accountId, params(req).group_id ?? '');
    return g ? { service: 'iam', type: 'group', id: g.id, name: g.name, accountId: g.account_id } : null;
  };
  const credRes = async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const k = await iam.getAccessKey(p.accountId, params(req).access_key ?? '');
    return k ? { service: 'iam', type: 'user', id: k.user_id, name: k.access_key, accountId: k.account_id, self: k.user_id === p.userId } : null;
  };
  const roleRes = (own: boolean) => async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const r = await iam.getPolicy(p.accountId, params(req).role_id ?? '');
    if (!r || (own && r.account_id === null)) return null;
    return { service: 'iam', type: 'role', id: r.id, name: r.name, accountId: p.accountId };
  };
  const agencyRes = async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const a = await iam.getAgency(p.accountId, params(req).agency_id ?? '');
    return a ? { service: 'iam', type: 'agency', id: a.id, name: a.name, accountId: a.account_id } : null;
  };
  const projectRes = async (req: Req, p: Principal): Promise<ResourceRef | null> => {
    const pr = await iam.getProject(p.accountId, params(req).project_id ?? '');
    return pr ? { service: 'iam', type: 'project', id: pr.id, name: pr.name, accountId: pr.account_id, projectId: pr.id, region: pr.region } : null;
  };
  const roleViews = async (p: Principal) => {
    if (p.agency) return [];
    const groups = await iam.listUserGroups(p.userId);
    return groups.map((g) => ({ id: g.id, name: g.name }));
  };
  const sendToken = async (req: Req, reply: FastifyReply, t: IssuedToken) => {
    req.custos.principal = t.principal; // for the trace of this login
    reply.header('x-subject-token', t.token).code(201);
    return tokenView(t, await roleViews(t.principal));
  };

  /** Grant/revoke a role on a principal, account-wide or in one project. */
  const grantRoutes = (kind: 'group' | 'user' | 'agency', scope: 'domains' | 'projects'): RouteDef[] => {
    const prefix = kind === 'agency' ? '/v3.0/OS-AGENCY' : '/v3';
    const principalParam = `${kind}_id`;
    const scopeParam = scope === 'domains' ? 'domain_id' : 'project_id';
    const url = `${prefix}/${scope}/:${scopeParam}/${kind === 'agency' ? 'agencies' : `${kind}s`}/:${principalParam}/roles`;
    const resolve = async (req: Req, p: Principal): Promise<ResourceRef | null> => {
      const ps = params(req);
      if (scope === 'domains' && ps.domain_id !== p.accountId) return null;
      if (scope === 'projects' && !(await iam.getProject(p.accountId, ps.project_id ?? ''))) return null;
      const pid = ps[principalParam] ?? '';
      const target = kind === 'group' ? await iam.getGroup(p.accountId, pid) : kind === 'user' ? await iam.getUser(p.accountId, pid) : await iam.getAgency(p.accountId, pid);
      if (!target) return null;
      if (ps.role_id !== undefined && !(await iam.getPolicy(p.accountId, ps.role_id))) return null;
      return { service: 'iam', type: kind, id: target.id, name: target.name, accountId: p.accountId };
    };
    const projectOf = (req: Req) => (scope === 'projects' ? params(req).project_id ?? null : null);
    const action = (verb: string) => `iam:permissions:${verb}${kind === 'group' ? 'Group' : kind === 'user' ? 'User' : 'Agency'}`;
    return [
      {
        method: 'PUT', url: `${url}/:role_id`, meta: meta(action('grantRoleTo'), kind, resolve), schema: { params: Params(scopeParam, principalParam, 'role_id') },
        handler: async (req, reply) => {
          await iam.attachPolicy(principalOf(req).accountId, params(req).role_id!, kind, params(req)[principalParam]!, projectOf(req));
          return reply.code(204).send();
        },
      },
      {
        method: 'DELETE', url: `${url}/:role_id`, meta: meta(action('revokeRoleFrom'), kind, resolve), schema: { params: Params(scopeParam, principalParam, 'role_id') },
        handler: async (req, reply) => {
          const removed = await iam.detachPolicy(principalOf(req).accountId, params(req).role_id!, kind, params(req)[principalParam]!, projectOf(req));
          if (!removed) throw IamError.notFound('role assignment');
          return reply.code(204).send();
        },
      },
      {
        method: 'GET', url, meta: meta(action('listRolesFor'), kind, resolve), schema: { params: Params(scopeParam, principalParam) },
        handler: async (req) => ({ roles: (await iam.listAttachedPolicies(principalOf(req).accountId, kind, params(req)[principalParam]!, projectOf(req))).map(roleView) }),
      },
    ];
  };

  const routes: RouteDef[] = [
    // ---------------------------------------------------------- tokens
    {
      method: 'POST', url: '/v3/auth/tokens', meta: meta(null, 'token'), schema: { body: TokenBody },
      handler: async (req, reply) => {
        const b = body<TokenBodyT>(req);
        const id = b.auth.identity;
        const m = id.methods;
        const scope = { projectId: b.auth.scope?.project?.id, projectName: b.auth.scope?.project?.name, domain: b.auth.scope?.domain !== undefined };
        if (m.includes('password')) {
          if (!id.password || m.some((x) => x !== 'password' && x !== 'totp')) throw IamError.badRequest('the password method needs identity.password and may only be combined with totp');
          if (m.includes('totp') && !id.totp) throw IamError.badRequest('the totp method needs identity.totp');
          const u = id.password.user;
          // The trace keeps only an HMAC of the name tried, so failed logins for one user can be found.
          req.custos.traced.correlate = { login_user: `${u.domain.name}/${u.name}` };
          let t;
          try {
            t = await iam.login({ accountName: u.domain.name, userName: u.name, password: u.password, ...(id.totp ? { totp: { userId: id.totp.user.id, passcode: id.totp.user.passcode } } : {}), scope }, m);
          } catch (e) {
            // A failed login belongs in the trail of the account it was tried against, when that exists.
            const acc = await iam.getAccountByName(u.domain.name).catch(() => undefined);
            if (acc) req.custos.traced.accountId = acc.id;
            throw e;
          }
          return sendToken(req, reply, t);
        }
        const callerToken = id.token?.id ?? (typeof req.headers['x-auth-token'] === 'string' ? req.headers['x-auth-token'] : undefined);
        if (!callerToken) throw IamError.unauthenticated('the token and assume_role methods need a token (identity.token.id or X-Auth-Token)');
        const caller = await iam.authenticateToken(callerToken);
        if (m.length === 1 && m[0] === 'token') return sendToken(req, reply, await iam.rescopeToken(caller, scope));
        if (m.length === 1 && m[0] === 'assume_role' && id.assume_role) {
          req.custos.principal = caller;
          const decision = await iam.authorize(caller, 'iam:agencies:assume', null, { sourceIp: req.ip });
          if (decision.effect !== 'allow') throw IamError.forbidden('not authorized to perform iam:agencies:assume');
          const a = id.assume_role;
          return sendToken(req, reply, await iam.assumeAgency(caller, a.domain_name, a.agency_name, a.duration_seconds ?? 3600, b.auth.scope?.project?.name ?? null));
        }
        throw IamError.badRequest('unsupported combination of authentication methods');
      },
    },
    {
      method: 'GET', url: '/v3/auth/tokens', meta: meta('iam:tokens:validateToken', 'token', undefined, { authenticatedOnly: true }),
      handler: async (req, reply) => {
        const caller = principalOf(req);
        const subject = req.headers['x-subject-token'];
        if (typeof subject !== 'string') throw IamError.badRequest('X-Subject-Token header is required');
        let info;
        try {
          info = await iam.inspectToken(subject);
        } catch {
          throw IamError.notFound('token');
        }
        // A caller may validate its own tokens, or its account's when a policy allows it; other tenants' tokens do not exist.
        const own = info.principal.userId === caller.userId && info.principal.accountId === caller.accountId;
        if (!own) {
          if (info.principal.accountId !== caller.accountId) throw IamError.notFound('token');
          const d = await iam.authorize(caller, 'iam:tokens:validateToken', null, { sourceIp: req.ip });
          if (d.effect !== 'allow') throw IamError.forbidden('not authorized to perform iam:tokens:validateToken');
        }
        reply.header('x-subject-token', subject);
        return tokenView({ principal: info.principal, methods: info.methods, issuedAt: info.issuedAt, expiresAt: info.principal.expiresAt ?? 0 }, await roleViews(info.principal));
      },
    },
    {
      method: 'DELETE', url: '/v3/auth/tokens', meta: meta('iam:tokens:revokeToken', 'token', undefined, { authenticatedOnly: true }),
      handler: async (req, reply) => {
        const caller = principalOf(req);
        const subject = req.headers['x-subject-token'];
        if (typeof subject !== 'string') throw IamError.badRequest('X-Subject-Token header is required');
        let info;
        try {
          info = await iam.inspectToken(subject);
        } catch {
          throw IamError.notFound('token');
        }
        const own = info.principal.userId === caller.userId && info.principal.accountId === caller.accountId;
        if (!own) {
          if (info.principal.accountId !== caller.accountId) throw IamError.notFound('token');
          const d = await iam.authorize(caller, 'iam:tokens:revokeToken', null, { sourceIp: req.ip });
          if (d.effect !== 'allow') throw IamError.forbidden('not authorized to perform iam:tokens:revokeToken');
        }
        await iam.revokeToken(subject);
        return reply.code(204).send();
      },
    },
    {
      method: 'GET', url: '/v3/auth/projects', meta: meta('iam:projects:listProjectsForUser', 'project', undefined, { authenticatedOnly: true }),
      handler: async (req) => ({ projects: (await iam.listProjects(principalOf(req).accountId)).map(projectView) }),
    },

    // ---------------------------------------------------------- users
    {
      method: 'POST', url: '/v3.0/OS-USER/users',
      meta: meta('iam:users:createUser', 'user', async (req, p) => inAccount(body<{ user: { domain_id: string } }>(req).user.domain_id)(req, p)),
      schema: { body: Type.Object({ user: Type.Object({ domain_id: Id, name: Name, password: Type.Optional(Password), email: Type.Optional(Type.String({ format: 'email', maxLength: 255 })), description: Type.Optional(Desc), enabled: Type.Optional(Type.Boolean()) }, S) }, S) },
      handler: async (req, reply) => {
        const u = body<{ user: { name: string; password?: string; email?: string; description?: string; enabled?: boolean } }>(req).user;
        const row = await iam.createUser(principalOf(req).accountId, u);
        req.custos.traced = { resourceId: row.id, resourceName: row.name };
        return reply.code(201).send({ user: userView(row) });
      },
    },
    {
      method: 'GET', url: '/v3/users', meta: meta('iam:users:listUsers', 'user', async (req, p) => inAccount(query(req).domain_id)(req, p)),
      schema: { querystring: Type.Object({ domain_id: Type.Optional(Id), name: Type.Optional(Name), enabled: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, S) },
      handler: async (req) => {
        const q = query(req);
        const users = await iam.listUsers(principalOf(req).accountId, { ...(q.name ? { name: q.name } : {}), ...(q.enabled ? { enabled: q.enabled === 'true' } : {}) });
        return { users: users.map(userView), links: { self: '/v3/users' } };
      },
    },
    ...['/v3/users/:user_id', '/v3.0/OS-USER/users/:user_id'].map(
      (url): RouteDef => ({
        method: 'GET', url, meta: meta('iam:users:getUser', 'user', userRes()), schema: { params: Params('user_id') },
        handler: async (req) => ({ user: userView((await iam.getUserForRead(principalOf(req).accountId, params(req).user_id!))!) }),
      }),
    ),
    {
      method: 'PUT', url: '/v3.0/OS-USER/users/:user_id', meta: meta('iam:users:updateUser', 'user', userRes()),
      schema: { params: Params('user_id'), body: Type.Object({ user: Type.Object({ name: Type.Optional(Name), password: Type.Optional(Password), email: Type.Optional(Type.String({ format: 'email', maxLength: 255 })), description: Type.Optional(Desc), enabled: Type.Optional(Type.Boolean()) }, { ...S, minProperties: 1 }) }, S) },
      handler: async (req) => {
        const p = principalOf(req);
        const { password, ...rest } = body<{ user: { name?: string; password?: string; email?: string; description?: string; enabled?: boolean } }>(req).user;
        if (password !== undefined) await iam.setPassword((await iam.getUser(p.accountId, params(req).user_id!))!, password);
        return { user: userView(await iam.updateUser(p.accountId, params(req).user_id!, rest)) };
      },
    },
    {
      method: 'DELETE', url: '/v3/users/:user_id', meta: meta('iam:users:deleteUser', 'user', userRes()), schema: { params: Params('user_id') },
      handler: async (req, reply) => {
        const p = principalOf(req);
        if (params(req).user_id === p.userId) throw IamError.badRequest('a user cannot delete itself');
        await iam.deleteUser(p.accountId, params(req).user_id!);
        return reply.code(204).send();
      },
    },
    {
      method: 'PUT', url: '/v3/users/:user_id/password', meta: meta('iam:users:updatePassword', 'user', userRes()),
      schema: { params: Params('user_id'), body: Type.Object({ user: Type.Object({ password: Password, original_password: Password }, S) }, S) },
      handler: async (req, reply) => {
        const b = body<{ user: { password: string; original_password: string } }>(req).user;
        await iam.changePassword(principalOf(req).accountId, params(req).user_id!, b.password, b.original_password);
        return reply.code(204).send();
      },
    },
    {
      method: 'GET', url: '/v3/users/:user_id/groups', meta: meta('iam:users:listGroupsForUser', 'user', userRes()), schema: { params: Params('user_id') },
      handler: async (req) => ({ groups: (await iam.listUserGroups(params(req).user_id!)).map(groupView) }),
    },

    // ---------------------------------------------------------- groups
    {
      method: 'POST', url: '/v3/groups', meta: meta('iam:groups:createGroup', 'group', async (req, p) => inAccount(body<{ group: { domain_id?: string } }>(req).group.domain_id)(req, p)),
      schema: { body: Type.Object({ group: Type.Object({ name: Name, description: Type.Optional(Desc), domain_id: Type.Optional(Id) }, S) }, S) },
      handler: async (req, reply) => {
        const g = body<{ group: { name: string; description?: string } }>(req).group;
        const row = await iam.createGroup(principalOf(req).accountId, g.name, g.description ?? '');
        req.custos.traced = { resourceId: row.id, resourceName: row.name };
        return reply.code(201).send({ group: groupView(row) });
      },
    },
    {
      method: 'GET', url: '/v3/groups', meta: meta('iam:groups:listGroups', 'group', async (req, p) => inAccount(query(req).domain_id)(req, p)),
      schema: { querystring: Type.Object({ domain_id: Type.Optional(Id), name: Type.Optional(Name) }, S) },
      handler: async (req) => ({ groups: (await iam.listGroups(principalOf(req).accountId, query(req).name)).map(groupView) }),
    },
    {
      method: 'GET', url: '/v3/groups/:group_id', meta: meta('iam:groups:getGroup', 'group', groupRes), schema: { params: Params('group_id') },
      handler: async (req) => ({ group: groupView((await iam.getGroup(principalOf(req).accountId, params(req).group_id!))!) }),
    },
    {
      method: 'DELETE', url: '/v3/groups/:group_id', meta: meta('iam:groups:deleteGroup', 'group', groupRes), schema: { params: Params('group_id') },
      handler: async (req, reply) => {
        await iam.deleteGroup(principalOf(req).accountId, params(req).group_id!);
        return reply.code(204).send();
      },
    },
    {
      method: 'GET', url: '/v3/groups/:group_id/users', meta: meta('iam:groups:listUsersInGroup', 'group', groupRes), schema: { params: Params('group_id') },
      handler: async (req) => ({ users: (await iam.listGroupUsers(params(req).group_id!)).map(userView) }),
    },
    ...(['PUT', 'DELETE'] as const).map(
      (method): RouteDef => ({
        method, url: '/v3/groups/:group_id/users/:user_id', schema: { params: Params('group_id', 'user_id') },
        meta: meta(method === 'PUT' ? 'iam:groups:addUserToGroup' : 'iam:groups:removeUserFromGroup', 'group', async (req, p) => {
          const g = await groupRes(req, p);
          return g && (await iam.getUser(p.accountId, params(req).user_id!)) ? g : null;
        }),
        handler: async (req, reply) => {
          if (method === 'PUT') await iam.addUserToGroup(params(req).group_id!, params(req).user_id!);
          else await iam.removeUserFromGroup(params(req).group_id!, params(req).user_id!);
          return reply.code(204).send();
        },
      }),
    ),

    // ---------------------------------------------------------- projects
    {
      method: 'GET', url: '/v3/projects', meta: meta('iam:projects:listProjects', 'project', async (req, p) => inAccount(query(req).domain_id)(req, p)),
      schema: { querystring: Type.Object({ domain_id: Type.Optional(Id), name: Type.Optional(Type.String({ maxLength: 64 })) }, S) },
      handler: async (req) => {
        const name = query(req).name;
        const all = await iam.listProjects(principalOf(req).accountId);
        return { projects: all.filter((p) => name === undefined || p.name === name).map(projectView), links: { self: '/v3/projects' } };
      },
    },
    {
      method: 'GET', url: '/v3/projects/:project_id', meta: meta('iam:projects:getProject', 'project', projectRes), schema: { params: Params('project_id') },
      handler: async (req) => ({ project: projectView((await iam.getProject(principalOf(req).accountId, params(req).project_id!))!) }),
    },
    {
      method: 'POST', url: '/v3/projects', meta: meta('iam:projects:createProject', 'project', async (req, p) => inAccount(body<{ project: { domain_id?: string } }>(req).project.domain_id)(req, p)),
      schema: { body: Type.Object({ project: Type.Object({ name: Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z0-9_-]+$' }), parent_id: Type.Optional(Id), domain_id: Type.Optional(Id), description: Type.Optional(Desc) }, S) }, S) },
      handler: async (req, reply) => {
        const b = body<{ project: { name: string; description?: string } }>(req).project;
        const row = await iam.createProject(principalOf(req).accountId, b.name, b.description ?? '');
        req.custos.traced = { resourceId: row.id, resourceName: row.name };
        return reply.code(201).send({ project: projectView(row) });
      },
    },

    // ---------------------------------------------------------- permanent and temporary access keys
    {
      method: 'POST', url: '/v3.0/OS-CREDENTIAL/credentials', meta: meta('iam:credentials:createCredential', 'user', userFromBody((b) => b?.credential?.user_id)),
      schema: { body: Type.Object({ credential: Type.Object({ user_id: Id, description: Type.Optional(Desc) }, S) }, S) },
      handler: async (req, reply) => {
        const c = body<{ credential: { user_id: string; description?: string } }>(req).credential;
        const { row, secret } = await iam.createAccessKey(principalOf(req).accountId, c.user_id, c.description ?? '');
        req.custos.traced = { resourceId: row.user_id, resourceName: row.access_key };
        return reply.code(201).send({ credential: { ...credentialView(row), secret } });
      },
    },
    {
      method: 'GET', url: '/v3.0/OS-CREDENTIAL/credentials',
      meta: meta('iam:credentials:listCredentials', 'user', async (req, p) => {
        const uid = query(req).user_id;
        if (uid === undefined) return account(p);
        const u = await iam.getUser(p.accountId, uid);
        return u ? { service: 'iam', type: 'user', id: u.id, name: u.name, accountId: u.account_id, self: u.id === p.userId } : null;
      }),
      schema: { querystring: Type.Object({ user_id: Type.Optional(Id) }, S) },
      handler: async (req) => ({ credentials: (await iam.listAccessKeys(principalOf(req).accountId, query(req).user_id)).map(credentialView) }),
    },
    {
      method: 'GET', url: '/v3.0/OS-CREDENTIAL/credentials/:access_key', meta: meta('iam:credentials:getCredential', 'user', credRes), schema: { params: Params('access_key') },
      handler: async (req) => ({ credential: credentialView((await iam.getAccessKey(principalOf(req).accountId, params(req).access_key!))!) }),
    },
    {
      method: 'PUT', url: '/v3.0/OS-CREDENTIAL/credentials/:access_key', meta: meta('iam:credentials:updateCredential', 'user', credRes),
      schema: { params: Params('access_key'), body: Type.Object({ credential: Type.Object({ status: Type.Optional(Type.Union([Type.Literal('active'), Type.Literal('inactive')])), description: Type.Optional(Desc) }, { ...S, minProperties: 1 }) }, S) },
      handler: async (req) => ({ credential: credentialView(await iam.updateAccessKey(principalOf(req).accountId, params(req).access_key!, body<{ credential: { status?: 'active' | 'inactive'; description?: string } }>(req).credential)) }),
    },
    {
      method: 'DELETE', url: '/v3.0/OS-CREDENTIAL/credentials/:access_key', meta: meta('iam:credentials:deleteCredential', 'user', credRes), schema: { params: Params('access_key') },
      handler: async (req, reply) => {
        await iam.deleteAccessKey(principalOf(req).accountId, params(req).access_key!);
        return reply.code(204).send();
      },
    },
    {
      method: 'POST', url: '/v3.0/OS-CREDENTIAL/securitytokens', meta: meta('iam:credentials:createTemporaryCredential', 'user', undefined, { authenticatedOnly: true }),
      schema: {
        body: Type.Object({
          auth: Type.Object({
            identity: Type.Object({
              methods: Type.Array(Type.Union([Type.Literal('token'), Type.Literal('assume_role')]), { minItems: 1, maxItems: 1 }),
              token: Type.Optional(Type.Object({ id: Type.Optional(Type.String({ maxLength: 4096 })), duration_seconds: Type.Optional(Type.Integer({ minimum: 900, maximum: 86400 })) }, S)),
              assume_role: Type.Optional(Type.Object({ domain_name: Name, agency_name: Name, duration_seconds: Type.Optional(Type.Integer({ minimum: 900, maximum: 86400 })) }, S)),
            }, S),
          }, S),
        }, S),
      },
      handler: async (req, reply) => {
        const caller = principalOf(req);
        // Open to every caller (no policy decides it), but not to a frozen (deregistering) account,
        // whose users may only see or cancel the deregistration.
        if (caller.frozen) throw new IamError(403, IamCodes.accountFrozen, 'the account is being deregistered and is frozen: only the deregistration can be viewed or cancelled');
        const id = body<{ auth: { identity: { methods: string[]; token?: { duration_seconds?: number }; assume_role?: { domain_name: string; agency_name: string; duration_seconds?: number } } } }>(req).auth.identity;
        let holder = caller;
        let duration = id.token?.duration_seconds ?? 900;
        if (id.methods[0] === 'assume_role') {
          if (!id.assume_role) throw IamError.badRequest('identity.assume_role is required');
          const d = await iam.authorize(caller, 'iam:agencies:assume', null, { sourceIp: req.ip });
          if (d.effect !== 'allow') throw IamError.forbidden('not authorized to perform iam:agencies:assume');
          duration = id.assume_role.duration_seconds ?? 900;
          holder = (await iam.assumeAgency(caller, id.assume_role.domain_name, id.assume_role.agency_name, duration, null)).principal;
        }
        const c = await iam.createTemporaryCredentials(holder, duration);
        return reply.code(201).send({ credential: { access: c.access, secret: c.secret, securitytoken: c.securityToken, expires_at: new Date(c.expiresAt).toISOString() } });
      },
    },

    // ---------------------------------------------------------- MFA
    {
      method: 'POST', url: '/v3.0/OS-MFA/virtual-mfa-devices', meta: meta('iam:mfa:createVirtualMFADevice', 'user', userFromBody((b) => b?.virtual_mfa_device?.user_id)),
      schema: { body: Type.Object({ virtual_mfa_device: Type.Object({ name: Name, user_id: Id }, S) }, S) },
      handler: async (req, reply) => {
        const d = body<{ virtual_mfa_device: { user_id: string } }>(req).virtual_mfa_device;
        const r = await iam.createVirtualMfa(principalOf(req).accountId, d.user_id);
        return reply.code(201).send({ virtual_mfa_device: { serial_number: r.serialNumber, base32_string_seed: r.secret, otpauth_uri: r.uri } });
      },
    },
    {
      method: 'PUT', url: '/v3.0/OS-MFA/mfa-devices/bind', meta: meta('iam:mfa:bindMFADevice', 'user', userFromBody((b) => b?.binding_device?.user_id)),
      schema: { body: Type.Object({ binding_device: Type.Object({ user_id: Id, serial_number: Type.String({ maxLength: 128 }), authentication_code_first: Type.String({ maxLength: 16 }), authentication_code_second: Type.String({ maxLength: 16 }) }, S) }, S) },
      handler: async (req, reply) => {
        const d = body<{ binding_device: { user_id: string; serial_number: string; authentication_code_first: string; authentication_code_second: string } }>(req).binding_device;
        await iam.bindMfa(principalOf(req).accountId, d.user_id, d.serial_number, d.authentication_code_first, d.authentication_code_second);
        return reply.code(204).send();
      },
    },
    {
      method: 'PUT', url: '/v3.0/OS-MFA/mfa-devices/unbind', meta: meta('iam:mfa:unbindMFADevice', 'user', userFromBody((b) => b?.unbinding_device?.user_id)),
      schema: { body: Type.Object({ unbinding_device: Type.Object({ user_id: Id, serial_number: Type.String({ maxLength: 128 }), authentication_code: Type.String({ maxLength: 16 }) }, S) }, S) },
      handler: async (req, reply) => {
        const d = body<{ unbinding_device: { user_id: string; serial_number: string; authentication_code: string } }>(req).unbinding_device;
        await iam.unbindMfa(principalOf(req).accountId, d.user_id, d.serial_number, d.authentication_code);
        return reply.code(204).send();
      },
    },
    {
      method: 'GET', url: '/v3.0/OS-MFA/users/:user_id/virtual-mfa-device', meta: meta('iam:mfa:getVirtualMFADevice', 'user', userRes()), schema: { params: Params('user_id') },
      handler: async (req) => {
        const u = (await iam.getUser(principalOf(req).accountId, params(req).user_id!))!;
        if (!u.mfa_secret) throw IamError.notFound('virtual MFA device');
        return { virtual_mfa_device: { user_id: u.id, serial_number: mfaSerial(u.id) } };
      },
    },

    // ---------------------------------------------------------- custom policies (Huawei "roles")
    {
      method: 'POST', url: '/v3.0/OS-ROLE/roles', meta: meta('iam:roles:createRole', 'role', async (_req, p) => account(p)),
      schema: { body: Type.Object({ role: Type.Object({ display_name: Type.String({ minLength: 1, maxLength: 128 }), type: Type.Optional(Type.Union([Type.Literal('AX'), Type.Literal('XA')])), description: Type.Optional(Desc), policy: Type.Unknown() }, S) }, S) },
      handler: async (req, reply) => {
        const r = body<{ role: { display_name: string; description?: string; policy: unknown } }>(req).role;
        const row = await iam.createPolicy(principalOf(req).accountId, { name: r.display_name, description: r.description ?? '', document: r.policy });
        req.custos.traced = { resourceId: row.id, resourceName: row.name };
        return reply.code(201).send({ role: roleView(row) });
      },
    },
    {
      method: 'GET', url: '/v3/roles', meta: meta('iam:roles:listRoles', 'role', async (_req, p) => account(p)),
      schema: { querystring: Type.Object({ display_name: Type.Optional(Type.String({ maxLength: 128 })) }, S) },
      handler: async (req) => ({ roles: (await iam.listPolicies(principalOf(req).accountId)).filter((r) => !query(req).display_name || r.name === query(req).display_name).map(roleView) }),
    },
    ...['/v3/roles/:role_id', '/v3.0/OS-ROLE/roles/:role_id'].map(
      (url): RouteDef => ({
        method: 'GET', url, meta: meta('iam:roles:getRole', 'role', roleRes(false)), schema: { params: Params('role_id') },
        handler: async (req) => ({ role: roleView((await iam.getPolicy(principalOf(req).accountId, params(req).role_id!))!) }),
      }),
    ),
    {
      method: 'PATCH', url: '/v3.0/OS-ROLE/roles/:role_id', meta: meta('iam:roles:updateRole', 'role', roleRes(true)),
      schema: { params: Params('role_id'), body: Type.Object({ role: Type.Object({ display_name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })), type: Type.Optional(Type.Union([Type.Literal('AX'), Type.Literal('XA')])), description: Type.Optional(Desc), policy: Type.Optional(Type.Unknown()) }, S) }, S) },
      handler: async (req) => {
        const r = body<{ role: { display_name?: string; description?: string; policy?: unknown } }>(req).role;
        const row = await iam.updatePolicy(principalOf(req).accountId, params(req).role_id!, { ...(r.display_name !== undefined ? { name: r.display_name } : {}), ...(r.description !== undefined ? { description: r.description } : {}), ...(r.policy !== undefined ? { document: r.policy } : {}) });
        return { role: roleView(row!) };
      },
    },
    {
      method: 'DELETE', url: '/v3.0/OS-ROLE/roles/:role_id', meta: meta('iam:roles:deleteRole', 'role', roleRes(true)), schema: { params: Params('role_id') },
      handler: async (req, reply) => {
        await iam.deletePolicy(principalOf(req).accountId, params(req).role_id!);
        return reply.code(204).send();
      },
    },
    ...grantRoutes('group', 'domains'),
    ...grantRoutes('group', 'projects'),
    ...grantRoutes('user', 'domains'),
    ...grantRoutes('user', 'projects'),
    ...grantRoutes('agency', 'domains'),
    ...grantRoutes('agency', 'projects'),

    // ---------------------------------------------------------- agencies
    {
      method: 'POST', url: '/v3.0/OS-AGENCY/agencies', meta: meta('iam:agencies:createAgency', 'agency', async (req, p) => inAccount(body<{ agency: { domain_id: string } }>(req).agency.domain_id)(req, p)),
      schema: { body: Type.Object({ agency: Type.Object({ name: Name, domain_id: Id, trust_domain_name: Name, description: Type.Optional(Desc), duration: Type.Optional(Type.Union([Type.Literal('FOREVER'), Type.Literal('ONEDAY'), Type.Integer({ minimum: 1, maximum: 365 })])), max_session_seconds: Type.Optional(Type.Integer({ minimum: 900, maximum: 86400 })) }, S) }, S) },
      handler: async (req, reply) => {
        const a = body<{ agency: { name: string; trust_domain_name: string; description?: string; duration?: 'FOREVER' | 'ONEDAY' | number; max_session_seconds?: number } }>(req).agency;
        const days = a.duration === undefined || a.duration === 'FOREVER' ? null : a.duration === 'ONEDAY' ? 1 : a.duration;
        const row = await iam.createAgency(principalOf(req).accountId, {
          name: a.name, trustAccountName: a.trust_domain_name, description: a.description ?? '', maxSessionSeconds: a.max_session_seconds ?? 3600,
          expiresAt: days === null ? null : Date.now() + days * 86_400_000,
        });
        req.custos.traced = { resourceId: row.id, resourceName: row.name };
        return reply.code(201).send({ agency: agencyView(row) });
      },
    },
    {
      method: 'GET', url: '/v3.0/OS-AGENCY/agencies', meta: meta('iam:agencies:listAgencies', 'agency', async (req, p) => inAccount(query(req).domain_id)(req, p)),
      schema: { querystring: Type.Object({ domain_id: Type.Optional(Id), name: Type.Optional(Name) }, S) },
      handler: async (req) => ({ agencies: (await iam.listAgencies(principalOf(req).accountId)).filter((a) => !query(req).name || a.name === query(req).name).map(agencyView) }),
    },
    {
      method: 'GET', url: '/v3.0/OS-AGENCY/agencies/:agency_id', meta: meta('iam:agencies:getAgency', 'agency', agencyRes), schema: { params: Params('agency_id') },
      handler: async (req) => ({ agency: agencyView((await iam.getAgency(principalOf(req).accountId, params(req).agency_id!))!) }),
    },
    {
      method: 'DELETE', url: '/v3.0/OS-AGENCY/agencies/:agency_id', meta: meta('iam:agencies:deleteAgency', 'agency', agencyRes), schema: { params: Params('agency_id') },
      handler: async (req, reply) => {
        await iam.deleteAgency(principalOf(req).accountId, params(req).agency_id!);
        return reply.code(204).send();
      },
    },

    // ---------------------------------------------------------- account security settings
    {
      method: 'GET', url: '/v3.0/OS-SECURITYPOLICY/domains/:domain_id/login-policy', meta: meta('iam:securitypolicies:getLoginPolicy', 'domain', async (req, p) => inAccount(params(req).domain_id)(req, p)),
      schema: { params: Params('domain_id') },
      handler: async (req) => loginPolicyView(await iam.securitySettings(principalOf(req).accountId)),
    },
    {
      method: 'PUT', url: '/v3.0/OS-SECURITYPOLICY/domains/:domain_id/login-policy', meta: meta('iam:securitypolicies:updateLoginPolicy', 'domain', async (req, p) => inAccount(params(req).domain_id)(req, p)),
      schema: { params: Params('domain_id'), body: Type.Object({ login_policy: Type.Object({ lockout_duration: Type.Optional(Type.Integer({ minimum: 15, maximum: 1440 })), login_failed_times: Type.Optional(Type.Integer({ minimum: 3, maximum: 10 })), period: Type.Optional(Type.Integer({ minimum: 15, maximum: 60 })) }, { ...S, minProperties: 1 }) }, S) },
      handler: async (req) => {
        const l = body<{ login_policy: { lockout_duration?: number; login_failed_times?: number; period?: number } }>(req).login_policy;
        return loginPolicyView(await iam.updateSecuritySettings(principalOf(req).accountId, {
          ...(l.lockout_duration !== undefined ? { lockoutMinutes: l.lockout_duration } : {}),
          ...(l.login_failed_times !== undefined ? { lockoutThreshold: l.login_failed_times } : {}),
          ...(l.period !== undefined ? { lockoutWindowMinutes: l.period } : {}),
        }));
      },
    },
    {
      method: 'GET', url: '/v3.0/OS-SECURITYPOLICY/domains/:domain_id/password-policy', meta: meta('iam:securitypolicies:getPasswordPolicy', 'domain', async (req, p) => inAccount(params(req).domain_id)(req, p)),
      schema: { params: Params('domain_id') },
      handler: async (req) => passwordPolicyView(await iam.securitySettings(principalOf(req).accountId)),
    },
    {
      method: 'PUT', url: '/v3.0/OS-SECURITYPOLICY/domains/:domain_id/password-policy', meta: meta('iam:securitypolicies:updatePasswordPolicy', 'domain', async (req, p) => inAccount(params(req).domain_id)(req, p)),
      schema: { params: Params('domain_id'), body: Type.Object({ password_policy: Type.Object({ minimum_password_length: Type.Optional(Type.Integer({ minimum: 6, maximum: 32 })), password_char_combination: Type.Optional(Type.Integer({ minimum: 2, maximum: 4 })), number_of_recent_passwords_disallowed: Type.Optional(Type.Integer({ minimum: 0, maximum: 10 })) }, { ...S, minProperties: 1 }) }, S) },
      handler: async (req) => {
        const p = principalOf(req);
        const b = body<{ password_policy: { minimum_password_length?: number; password_char_combination?: number; number_of_recent_passwords_disallowed?: number } }>(req).password_policy;
        const cur = (await iam.securitySettings(p.accountId)).password;
        return passwordPolicyView(await iam.updateSecuritySettings(p.accountId, {
          password: { minLength: b.minimum_password_length ?? cur.minLength, minCharClasses: b.password_char_combination ?? cur.minCharClasses, reuseHistory: b.number_of_recent_passwords_disallowed ?? cur.reuseHistory },
        }));
      },
    },
  ];
  return routes;
}

function groupView(g: { id: string; name: string; account_id: string; description: string; created_at: number }) {
  return { id: g.id, name: g.name, domain_id: g.account_id, description: g.description, create_time: g.created_at, links: { self: `/v3/groups/${g.id}` } };
}
function roleView(r: { id: string; account_id: string | null; name: string; description: string; document: string; created_at: number; updated_at: number }) {
  return {
    id: r.id, name: r.account_id === null ? r.name : `custom_${r.id}`, display_name: r.name, description: r.description, domain_id: r.account_id,
    type: r.account_id === null ? 'AA' : 'AX', catalog: r.account_id === null ? 'BASE' : 'CUSTOMED', policy: JSON.parse(r.document) as unknown,
    created_time: String(r.created_at), updated_time: String(r.updated_at), links: { self: `/v3/roles/${r.id}` },
  };
}
function agencyView(a: { id: string; name: string; account_id: string; trust_account_id: string; description: string; max_session_seconds: number; expires_at: number | null; created_at: number; trust_account_name?: string }) {
  return {
    id: a.id, name: a.name, domain_id: a.account_id, trust_domain_id: a.trust_account_id, ...(a.trust_account_name ? { trust_domain_name: a.trust_account_name } : {}),
    description: a.description, duration: a.expires_at === null ? 'FOREVER' : null, expire_time: a.expires_at === null ? null : new Date(a.expires_at).toISOString(),
    max_session_seconds: a.max_session_seconds, create_time: new Date(a.created_at).toISOString(),
  };
}
function loginPolicyView(s: { lockoutMinutes: number; lockoutThreshold: number; lockoutWindowMinutes: number }) {
  return { login_policy: { lockout_duration: s.lockoutMinutes, login_failed_times: s.lockoutThreshold, period: s.lockoutWindowMinutes } };
}
function passwordPolicyView(s: { password: { minLength: number; minCharClasses: number; reuseHistory: number } }) {
  return { password_policy: { minimum_password_length: s.password.minLength, password_char_combination: s.password.minCharClasses, number_of_recent_passwords_disallowed: s.password.reuseHistory, maximum_password_length: 128 } };
}

export type { TSchema };

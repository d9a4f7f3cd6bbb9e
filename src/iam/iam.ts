import { hash as oneShotHash, timingSafeEqual } from 'node:crypto';
import { randomBytes } from '../crypto/random.js';
import { CompiledQuery, sql } from 'kysely';
import type { SecretBox } from '../crypto/secretbox.js';
import { isUniqueViolation, multiRowInsertSql, usesNumberedParams } from '../store/db.js';
import { deepFreeze, IamCache, SharedEpoch, type CacheSpace, type IamCacheOptions } from './cache.js';
import { IamCodes, IamError } from './errors.js';
import { checkTotp, newTotpSecret, totpUri } from './mfa.js';
import {
  DEFAULT_PASSWORD_POLICY,
  burnPasswordCheck,
  hashPassword,
  passwordProblems,
  verifyPassword,
  type PasswordPolicy,
} from './passwords.js';
import { evaluatePolicies, validatePolicyDocument, type ConditionValue, type Decision, type PolicyDocument, type PrincipalPattern, type ResourcePolicy } from './policy.js';
import { isV2Scheme, parseSignature, verifySignature, SignatureError, type ChunkSigner, type SignedRequestInput } from './signing.js';
import type { AccessKeyRow, AccountRow, IamDb, IamTables, ProjectRow, UserRow } from './store.js';

type TokenRow = IamTables['iam_tokens'];

/** The policies in force for a principal in a project, as cached. */
interface PolicySet {
  policies: readonly { id: string; document: PolicyDocument }[];
  /** No statement has a condition, so the decision depends on the action and resource alone. */
  conditionFree: boolean;
  /** Decisions already taken with this set (condition-free sets only), by action and resource. */
  decisions: Map<string, Decision>;
}
const MAX_DECISIONS_PER_SET = 1_000;

/** Who is calling, established once per request by `authenticate*`. */
export interface Principal {
  accountId: string;
  accountName: string;
  userId: string;
  userName: string;
  projectId: string | null;
  projectName: string | null;
  region: string | null;
  /** Set when a user of another account acts here through an agency. */
  agency: { id: string; name: string; sourceAccountId: string; sourceAccountName: string } | null;
  accessKeyId: string | null;
  /** `anonymous`: a request without credentials (ANONYMOUS_PRINCIPAL), let only where a public resource allows it. */
  method: 'token' | 'aksk' | 'anonymous';
  mfa: boolean;
  expiresAt: number | null;
  /** The account is being deregistered: content is out of reach until the deregistration is cancelled. */
  frozen?: boolean;
}

/**
 * Who sent a request without credentials. It belongs to no account, so `authorize` denies it
 * everything; only `authorizeAnonymous` on a resource with a public policy lets it in.
 */
export const ANONYMOUS_PRINCIPAL: Principal = Object.freeze({
  accountId: '', accountName: '', userId: '', userName: 'anonymous', projectId: null, projectName: null, region: null,
  agency: null, accessKeyId: null, method: 'anonymous', mfa: false, expiresAt: null,
});

/** Whether the principal is ANONYMOUS_PRINCIPAL's kind: a request that carried no credentials. */
export function isAnonymous(p: Principal): boolean {
  return p.method === 'anonymous';
}

/** What an action applies to, resolved by the route before the decision. */
export interface ResourceRef {
  service: string;
  type: string;
  id: string;
  name?: string;
  accountId: string;
  projectId?: string | null;
  region?: string | null;
  tags?: Record<string, string>;
  /** The caller acts on its own user (password, access keys, MFA): allowed without a policy. */
  self?: boolean;
  /** A resource-based policy (a bucket policy), decided together with the caller's own policies. */
  resourcePolicy?: ResourcePolicy;
}

export interface AuthzContext {
  sourceIp: string;
  /** The request came over TLS (g:SecureTransport, aws:SecureTransport). */
  secure?: boolean;
  extraConditions?: Record<string, ConditionValue>;
}

export interface SecuritySettings {
  password: PasswordPolicy;
  lockoutThreshold: number;
  lockoutWindowMinutes: number;
  lockoutMinutes: number;
}

export const DEFAULT_SECURITY: SecuritySettings = {
  password: DEFAULT_PASSWORD_POLICY,
  lockoutThreshold: 5,
  lockoutWindowMinutes: 15,
  lockoutMinutes: 15,
};

/** The only actions a user may perform on its own user without any policy (as in Huawei IAM). */
const SELF_SERVICE = new Set([
  'iam:users:getUser',
  'iam:users:updatePassword',
  'iam:credentials:listCredentials',
  'iam:credentials:createCredential',
  'iam:credentials:getCredential',
  'iam:credentials:updateCredential',
  'iam:credentials:deleteCredential',
  'iam:mfa:createVirtualMFADevice',
  'iam:mfa:bindMFADevice',
  'iam:mfa:unbindMFADevice',
  'iam:mfa:getVirtualMFADevice',
]);

export const FULL_ACCESS_POLICY_ID = 'system-fullaccess';
export const READ_ONLY_POLICY_ID = 'system-readonly';
const SYSTEM_POLICIES: { id: string; name: string; description: string; document: PolicyDocument }[] = [
  {
    id: FULL_ACCESS_POLICY_ID,
    name: 'FullAccess',
    description: 'All operations on all services of the account',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['*:*:*'] }] },
  },
  {
    id: READ_ONLY_POLICY_ID,
    name: 'ReadOnlyAccess',
    description: 'Read-only access to all services of the account',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['*:*:get*', '*:*:list*', '*:*:describe*'] }] },
  },
  {
    id: 'system-ctsreadonly',
    name: 'CTS ReadOnlyAccess',
    description: 'Read the account\'s audit traces',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['cts:*:get*', 'cts:*:list*'] }] },
  },
  {
    id: 'system-kmscmkfullaccess',
    name: 'KMS CMKFullAccess',
    description: 'All operations on the account\'s KMS keys and grants',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['kms:*:*'] }] },
  },
  {
    id: 'system-kmscryptouser',
    name: 'KMS CryptoUser',
    description: 'Use KMS keys for cryptographic operations and read them; no key management',
    document: {
      Version: '1.1',
      Statement: [{ Effect: 'Allow', Action: ['kms:cmk:encrypt', 'kms:cmk:decrypt', 'kms:cmk:generate', 'kms:cmk:reEncrypt', 'kms:cmk:sign', 'kms:cmk:verify', 'kms:cmk:get*', 'kms:cmk:list', 'kms:cmk:generateRandom'] }],
    },
  },
  {
    id: 'system-vaultadmin',
    name: 'Vault Administrator',
    description: 'Manage personal-data collections, their schemas and whitelists, subject events and the inventory; reaching records still needs the whitelist',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['vault:collections:*', 'vault:subjects:*', 'vault:inventory:*'] }] },
  },
  {
    id: 'system-privacyofficer',
    name: 'Privacy Officer',
    description: 'Purposes, consent, data-subject requests (verify, extend, refuse, execute), subject events and the personal-data inventory',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['privacy:*:*', 'vault:subjects:*', 'vault:inventory:get'] }] },
  },
  {
    id: 'system-vaultdatauser',
    name: 'Vault DataUser',
    description: 'Read, write, search and detokenize records of the collections whose whitelist names the caller',
    document: { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['vault:records:*', 'vault:tokens:*', 'vault:collections:get', 'vault:collections:list'] }] },
  },
];

/** The account that operates the platform itself; its administrators may create accounts. */
export const OPERATOR_ACCOUNT = 'custos';

export function newId(): string {
  return randomBytes(16).toString('hex');
}
export function sha256Hex(s: string | Buffer): string {
  return oneShotHash('sha256', s, 'hex');
}
function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
function newAccessKeyId(): string {
  // Upper-case letters and digits, 20 characters, like the clouds' AK format.
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const bytes = randomBytes(20);
  return [...bytes].map((b) => alphabet[b % 36]).join('');
}

type PrincipalSource = { accountId: string; userId: string; projectId: string | null; agencyId: string | null; mfa: boolean; accessKeyId: string | null; method: 'token' | 'aksk'; expiresAt: number | null };

export interface IssuedToken {
  token: string;
  principal: Principal;
  methods: string[];
  issuedAt: number;
  expiresAt: number;
}

export interface LoginRequest {
  accountName: string;
  userName: string;
  password: string;
  totp?: { userId: string; passcode: string };
  scope: { projectId?: string; projectName?: string; domain?: boolean };
}

/**
 * Methods that change what authentication or authorization may read. Each is wrapped so the cache
 * forgets everything when it completes and other nodes are told through the epoch row. A test
 * checks that every method writing to the database is in this list or in NON_INVALIDATING_WRITES.
 */
export const MUTATING_METHODS = [
  'bootstrap', 'createAccount', 'updateSecuritySettings', 'createProject', 'createUser', 'updateUser', 'deleteUser', 'setPassword',
  'unlockUser', 'createGroup', 'deleteGroup', 'addUserToGroup', 'removeUserFromGroup', 'recordFailedLogin', 'revokeToken',
  'revokeUserTokens', 'updateAccessKey', 'deleteAccessKey', 'bindMfa', 'unbindMfa', 'createPolicy', 'updatePolicy', 'deletePolicy',
  'attachPolicy', 'detachPolicy', 'createAgency', 'deleteAgency', 'setAccountStatus', 'destroyAccountPrincipals',
] as const;
/** Writes that add something new or bookkeep, and so cannot make a cached answer wrong. */
export const NON_INVALIDATING_WRITES = [
  'login', // resets the failed-login counter of the user who just proved the password
  'consumeTotp', // reads and moves the TOTP step in one UPDATE … WHERE, never through the cache
  'issueToken', 'createAccessKey', 'createTemporaryCredentials', 'createVirtualMfa', // new rows only
  'authenticateSigned', 'authenticateSignedRequest', 'flushReplays', // the replay cache
  'purgeExpired', // removes only rows that are expired, which every use checks anyway
] as const;

export class IamService {
  private readonly now: () => number;
  private readonly db: IamDb;
  /** What authentication and authorization read, per node; see cache.ts for the invalidation rules. */
  readonly cache: IamCache;
  /** The `iam.epoch` row other nodes poll. */
  private readonly epoch: SharedEpoch;
  private readonly tokens: CacheSpace<TokenRow>;
  private readonly accessKeys: CacheSpace<{ key: AccessKeyRow; secret: string }>;
  private readonly principals: CacheSpace<{ principal: Principal; agencyExpiresAt: number | null }>;
  private readonly users: CacheSpace<UserRow>;
  private readonly policySets: CacheSpace<PolicySet>;
  /** Parsed policy documents by policy id, reused while the stored text is the same. */
  private readonly parsedPolicies = new Map<string, { text: string; document: PolicyDocument; conditionFree: boolean }>();
  /** True when the database numbers its parameters ($1, PostgreSQL) rather than using `?` (SQLite). */
  private readonly numberedParams: boolean;

  constructor(
    db: IamDb,
    private readonly secrets: SecretBox,
    readonly opts: {
      regions: string[]; tokenTtlSeconds: number; signatureWindowSeconds: number; now?: () => number; cache?: Partial<IamCacheOptions>;
      /** Resolves once committed changes survive a power loss (Store.durable): awaited after every MUTATING_METHODS call. */
      durable?: () => Promise<void>;
    },
  ) {
    this.db = db;
    this.now = opts.now ?? Date.now;
    const epoch = new SharedEpoch(db as unknown as ConstructorParameters<typeof SharedEpoch>[0], 'iam.epoch', () => this.cache);
    this.epoch = epoch;
    this.cache = new IamCache(() => epoch.read(), opts.cache);
    this.tokens = this.cache.space('token');
    this.accessKeys = this.cache.space('access-key');
    this.principals = this.cache.space('principal');
    this.users = this.cache.space('user');
    this.policySets = this.cache.space('policies');
    this.numberedParams = usesNumberedParams(db);
    const self = this as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    for (const name of MUTATING_METHODS) {
      const original = self[name]!;
      self[name] = (...args: unknown[]) =>
        this.cache.mutation(async () => {
          let result: unknown;
          try {
            result = await original.apply(this, args);
          } finally {
            // Before the call returns, so another node honours the change within the staleness bound
            // counted from the moment the caller sees it done.
            await this.epoch.bump();
          }
          // And it survives a power loss before the caller hears of it: a disabled key, a deleted
          // user or a detached policy must not come back.
          await opts.durable?.();
          return result;
        });
    }
  }

  /** One read of the epoch row: a change made by another node empties this node's cache. */
  async pollEpoch(): Promise<void> {
    await this.cache.poll();
  }

  // ---------------------------------------------------------------- bootstrap and accounts

  /** Creates the system policies and the operator account once. Returns the admin password the first time only. */
  async bootstrap(): Promise<{ created: boolean; accountName: string; userName: string; password?: string }> {
    const t = this.now();
    for (const p of SYSTEM_POLICIES) {
      await this.db
        .insertInto('iam_policies')
        .values({ id: p.id, account_id: null, name: p.name, description: p.description, document: JSON.stringify(p.document), created_at: t, updated_at: t })
        .onConflict((oc) => oc.column('id').doNothing())
        .execute();
    }
    const existing = await this.db.selectFrom('iam_accounts').select('id').where('name', '=', OPERATOR_ACCOUNT).executeTakeFirst();
    if (existing) return { created: false, accountName: OPERATOR_ACCOUNT, userName: 'admin' };
    const password = `Cu-${randomBytes(12).toString('base64url')}`;
    try {
      await this.createAccount({ name: OPERATOR_ACCOUNT, adminName: 'admin', adminPassword: password });
    } catch (e) {
      // Another node bootstrapped at the same moment.
      if (e instanceof IamError && e.status === 409) return { created: false, accountName: OPERATOR_ACCOUNT, userName: 'admin' };
      throw e;
    }
    return { created: true, accountName: OPERATOR_ACCOUNT, userName: 'admin', password };
  }

  /** A new tenant: the account, one default project per region, an admin group with FullAccess, its first user. */
  async createAccount(input: { name: string; adminName: string; adminPassword: string; email?: string }): Promise<{ account: AccountRow; adminUserId: string }> {
    const problems = passwordProblems(input.adminPassword, input.adminName, DEFAULT_PASSWORD_POLICY);
    if (problems.length) throw new IamError(400, IamCodes.passwordPolicy, `password policy: ${problems.join('; ')}`);
    const t = this.now();
    const account: AccountRow = { id: newId(), name: input.name, status: 'active', security_settings: JSON.stringify(DEFAULT_SECURITY), created_at: t };
    const adminUserId = newId();
    const passwordHash = await hashPassword(input.adminPassword);
    try {
      await this.db.transaction().execute(async (trx) => {
        await trx.insertInto('iam_accounts').values(account).execute();
        for (const region of this.opts.regions) {
          await trx.insertInto('iam_projects').values({ id: newId(), account_id: account.id, name: region, region, description: `default project of ${region}`, created_at: t }).execute();
        }
        const groupId = newId();
        await trx.insertInto('iam_groups').values({ id: groupId, account_id: account.id, name: 'admin', description: 'Account administrators', created_at: t }).execute();
        await trx
          .insertInto('iam_policy_attachments')
          .values({ account_id: account.id, policy_id: FULL_ACCESS_POLICY_ID, principal_type: 'group', principal_id: groupId, project_id: '', created_at: t })
          .execute();
        await trx.insertInto('iam_users').values(this.userRow(adminUserId, account.id, input.adminName, input.email ?? null, 'Account administrator', passwordHash, t)).execute();
        await trx.insertInto('iam_password_history').values({ user_id: adminUserId, hash: passwordHash, created_at: t }).execute();
        await trx.insertInto('iam_group_members').values({ group_id: groupId, user_id: adminUserId }).execute();
      });
    } catch (e) {
      if (isUniqueViolation(e)) throw IamError.conflict(`an account named ${input.name} already exists`);
      throw e;
    }
    return { account, adminUserId };
  }

  private userRow(id: string, accountId: string, name: string, email: string | null, description: string, passwordHash: string | null, t: number): UserRow {
    return {
      id, account_id: accountId, name, email, description, enabled: 1,
      password_hash: passwordHash, password_changed_at: passwordHash ? t : null,
      failed_logins: 0, first_failed_at: null, locked_until: null,
      mfa_secret: null, mfa_pending_secret: null, mfa_last_step: null, created_at: t,
    };
  }

  async getAccount(id: string): Promise<AccountRow | undefined> {
    return this.db.selectFrom('iam_accounts').selectAll().where('id', '=', id).executeTakeFirst();
  }
  async getAccountByName(name: string): Promise<AccountRow | undefined> {
    return this.db.selectFrom('iam_accounts').selectAll().where('name', '=', name).executeTakeFirst();
  }
  /**
   * `deregistering`: the account is frozen for its retention period — its users still log in, but
   * the edge lets them only see or cancel the deregistration. `destroyed`: nobody logs in again.
   */
  async setAccountStatus(accountId: string, status: 'active' | 'deregistering' | 'destroyed'): Promise<void> {
    await this.db.updateTable('iam_accounts').set({ status }).where('id', '=', accountId).execute();
  }

  /** Account destruction: users, groups, credentials, tokens, MFA seeds, policies, agencies. The account row stays, destroyed. */
  async destroyAccountPrincipals(accountId: string): Promise<{ users: number; groups: number; access_keys: number; policies: number; agencies: number }> {
    return this.db.transaction().execute(async (tx) => {
      const users = (await tx.selectFrom('iam_users').select('id').where('account_id', '=', accountId).execute()).map((u) => u.id);
      const groups = (await tx.selectFrom('iam_groups').select('id').where('account_id', '=', accountId).execute()).map((g) => g.id);
      const agencies = (await tx.selectFrom('iam_agencies').select('id').where('account_id', '=', accountId).execute()).map((a) => a.id);
      const keys = await tx.deleteFrom('iam_access_keys').where('account_id', '=', accountId).executeTakeFirst();
      if (users.length) {
        await tx.deleteFrom('iam_tokens').where('user_id', 'in', users).execute();
        await tx.deleteFrom('iam_password_history').where('user_id', 'in', users).execute();
        await tx.deleteFrom('iam_group_members').where('user_id', 'in', users).execute();
      }
      const principals = [...users, ...groups, ...agencies];
      if (principals.length) await tx.deleteFrom('iam_policy_attachments').where('principal_id', 'in', principals).execute();
      const policies = await tx.deleteFrom('iam_policies').where('account_id', '=', accountId).executeTakeFirst();
      await tx.deleteFrom('iam_agencies').where('account_id', '=', accountId).execute();
      await tx.deleteFrom('iam_groups').where('account_id', '=', accountId).execute();
      await tx.deleteFrom('iam_users').where('account_id', '=', accountId).execute();
      await tx.updateTable('iam_accounts').set({ status: 'destroyed', security_settings: '{}' }).where('id', '=', accountId).execute();
      return { users: users.length, groups: groups.length, access_keys: Number(keys.numDeletedRows), policies: Number(policies.numDeletedRows), agencies: agencies.length };
    });
  }

  async listAccounts(): Promise<AccountRow[]> {
    return this.db.selectFrom('iam_accounts').selectAll().orderBy('created_at').execute();
  }
  async securitySettings(accountId: string): Promise<SecuritySettings> {
    const a = await this.getAccount(accountId);
    return a ? { ...DEFAULT_SECURITY, ...(JSON.parse(a.security_settings) as Partial<SecuritySettings>) } : DEFAULT_SECURITY;
  }
  async updateSecuritySettings(accountId: string, patch: Partial<SecuritySettings>): Promise<SecuritySettings> {
    const next = { ...(await this.securitySettings(accountId)), ...patch };
    if (patch.password) next.password = { ...DEFAULT_PASSWORD_POLICY, ...patch.password };
    await this.db.updateTable('iam_accounts').set({ security_settings: JSON.stringify(next) }).where('id', '=', accountId).execute();
    return next;
  }

  // ---------------------------------------------------------------- projects

  async listProjects(accountId: string): Promise<ProjectRow[]> {
    return this.db.selectFrom('iam_projects').selectAll().where('account_id', '=', accountId).orderBy('name').execute();
  }
  async getProject(accountId: string, projectId: string): Promise<ProjectRow | undefined> {
    return this.db.selectFrom('iam_projects').selectAll().where('account_id', '=', accountId).where('id', '=', projectId).executeTakeFirst();
  }
  /** Project names follow Huawei's rule: the region, or `<region>_<suffix>`. */
  async createProject(accountId: string, name: string, description: string): Promise<ProjectRow> {
    const region = this.opts.regions.find((r) => name === r || name.startsWith(`${r}_`));
    if (!region) throw IamError.badRequest(`project name must be a configured region or start with "<region>_"; regions: ${this.opts.regions.join(', ')}`);
    const row: ProjectRow = { id: newId(), account_id: accountId, name, region, description, created_at: this.now() };
    try {
      await this.db.insertInto('iam_projects').values(row).execute();
    } catch (e) {
      if (isUniqueViolation(e)) throw IamError.conflict(`a project named ${name} already exists`);
      throw e;
    }
    return row;
  }

  // ---------------------------------------------------------------- users and groups

  async createUser(accountId: string, input: { name: string; password?: string; email?: string; description?: string; enabled?: boolean }): Promise<UserRow> {
    const t = this.now();
    let hash: string | null = null;
    if (input.password !== undefined) {
      const settings = await this.securitySettings(accountId);
      const problems = passwordProblems(input.password, input.name, settings.password);
      if (problems.length) throw new IamError(400, IamCodes.passwordPolicy, `password policy: ${problems.join('; ')}`);
      hash = await hashPassword(input.password);
    }
    const row = this.userRow(newId(), accountId, input.name, input.email ?? null, input.description ?? '', hash, t);
    row.enabled = input.enabled === false ? 0 : 1;
    try {
      await this.db.transaction().execute(async (trx) => {
        await trx.insertInto('iam_users').values(row).execute();
        if (hash) await trx.insertInto('iam_password_history').values({ user_id: row.id, hash, created_at: t }).execute();
      });
    } catch (e) {
      if (isUniqueViolation(e)) throw IamError.conflict(`a user named ${input.name} already exists`);
      throw e;
    }
    return row;
  }

  /**
   * A user for resolving a request's target and for read-only views; may be as stale as the IAM cache
   * allows (see cache.ts). Anything that decides on credentials or MFA state uses getUser.
   */
  async getUserForRead(accountId: string, userId: string): Promise<UserRow | undefined> {
    const key = `${accountId}|${userId}`;
    return this.users.get(key) ?? this.users.load(key, async () => deepFreeze(await this.getUser(accountId, userId)));
  }
  async getUser(accountId: string, userId: string): Promise<UserRow | undefined> {
    return this.db.selectFrom('iam_users').selectAll().where('account_id', '=', accountId).where('id', '=', userId).executeTakeFirst();
  }
  async getUserByName(accountId: string, name: string): Promise<UserRow | undefined> {
    return this.db.selectFrom('iam_users').selectAll().where('account_id', '=', accountId).where('name', '=', name).executeTakeFirst();
  }
  async listUsers(accountId: string, filter: { name?: string; enabled?: boolean } = {}): Promise<UserRow[]> {
    let q = this.db.selectFrom('iam_users').selectAll().where('account_id', '=', accountId);
    if (filter.name !== undefined) q = q.where('name', '=', filter.name);
    if (filter.enabled !== undefined) q = q.where('enabled', '=', filter.enabled ? 1 : 0);
    return q.orderBy('name').execute();
  }
  async updateUser(accountId: string, userId: string, patch: { name?: string; email?: string; description?: string; enabled?: boolean }): Promise<UserRow> {
    const set: Partial<UserRow> = {};
    if (patch.name !== undefined) set.name = patch.name;
    if (patch.email !== undefined) set.email = patch.email;
    if (patch.description !== undefined) set.description = patch.description;
    if (patch.enabled !== undefined) set.enabled = patch.enabled ? 1 : 0;
    if (Object.keys(set).length > 0) {
      try {
        await this.db.updateTable('iam_users').set(set).where('account_id', '=', accountId).where('id', '=', userId).execute();
      } catch (e) {
        if (isUniqueViolation(e)) throw IamError.conflict(`a user named ${patch.name} already exists`);
        throw e;
      }
    }
    if (patch.enabled === false) await this.revokeUserTokens(userId);
    const u = await this.getUser(accountId, userId);
    if (!u) throw IamError.notFound('user');
    return u;
  }
  async deleteUser(accountId: string, userId: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('iam_access_keys').where('user_id', '=', userId).execute();
      await trx.deleteFrom('iam_tokens').where('user_id', '=', userId).execute();
      await trx.deleteFrom('iam_policy_attachments').where('principal_type', '=', 'user').where('principal_id', '=', userId).execute();
      await trx.deleteFrom('iam_users').where('account_id', '=', accountId).where('id', '=', userId).execute();
    });
  }

  async changePassword(accountId: string, userId: string, newPassword: string, originalPassword: string | null): Promise<void> {
    const user = await this.getUser(accountId, userId);
    if (!user) throw IamError.notFound('user');
    if (originalPassword !== null && !(user.password_hash && (await verifyPassword(user.password_hash, originalPassword))))
      throw new IamError(400, IamCodes.badRequest, 'the original password is wrong');
    await this.setPassword(user, newPassword);
  }

  /** Sets a password after the account's policy and reuse history allow it; unlocks and ends sessions. */
  async setPassword(user: UserRow, newPassword: string): Promise<void> {
    const settings = await this.securitySettings(user.account_id);
    const problems = passwordProblems(newPassword, user.name, settings.password);
    if (settings.password.reuseHistory > 0) {
      const history = await this.db.selectFrom('iam_password_history').select('hash').where('user_id', '=', user.id).orderBy('created_at', 'desc').limit(settings.password.reuseHistory).execute();
      for (const h of history) if (await verifyPassword(h.hash, newPassword)) { problems.push(`must differ from the last ${settings.password.reuseHistory} passwords`); break; }
    }
    if (problems.length) throw new IamError(400, IamCodes.passwordPolicy, `password policy: ${problems.join('; ')}`);
    const hash = await hashPassword(newPassword);
    const t = this.now();
    await this.db.transaction().execute(async (trx) => {
      await trx.updateTable('iam_users').set({ password_hash: hash, password_changed_at: t, failed_logins: 0, first_failed_at: null, locked_until: null }).where('id', '=', user.id).execute();
      await trx.insertInto('iam_password_history').values({ user_id: user.id, hash, created_at: t }).execute();
      await trx.updateTable('iam_tokens').set({ revoked: 1 }).where('user_id', '=', user.id).execute();
      // The temporary keys those sessions made end with them; permanent access keys stay.
      await trx.deleteFrom('iam_access_keys').where('user_id', '=', user.id).where('security_token_hash', 'is not', null).execute();
    });
  }

  /** Operator action: clears a lockout without changing the password. */
  async unlockUser(accountId: string, userId: string): Promise<void> {
    const r = await this.db.updateTable('iam_users').set({ failed_logins: 0, first_failed_at: null, locked_until: null }).where('account_id', '=', accountId).where('id', '=', userId).executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) throw IamError.notFound('user');
  }

  async createGroup(accountId: string, name: string, description: string) {
    const row = { id: newId(), account_id: accountId, name, description, created_at: this.now() };
    try {
      await this.db.insertInto('iam_groups').values(row).execute();
    } catch (e) {
      if (isUniqueViolation(e)) throw IamError.conflict(`a group named ${name} already exists`);
      throw e;
    }
    return row;
  }
  async getGroup(accountId: string, groupId: string) {
    return this.db.selectFrom('iam_groups').selectAll().where('account_id', '=', accountId).where('id', '=', groupId).executeTakeFirst();
  }
  async listGroups(accountId: string, name?: string) {
    let q = this.db.selectFrom('iam_groups').selectAll().where('account_id', '=', accountId);
    if (name !== undefined) q = q.where('name', '=', name);
    return q.orderBy('name').execute();
  }
  async deleteGroup(accountId: string, groupId: string) {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('iam_policy_attachments').where('principal_type', '=', 'group').where('principal_id', '=', groupId).execute();
      await trx.deleteFrom('iam_groups').where('account_id', '=', accountId).where('id', '=', groupId).execute();
    });
  }
  async addUserToGroup(groupId: string, userId: string) {
    await this.db.insertInto('iam_group_members').values({ group_id: groupId, user_id: userId }).onConflict((oc) => oc.columns(['group_id', 'user_id']).doNothing()).execute();
  }
  async removeUserFromGroup(groupId: string, userId: string) {
    await this.db.deleteFrom('iam_group_members').where('group_id', '=', groupId).where('user_id', '=', userId).execute();
  }
  async listGroupUsers(groupId: string) {
    return this.db.selectFrom('iam_users').innerJoin('iam_group_members', 'iam_group_members.user_id', 'iam_users.id').selectAll('iam_users').where('iam_group_members.group_id', '=', groupId).orderBy('iam_users.name').execute();
  }
  async listUserGroups(userId: string) {
    return this.db.selectFrom('iam_groups').innerJoin('iam_group_members', 'iam_group_members.group_id', 'iam_groups.id').selectAll('iam_groups').where('iam_group_members.user_id', '=', userId).orderBy('iam_groups.name').execute();
  }

  // ---------------------------------------------------------------- login and tokens

  async login(req: LoginRequest, methods: string[]): Promise<IssuedToken> {
    const account = await this.getAccountByName(req.accountName);
    const user = account ? await this.getUserByName(account.id, req.userName) : undefined;
    if (!account || !user || !user.password_hash) {
      await burnPasswordCheck(req.password);
      throw IamError.unauthenticated('the user name or password is wrong');
    }
    const t = this.now();
    if (user.locked_until !== null && user.locked_until > t) {
      throw new IamError(401, IamCodes.locked, `the user is locked after too many failed logins; try again after ${new Date(user.locked_until).toISOString()} or ask an administrator to unlock it`);
    }
    if (!(await verifyPassword(user.password_hash, req.password))) {
      await this.recordFailedLogin(user, account.id);
      throw IamError.unauthenticated('the user name or password is wrong');
    }
    if (!user.enabled) throw IamError.unauthenticated('the user is disabled');
    if (account.status !== 'active' && account.status !== 'deregistering') throw new IamError(403, IamCodes.accountFrozen, 'the account is frozen');
    let mfa = false;
    if (user.mfa_secret) {
      if (!req.totp || (req.totp.userId !== user.id && req.totp.userId !== user.name)) {
        throw new IamError(401, IamCodes.mfaRequired, 'MFA is enabled for this user: authenticate with the methods ["password","totp"] and a passcode');
      }
      await this.consumeTotp(user, req.totp.passcode);
      mfa = true;
    }
    await this.db.updateTable('iam_users').set({ failed_logins: 0, first_failed_at: null, locked_until: null }).where('id', '=', user.id).execute();
    const scope = await this.resolveScope(account.id, req.scope);
    return this.issueToken({ account, user, project: scope, agency: null, methods, mfa, ttlMs: this.opts.tokenTtlSeconds * 1000 });
  }

  /** Counts a failure in the database (so every node agrees) and locks at the threshold. */
  private async recordFailedLogin(user: UserRow, accountId: string): Promise<void> {
    const s = await this.securitySettings(accountId);
    const t = this.now();
    const windowStart = t - s.lockoutWindowMinutes * 60_000;
    const row = await this.db
      .updateTable('iam_users')
      .set({
        failed_logins: sql<number>`case when first_failed_at is null or first_failed_at < ${windowStart} then 1 else failed_logins + 1 end`,
        first_failed_at: sql<number>`case when first_failed_at is null or first_failed_at < ${windowStart} then ${t} else first_failed_at end`,
      })
      .where('id', '=', user.id)
      .returning(['failed_logins'])
      .executeTakeFirst();
    if (row && row.failed_logins >= s.lockoutThreshold) {
      await this.db.updateTable('iam_users').set({ locked_until: t + s.lockoutMinutes * 60_000, failed_logins: 0, first_failed_at: null }).where('id', '=', user.id).execute();
    }
  }

  private async consumeTotp(user: UserRow, passcode: string): Promise<void> {
    const secret = this.secrets.open(user.mfa_secret!, `mfa:${user.id}`).toString();
    const step = checkTotp(secret, passcode, this.now());
    if (step === null) {
      await this.recordFailedLogin(user, user.account_id);
      throw new IamError(401, IamCodes.mfaRequired, 'the MFA passcode is wrong');
    }
    // A code is good once: the stored step only moves forward, atomically, so two nodes cannot both accept it.
    const r = await this.db
      .updateTable('iam_users')
      .set({ mfa_last_step: step })
      .where('id', '=', user.id)
      .where((eb) => eb.or([eb('mfa_last_step', 'is', null), eb('mfa_last_step', '<', step)]))
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) throw new IamError(401, IamCodes.mfaRequired, 'the MFA passcode was already used');
  }

  private async resolveScope(accountId: string, scope: LoginRequest['scope']): Promise<ProjectRow | null> {
    if (scope.domain || (!scope.projectId && !scope.projectName)) return null;
    let q = this.db.selectFrom('iam_projects').selectAll().where('account_id', '=', accountId);
    q = scope.projectId ? q.where('id', '=', scope.projectId) : q.where('name', '=', scope.projectName!);
    const p = await q.executeTakeFirst();
    if (!p) throw IamError.badRequest('the project in the scope does not exist in this account');
    return p;
  }

  private async issueToken(a: {
    account: AccountRow;
    user: UserRow;
    project: ProjectRow | null;
    agency: { id: string; name: string; sourceAccount: AccountRow } | null;
    methods: string[];
    mfa: boolean;
    ttlMs: number;
  }): Promise<IssuedToken> {
    const token = `CUS1${randomBytes(32).toString('base64url')}`;
    const issuedAt = this.now();
    const expiresAt = issuedAt + a.ttlMs;
    await this.db
      .insertInto('iam_tokens')
      .values({
        token_hash: sha256Hex(token), account_id: a.account.id, user_id: a.user.id, project_id: a.project?.id ?? null,
        agency_id: a.agency?.id ?? null, methods: a.methods.join(','), mfa: a.mfa ? 1 : 0, issued_at: issuedAt, expires_at: expiresAt, revoked: 0,
      })
      .execute();
    return {
      token, methods: a.methods, issuedAt, expiresAt,
      principal: {
        accountId: a.account.id, accountName: a.account.name, userId: a.user.id, userName: a.user.name,
        projectId: a.project?.id ?? null, projectName: a.project?.name ?? null, region: a.project?.region ?? null,
        agency: a.agency ? { id: a.agency.id, name: a.agency.name, sourceAccountId: a.agency.sourceAccount.id, sourceAccountName: a.agency.sourceAccount.name } : null,
        accessKeyId: null, method: 'token', mfa: a.mfa, expiresAt,
      },
    };
  }

  /** The `token` method: a new token for another scope, never outliving or out-ranking the one presented. */
  async rescopeToken(current: Principal, scope: LoginRequest['scope']): Promise<IssuedToken> {
    if (current.agency) throw IamError.forbidden('an agency token cannot be re-scoped; assume the agency again');
    const account = (await this.getAccount(current.accountId))!;
    const user = await this.getUser(current.accountId, current.userId);
    if (!user) throw IamError.unauthenticated();
    const project = await this.resolveScope(account.id, scope);
    const ttl = Math.max(0, (current.expiresAt ?? this.now()) - this.now());
    return this.issueToken({ account, user, project, agency: null, methods: ['token'], mfa: current.mfa, ttlMs: ttl });
  }

  async authenticateToken(token: string): Promise<Principal> {
    if (token.length < 10 || token.length > 4096) throw IamError.unauthenticated('the token is invalid');
    const stale = this.cache.ensureFresh();
    if (stale) await stale;
    // Keyed by the token's hash, never the token.
    const hash = sha256Hex(token);
    const row =
      this.tokens.get(hash) ??
      (await this.tokens.load(hash, async () => deepFreeze(await this.db.selectFrom('iam_tokens').selectAll().where('token_hash', '=', hash).executeTakeFirst())));
    const t = this.now();
    if (!row || row.revoked) throw IamError.unauthenticated('the token is invalid or revoked');
    if (row.expires_at <= t) throw IamError.unauthenticated('the token has expired');
    return this.principalFor({ accountId: row.account_id, userId: row.user_id, projectId: row.project_id, agencyId: row.agency_id, mfa: row.mfa === 1, accessKeyId: null, method: 'token', expiresAt: row.expires_at });
  }

  /** Builds the principal and re-checks everything that can be withdrawn after issue: user, account, agency. */
  private async principalFor(a: PrincipalSource): Promise<Principal> {
    const key = [a.accountId, a.userId, a.projectId ?? '', a.agencyId ?? '', a.mfa ? 1 : 0, a.accessKeyId ?? '', a.method].join('|');
    const base = this.principals.get(key) ?? (await this.principals.load(key, async () => deepFreeze(await this.resolvePrincipal(a))))!;
    if (base.agencyExpiresAt !== null && base.agencyExpiresAt <= this.now()) throw IamError.unauthenticated('the agency was revoked or has expired');
    return { ...base.principal, expiresAt: a.expiresAt };
  }
  private async resolvePrincipal(a: PrincipalSource): Promise<{ principal: Principal; agencyExpiresAt: number | null }> {
    const account = await this.getAccount(a.accountId);
    if (!account) throw IamError.unauthenticated();
    let agency: Principal['agency'] = null;
    let agencyExpiresAt: number | null = null;
    let user: UserRow | undefined;
    if (a.agencyId) {
      const ag = await this.db.selectFrom('iam_agencies').selectAll().where('id', '=', a.agencyId).where('account_id', '=', a.accountId).executeTakeFirst();
      if (!ag || (ag.expires_at !== null && ag.expires_at <= this.now())) throw IamError.unauthenticated('the agency was revoked or has expired');
      agencyExpiresAt = ag.expires_at;
      const source = await this.getAccount(ag.trust_account_id);
      user = source ? await this.getUser(source.id, a.userId) : undefined;
      if (!source || !user || source.status !== 'active') throw IamError.unauthenticated();
      agency = { id: ag.id, name: ag.name, sourceAccountId: source.id, sourceAccountName: source.name };
    } else {
      user = await this.getUser(a.accountId, a.userId);
      if (!user) throw IamError.unauthenticated();
    }
    if (!user.enabled) throw IamError.unauthenticated('the user is disabled');
    if (account.status !== 'active' && account.status !== 'deregistering') throw new IamError(403, IamCodes.accountFrozen, 'the account is frozen');
    const project = a.projectId ? await this.getProject(a.accountId, a.projectId) : undefined;
    return {
      principal: {
        accountId: account.id, accountName: account.name, userId: user.id, userName: user.name,
        projectId: project?.id ?? null, projectName: project?.name ?? null, region: project?.region ?? null,
        agency, accessKeyId: a.accessKeyId, method: a.method, mfa: a.mfa, expiresAt: a.expiresAt,
        ...(account.status === 'deregistering' ? { frozen: true } : {}),
      },
      agencyExpiresAt,
    };
  }

  async revokeToken(token: string): Promise<boolean> {
    const r = await this.db.updateTable('iam_tokens').set({ revoked: 1 }).where('token_hash', '=', sha256Hex(token)).executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }
  async revokeUserTokens(userId: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.updateTable('iam_tokens').set({ revoked: 1 }).where('user_id', '=', userId).execute();
      await trx.deleteFrom('iam_access_keys').where('user_id', '=', userId).where('security_token_hash', 'is not', null).execute();
    });
  }
  /** The principal a token stands for, if it is still good; for GET /v3/auth/tokens. */
  async inspectToken(token: string): Promise<{ principal: Principal; issuedAt: number; methods: string[] }> {
    const principal = await this.authenticateToken(token);
    const row = await this.db.selectFrom('iam_tokens').select(['issued_at', 'methods']).where('token_hash', '=', sha256Hex(token)).executeTakeFirstOrThrow();
    return { principal, issuedAt: row.issued_at, methods: row.methods.split(',') };
  }

  // ---------------------------------------------------------------- access keys

  async createAccessKey(accountId: string, userId: string, description: string): Promise<{ row: AccessKeyRow; secret: string }> {
    const existing = await this.db.selectFrom('iam_access_keys').select(({ fn }) => fn.countAll<number>().as('n')).where('user_id', '=', userId).where('expires_at', 'is', null).executeTakeFirstOrThrow();
    if (Number(existing.n) >= 2) throw IamError.badRequest('a user can have at most 2 permanent access keys; delete one first');
    const access = newAccessKeyId();
    const secret = randomBytes(30).toString('base64').replace(/[+/=]/g, '').slice(0, 40);
    const row: AccessKeyRow = {
      access_key: access, account_id: accountId, user_id: userId, secret: this.secrets.seal(secret, `ak:${access}`), status: 'active',
      description, project_id: null, agency_id: null, security_token_hash: null, mfa: 0, expires_at: null, last_used_at: null, created_at: this.now(),
    };
    await this.db.insertInto('iam_access_keys').values(row).execute();
    return { row, secret };
  }
  async listAccessKeys(accountId: string, userId?: string): Promise<AccessKeyRow[]> {
    let q = this.db.selectFrom('iam_access_keys').selectAll().where('account_id', '=', accountId).where('expires_at', 'is', null);
    if (userId) q = q.where('user_id', '=', userId);
    return q.orderBy('created_at').execute();
  }
  async getAccessKey(accountId: string, accessKey: string): Promise<AccessKeyRow | undefined> {
    return this.db.selectFrom('iam_access_keys').selectAll().where('account_id', '=', accountId).where('access_key', '=', accessKey).where('expires_at', 'is', null).executeTakeFirst();
  }
  async updateAccessKey(accountId: string, accessKey: string, patch: { status?: 'active' | 'inactive'; description?: string }): Promise<AccessKeyRow> {
    const set: Partial<AccessKeyRow> = {};
    if (patch.status) set.status = patch.status;
    if (patch.description !== undefined) set.description = patch.description;
    if (Object.keys(set).length) await this.db.updateTable('iam_access_keys').set(set).where('account_id', '=', accountId).where('access_key', '=', accessKey).execute();
    const row = await this.getAccessKey(accountId, accessKey);
    if (!row) throw IamError.notFound('access key');
    return row;
  }
  async deleteAccessKey(accountId: string, accessKey: string): Promise<void> {
    await this.db.deleteFrom('iam_access_keys').where('account_id', '=', accountId).where('access_key', '=', accessKey).execute();
  }

  /** Temporary AK/SK + security token, for the caller itself or for an agency session. */
  async createTemporaryCredentials(p: Principal, durationSeconds: number): Promise<{ access: string; secret: string; securityToken: string; expiresAt: number }> {
    const access = newAccessKeyId();
    const secret = randomBytes(30).toString('base64').replace(/[+/=]/g, '').slice(0, 40);
    const securityToken = `CUSST${randomBytes(48).toString('base64url')}`;
    // Never longer than what the caller authenticated with lasts (its token, its agency session, its
    // own temporary key), so temporary credentials cannot be renewed from themselves for ever.
    const expiresAt = Math.min(this.now() + durationSeconds * 1000, p.expiresAt ?? Number.POSITIVE_INFINITY);
    await this.db
      .insertInto('iam_access_keys')
      .values({
        access_key: access, account_id: p.accountId, user_id: p.userId, secret: this.secrets.seal(secret, `ak:${access}`), status: 'active',
        description: 'temporary', project_id: p.projectId, agency_id: p.agency?.id ?? null, security_token_hash: sha256Hex(securityToken),
        mfa: p.mfa ? 1 : 0, expires_at: expiresAt, last_used_at: null, created_at: this.now(),
      })
      .execute();
    return { access, secret, securityToken, expiresAt };
  }

  /**
   * Verifies an AK/SK-signed request (Huawei SDK-HMAC-SHA256 or AWS SigV4, header or presigned).
   * Returns null when the request carries no signature. A header-signed request is good once:
   * its signature is recorded in the shared replay cache until it would be too old anyway.
   */
  async authenticateSigned(req: SignedRequestInput): Promise<Principal | null> {
    return (await this.authenticateSignedRequest(req))?.principal ?? null;
  }

  /**
   * As `authenticateSigned`, and for a header-signed S3 upload that declares signed streaming, the
   * signer its body's chunk signatures are checked with (it holds the signing key: never log it).
   */
  async authenticateSignedRequest(req: SignedRequestInput): Promise<{ principal: Principal; chunkSigner: ChunkSigner | null } | null> {
    let parsed;
    try {
      parsed = parseSignature(req);
    } catch (e) {
      if (e instanceof SignatureError) throw new IamError(401, IamCodes.signature, `${e.code}: ${e.message}`);
      throw e;
    }
    if (!parsed) return null;
    const accessKeyId = parsed.accessKeyId;
    const stale = this.cache.ensureFresh();
    if (stale) await stale;
    // The unsealed secret stays in this process's memory only, until the key changes or the entry expires.
    const entry =
      this.accessKeys.get(accessKeyId) ??
      (await this.accessKeys.load(accessKeyId, async () => {
        const row = await this.db.selectFrom('iam_access_keys').selectAll().where('access_key', '=', accessKeyId).executeTakeFirst();
        return row ? Object.freeze({ key: Object.freeze(row), secret: this.secrets.open(row.secret, `ak:${row.access_key}`).toString() }) : undefined;
      }));
    const key = entry?.key;
    const t = this.now();
    if (!entry || !key || key.status !== 'active' || (key.expires_at !== null && key.expires_at <= t)) {
      throw new IamError(401, IamCodes.signature, 'InvalidAccessKeyId: the access key does not exist or is not active');
    }
    if (key.security_token_hash !== null) {
      if (!parsed.securityToken || !safeEqual(sha256Hex(parsed.securityToken), key.security_token_hash))
        throw new IamError(401, IamCodes.signature, 'InvalidToken: a temporary access key needs its security token');
    }
    let chunkSigner: ChunkSigner | null;
    try {
      chunkSigner = verifySignature(req, parsed, entry.secret, new Date(t), this.opts.signatureWindowSeconds);
    } catch (e) {
      if (e instanceof SignatureError) throw new IamError(e.code === 'RequestTimeTooSkewed' || e.code === 'RequestExpired' ? 403 : 401, IamCodes.signature, `${e.code}: ${e.message}`);
      throw e;
    }
    // V2/OBS signatures carry no nonce: two identical reads within a second sign the same. They are
    // single-use for changes only; a repeated read is harmless.
    const replayable = parsed.scheme === 'AWS4-HMAC-SHA256-QUERY' || (isV2Scheme(parsed.scheme) && (req.method === 'GET' || req.method === 'HEAD'));
    if (!replayable) {
      // Presigned URLs are meant to be reused until they expire; every other signature is single-use.
      const windowMs = this.opts.signatureWindowSeconds * 1000;
      // The entry's key starts with its expiry time, so inserts land at the end of the index (a few
      // pages per commit) instead of one random page each; a signature always has the same expiry.
      const expiresAt = parsed.timestamp.getTime() + windowMs;
      const entry = `${Math.max(0, expiresAt).toString(16).padStart(12, '0')}${sha256Hex(`${parsed.accessKeyId}:${parsed.signature}`).slice(0, 52)}`;
      const fresh = await this.recordSignature(entry, expiresAt);
      if (!fresh) throw new IamError(401, IamCodes.signature, 'ReplayedRequest: this signed request was already received');
    }
    const principal = await this.principalFor({
      accountId: key.account_id, userId: key.user_id, projectId: key.project_id, agencyId: key.agency_id, mfa: key.mfa === 1,
      accessKeyId: key.access_key, method: 'aksk', expiresAt: key.expires_at,
    });
    return { principal, chunkSigner };
  }

  private replayQueue: { hash: string; expiresAt: number; resolve: (fresh: boolean) => void; reject: (e: unknown) => void }[] = [];
  private replayFlushing: Promise<void> | null = null;

  /**
   * Records a signature in the shared replay cache; true when no node has seen it before. Signatures
   * arriving together share one INSERT … ON CONFLICT DO NOTHING RETURNING, so the database decides,
   * and within one batch the first occurrence wins.
   */
  private recordSignature(hash: string, expiresAt: number): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.replayQueue.push({ hash, expiresAt, resolve, reject });
      this.replayFlushing ??= new Promise<void>((r) => setImmediate(r)).then(() => this.flushReplays());
    });
  }
  private async flushReplays(): Promise<void> {
    while (this.replayQueue.length > 0) {
      const batch = this.replayQueue.splice(0, 500);
      try {
        const unique = new Map<string, number>();
        for (const b of batch) if (!unique.has(b.hash)) unique.set(b.hash, b.expiresAt);
        const params: (string | number)[] = [];
        for (const [hash, expiresAt] of unique) params.push(hash, expiresAt);
        const text = multiRowInsertSql(this.numberedParams, 'iam_replay_cache', ['signature_hash', 'expires_at'], unique.size, 'on conflict (signature_hash) do nothing returning signature_hash');
        const inserted = await this.db.executeQuery<{ signature_hash: string }>(CompiledQuery.raw(text, params));
        const fresh = new Set(inserted.rows.map((r) => r.signature_hash));
        for (const b of batch) {
          const first = fresh.delete(b.hash);
          b.resolve(first);
        }
      } catch (e) {
        for (const b of batch) b.reject(e);
      }
    }
    this.replayFlushing = null;
  }

  /** Housekeeping any node may run: forget expired replay entries, tokens and temporary keys. */
  async purgeExpired(): Promise<void> {
    const t = this.now();
    await this.db.deleteFrom('iam_replay_cache').where('expires_at', '<', t).execute();
    await this.db.deleteFrom('iam_tokens').where('expires_at', '<', t - 86_400_000).execute();
    await this.db.deleteFrom('iam_access_keys').where('expires_at', 'is not', null).where('expires_at', '<', t).execute();
  }

  // ---------------------------------------------------------------- MFA

  async createVirtualMfa(accountId: string, userId: string): Promise<{ serialNumber: string; secret: string; uri: string }> {
    const user = await this.getUser(accountId, userId);
    const account = await this.getAccount(accountId);
    if (!user || !account) throw IamError.notFound('user');
    if (user.mfa_secret) throw IamError.conflict('the user already has an MFA device; unbind it first');
    const secret = newTotpSecret();
    await this.db.updateTable('iam_users').set({ mfa_pending_secret: this.secrets.seal(secret, `mfa-pending:${userId}`) }).where('id', '=', userId).execute();
    return { serialNumber: mfaSerial(userId), secret, uri: totpUri(secret, account.name, user.name) };
  }

  /** Binding needs two consecutive codes, proving the device holds the secret and its clock is right. */
  async bindMfa(accountId: string, userId: string, serial: string, first: string, second: string): Promise<void> {
    const user = await this.getUser(accountId, userId);
    if (!user || !user.mfa_pending_secret || serial !== mfaSerial(userId)) throw IamError.notFound('virtual MFA device');
    const secret = this.secrets.open(user.mfa_pending_secret, `mfa-pending:${userId}`).toString();
    const s1 = checkTotp(secret, first, this.now());
    const s2 = checkTotp(secret, second, this.now());
    if (s1 === null || s2 === null || s2 !== s1 + 1) throw IamError.badRequest('the two authentication codes must be consecutive valid codes from the device');
    await this.db.updateTable('iam_users').set({ mfa_secret: this.secrets.seal(secret, `mfa:${userId}`), mfa_pending_secret: null, mfa_last_step: s2 }).where('id', '=', userId).execute();
  }

  async unbindMfa(accountId: string, userId: string, serial: string, code: string): Promise<void> {
    const user = await this.getUser(accountId, userId);
    if (!user || !user.mfa_secret || serial !== mfaSerial(userId)) throw IamError.notFound('MFA device');
    await this.consumeTotp(user, code);
    await this.db.updateTable('iam_users').set({ mfa_secret: null, mfa_last_step: null }).where('id', '=', userId).execute();
  }

  // ---------------------------------------------------------------- policies

  async createPolicy(accountId: string, input: { name: string; description: string; document: unknown }) {
    const v = validatePolicyDocument(input.document);
    if (!v.ok) throw IamError.badRequest(`invalid policy: ${v.errors.join('; ')}`);
    const t = this.now();
    const row = { id: newId(), account_id: accountId, name: input.name, description: input.description, document: JSON.stringify(v.document), created_at: t, updated_at: t };
    await this.db.insertInto('iam_policies').values(row).execute();
    return row;
  }
  async getPolicy(accountId: string, policyId: string) {
    return this.db.selectFrom('iam_policies').selectAll().where('id', '=', policyId).where((eb) => eb.or([eb('account_id', '=', accountId), eb('account_id', 'is', null)])).executeTakeFirst();
  }
  async listPolicies(accountId: string) {
    return this.db.selectFrom('iam_policies').selectAll().where((eb) => eb.or([eb('account_id', '=', accountId), eb('account_id', 'is', null)])).orderBy('name').execute();
  }
  async updatePolicy(accountId: string, policyId: string, patch: { name?: string; description?: string; document?: unknown }) {
    const set: Record<string, unknown> = { updated_at: this.now() };
    if (patch.document !== undefined) {
      const v = validatePolicyDocument(patch.document);
      if (!v.ok) throw IamError.badRequest(`invalid policy: ${v.errors.join('; ')}`);
      set.document = JSON.stringify(v.document);
    }
    if (patch.name !== undefined) set.name = patch.name;
    if (patch.description !== undefined) set.description = patch.description;
    await this.db.updateTable('iam_policies').set(set).where('account_id', '=', accountId).where('id', '=', policyId).execute();
    return this.getPolicy(accountId, policyId);
  }
  async deletePolicy(accountId: string, policyId: string) {
    await this.db.deleteFrom('iam_policies').where('account_id', '=', accountId).where('id', '=', policyId).execute();
  }
  async attachPolicy(accountId: string, policyId: string, principalType: 'user' | 'group' | 'agency', principalId: string, projectId: string | null) {
    await this.db
      .insertInto('iam_policy_attachments')
      .values({ account_id: accountId, policy_id: policyId, principal_type: principalType, principal_id: principalId, project_id: projectId ?? '', created_at: this.now() })
      .onConflict((oc) => oc.columns(['policy_id', 'principal_type', 'principal_id', 'project_id']).doNothing())
      .execute();
  }
  async detachPolicy(accountId: string, policyId: string, principalType: 'user' | 'group' | 'agency', principalId: string, projectId: string | null): Promise<boolean> {
    const r = await this.db.deleteFrom('iam_policy_attachments').where('account_id', '=', accountId).where('policy_id', '=', policyId).where('principal_type', '=', principalType).where('principal_id', '=', principalId).where('project_id', '=', projectId ?? '').executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }
  async listAttachedPolicies(accountId: string, principalType: 'user' | 'group' | 'agency', principalId: string, projectId: string | null) {
    return this.db
      .selectFrom('iam_policies')
      .innerJoin('iam_policy_attachments', 'iam_policy_attachments.policy_id', 'iam_policies.id')
      .selectAll('iam_policies')
      .where('iam_policy_attachments.account_id', '=', accountId)
      .where('iam_policy_attachments.principal_type', '=', principalType)
      .where('iam_policy_attachments.principal_id', '=', principalId)
      .where('iam_policy_attachments.project_id', '=', projectId ?? '')
      .orderBy('iam_policies.name')
      .execute();
  }

  /** The policies in force for a principal in a project: its own, its groups', or only its agency's. */
  private async effectivePolicies(p: Principal, projectId: string | null): Promise<PolicySet> {
    const key = `${p.accountId}|${p.userId}|${p.agency?.id ?? ''}|${projectId ?? ''}`;
    return this.policySets.get(key) ?? (await this.policySets.load(key, () => this.loadEffectivePolicies(p, projectId)))!;
  }
  private async loadEffectivePolicies(p: Principal, projectId: string | null): Promise<PolicySet> {
    const projects = projectId ? ['', projectId] : [''];
    let q = this.db
      .selectFrom('iam_policy_attachments')
      .innerJoin('iam_policies', 'iam_policies.id', 'iam_policy_attachments.policy_id')
      .select(['iam_policies.id', 'iam_policies.document'])
      .where('iam_policy_attachments.account_id', '=', p.accountId)
      .where('iam_policy_attachments.project_id', 'in', projects);
    if (p.agency) {
      q = q.where('iam_policy_attachments.principal_type', '=', 'agency').where('iam_policy_attachments.principal_id', '=', p.agency.id);
    } else {
      q = q.where((eb) =>
        eb.or([
          eb.and([eb('iam_policy_attachments.principal_type', '=', 'user'), eb('iam_policy_attachments.principal_id', '=', p.userId)]),
          eb.and([
            eb('iam_policy_attachments.principal_type', '=', 'group'),
            eb('iam_policy_attachments.principal_id', 'in', eb.selectFrom('iam_group_members').select('group_id').where('user_id', '=', p.userId)),
          ]),
        ]),
      );
    }
    const rows = await q.execute();
    let conditionFree = true;
    const policies = rows.map((r) => {
      const parsed = this.parsedPolicy(r.id, r.document);
      conditionFree &&= parsed.conditionFree;
      return Object.freeze({ id: r.id, document: parsed.document });
    });
    return { policies: Object.freeze(policies), conditionFree, decisions: new Map() };
  }

  /** A policy document parsed once per stored text (a changed document is a different text). */
  private parsedPolicy(id: string, text: string): { document: PolicyDocument; conditionFree: boolean } {
    const hit = this.parsedPolicies.get(id);
    if (hit && hit.text === text) return hit;
    const document = deepFreeze(JSON.parse(text) as PolicyDocument);
    const statements: unknown[] = Array.isArray(document?.Statement) ? document.Statement : [];
    const conditionFree = statements.every((st) => {
      const c = (st as { Condition?: unknown } | null)?.Condition;
      return c === undefined || c === null || (typeof c === 'object' && Object.keys(c).length === 0);
    });
    const entry = { text, document, conditionFree };
    this.parsedPolicies.delete(id);
    if (this.parsedPolicies.size >= this.cache.opts.maxEntries) this.parsedPolicies.delete(this.parsedPolicies.keys().next().value as string);
    this.parsedPolicies.set(id, entry);
    return entry;
  }

  /**
   * The one authorization decision. The caller has already made sure the resource belongs to the
   * principal's account (another tenant's resource is answered with 404 before this). Identity
   * policies (the principal's own, its groups') and, when the resource carries one, its
   * resource-based policy: an explicit Deny in either wins, then an Allow in either, else the
   * default deny.
   */
  async authorize(p: Principal, action: string, resource: ResourceRef | null, ctx: AuthzContext): Promise<Decision> {
    if (isAnonymous(p)) return { effect: 'implicit-deny' };
    if (resource && resource.accountId !== p.accountId) return { effect: 'implicit-deny' };
    if (resource?.self && !p.agency && resource.type === 'user' && resource.id === p.userId && SELF_SERVICE.has(action)) {
      return { effect: 'allow' };
    }
    const projectId = resource?.projectId ?? p.projectId;
    const identity = await this.identityDecision(p, action, resource, ctx, projectId);
    const rp = resource?.resourcePolicy;
    if (!rp || identity.effect === 'explicit-deny') return identity;
    const statements = rp.statements.filter((s) => s.principals.some((m) => principalMatches(m, p))).map((s) => s.statement);
    if (!statements.length) return identity;
    const fromResource = evaluatePolicies([{ id: rp.id, document: { Version: '1.1', Statement: statements } }], {
      action, resource: resourceUrn(resource!), conditions: this.conditionsOf(p, resource, ctx, projectId),
    });
    if (fromResource.effect === 'explicit-deny') return fromResource;
    return identity.effect === 'allow' ? identity : fromResource.effect === 'allow' ? fromResource : identity;
  }
  /**
   * A request without credentials: allowed only by the statements of the resource's policy that name
   * Principal "*" (an explicit deny among them wins), with the request's own conditions (source IP,
   * transport, time, region, the resource's tags; no identity, so conditions on one do not match). A
   * resource of an account that is not active (frozen for deregistration, or gone) is out of reach.
   */
  async authorizeAnonymous(action: string, resource: ResourceRef, ctx: AuthzContext): Promise<Decision> {
    const rp = resource.resourcePolicy;
    if (!rp) return { effect: 'implicit-deny' };
    const statements = rp.statements.filter((s) => s.principals.some((m) => m.kind === 'any')).map((s) => s.statement);
    if (!statements.length) return { effect: 'implicit-deny' };
    const account = await this.getAccount(resource.accountId);
    if (!account || account.status !== 'active') return { effect: 'implicit-deny' };
    return evaluatePolicies([{ id: rp.id, document: { Version: '1.1', Statement: statements } }], {
      action, resource: resourceUrn(resource), conditions: this.conditionsOf(null, resource, ctx, resource.projectId),
    });
  }

  private async identityDecision(p: Principal, action: string, resource: ResourceRef | null, ctx: AuthzContext, projectId: string | null | undefined): Promise<Decision> {
    const set = await this.effectivePolicies(p, projectId ?? null);
    const urn = resource ? resourceUrn(resource) : null;
    if (set.conditionFree) {
      // Without conditions the request context cannot change the outcome: the decision depends on the
      // action and the resource alone, so it is kept with the policy set (and forgotten with it).
      const memoKey = urn === null ? `${action}\u0001` : `${action}\u0000${urn}`;
      let decision = set.decisions.get(memoKey);
      if (!decision) {
        decision = deepFreeze(evaluatePolicies(set.policies, { action, resource: urn, conditions: {} }));
        if (set.decisions.size >= MAX_DECISIONS_PER_SET) set.decisions.clear();
        set.decisions.set(memoKey, decision);
      }
      return decision;
    }
    return evaluatePolicies(set.policies, { action, resource: urn, conditions: this.conditionsOf(p, resource, ctx, projectId) });
  }

  /** The condition keys of a request; `p` null for one without credentials (no identity keys, so conditions on one do not match). */
  private conditionsOf(p: Principal | null, resource: ResourceRef | null, ctx: AuthzContext, projectId: string | null | undefined): Record<string, ConditionValue> {
    const conditions: Record<string, ConditionValue> = {
      'g:SourceIp': ctx.sourceIp,
      'g:SecureTransport': ctx.secure,
      'g:MFAPresent': p?.mfa ?? false,
      'g:CurrentTime': new Date(this.now()).toISOString(),
      'g:RequestedRegion': resource?.region ?? p?.region ?? undefined,
    };
    if (p) {
      conditions['g:UserId'] = p.userId;
      conditions['g:UserName'] = p.userName;
      conditions['g:DomainId'] = p.accountId;
      conditions['g:DomainName'] = p.accountName;
      conditions['g:ProjectId'] = projectId ?? undefined;
      conditions['g:ProjectName'] = p.projectName ?? undefined;
      conditions['g:AgencyName'] = p.agency?.name;
    }
    Object.assign(conditions, ctx.extraConditions);
    for (const [k, v] of Object.entries(resource?.tags ?? {})) conditions[`g:ResourceTag/${k}`] = v;
    return conditions;
  }

  // ---------------------------------------------------------------- agencies

  async createAgency(accountId: string, input: { name: string; trustAccountName: string; description: string; maxSessionSeconds: number; expiresAt: number | null }) {
    const trust = await this.getAccountByName(input.trustAccountName);
    if (!trust) throw IamError.badRequest('the trusted account does not exist');
    if (trust.id === accountId) throw IamError.badRequest('an agency delegates to another account, not to its own');
    const row = { id: newId(), account_id: accountId, name: input.name, trust_account_id: trust.id, description: input.description, max_session_seconds: input.maxSessionSeconds, expires_at: input.expiresAt, created_at: this.now() };
    try {
      await this.db.insertInto('iam_agencies').values(row).execute();
    } catch (e) {
      if (isUniqueViolation(e)) throw IamError.conflict(`an agency named ${input.name} already exists`);
      throw e;
    }
    return { ...row, trust_account_name: trust.name };
  }
  async getAgency(accountId: string, agencyId: string) {
    return this.db.selectFrom('iam_agencies').selectAll().where('account_id', '=', accountId).where('id', '=', agencyId).executeTakeFirst();
  }
  async listAgencies(accountId: string) {
    return this.db.selectFrom('iam_agencies').selectAll().where('account_id', '=', accountId).orderBy('name').execute();
  }
  /** Revocation: deleting the agency ends every token and temporary key derived from it at once. */
  async deleteAgency(accountId: string, agencyId: string) {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('iam_policy_attachments').where('principal_type', '=', 'agency').where('principal_id', '=', agencyId).execute();
      await trx.deleteFrom('iam_tokens').where('agency_id', '=', agencyId).execute();
      await trx.deleteFrom('iam_access_keys').where('agency_id', '=', agencyId).execute();
      await trx.deleteFrom('iam_agencies').where('account_id', '=', accountId).where('id', '=', agencyId).execute();
    });
  }

  /**
   * A user of the trusted account assumes an agency of the delegating account. Unknown account,
   * unknown agency and an agency that does not trust the caller's account all look the same (404).
   */
  async findAssumableAgency(caller: Principal, accountName: string, agencyName: string) {
    const account = await this.getAccountByName(accountName);
    const agency = account ? await this.db.selectFrom('iam_agencies').selectAll().where('account_id', '=', account.id).where('name', '=', agencyName).executeTakeFirst() : undefined;
    if (!account || !agency || agency.trust_account_id !== caller.accountId || (agency.expires_at !== null && agency.expires_at <= this.now())) throw IamError.notFound('agency');
    return { account, agency };
  }

  async assumeAgency(caller: Principal, accountName: string, agencyName: string, durationSeconds: number, projectName: string | null): Promise<IssuedToken> {
    if (caller.agency) throw IamError.forbidden('an agency session cannot assume another agency');
    const { account, agency } = await this.findAssumableAgency(caller, accountName, agencyName);
    if (durationSeconds > agency.max_session_seconds) throw IamError.badRequest(`duration_seconds may be at most ${agency.max_session_seconds} for this agency`);
    const user = await this.getUser(caller.accountId, caller.userId);
    const source = await this.getAccount(caller.accountId);
    if (!user || !source) throw IamError.unauthenticated();
    const project = projectName ? await this.resolveScope(account.id, { projectName }) : null;
    return this.issueToken({ account, user, project, agency: { id: agency.id, name: agency.name, sourceAccount: source }, methods: ['assume_role'], mfa: caller.mfa, ttlMs: durationSeconds * 1000 });
  }
}

export function mfaSerial(userId: string): string {
  return `iam/mfa/${userId}`;
}

/** Whether a resource-based policy's principal names the caller. */
function principalMatches(m: PrincipalPattern, p: Principal): boolean {
  switch (m.kind) {
    case 'any':
      return true;
    case 'account':
      return m.accountId === p.accountId;
    case 'user':
      return !p.agency && m.userId === p.userId;
    case 'agency':
      return p.agency?.name === m.agencyName;
  }
}

/** Huawei-style resource URN: service:region:account:type:id. */
export function resourceUrn(r: ResourceRef): string {
  return `${r.service}:${r.region ?? ''}:${r.accountId}:${r.type}:${r.id}`;
}

export type { IamTables };

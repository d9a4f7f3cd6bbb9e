/**
 * AWS KMS's JSON protocol: `POST /` with `X-Amz-Target: TrentService.<Operation>`, SigV4-signed with
 * service `kms`, blobs in base64, times in epoch seconds, errors as `{"__type","message"}`. Keys live
 * in the default project of the region the request is signed for, so a key made through the Huawei
 * API of that project is the same key here.
 */
import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { IamService, Principal } from '../../iam/iam.js';
import { principalOf, type RouteDef, type RouteMeta } from '../../server/route.js';
import { KmsError } from '../errors.js';
import {
  algorithmsFor, GRANT_OPERATIONS, isSymmetric, MAX_PENDING_DAYS, MIN_PENDING_DAYS,
  type EncryptionAlgorithm, type GrantOperation, type KeyScope, type KeySpec, type KmsService,
} from '../kms.js';
import type { KeyRow } from '../store.js';
import { checkGrantSubset, ciphertextOf, encryptionContext, fromBase64, keyOf, keyRef, keyResource, ProjectLookup, projectResource, rememberScope, scopeOf, scopeOfProject } from './common.js';

const S = { additionalProperties: true } as const;
const KeyRef = Type.String({ minLength: 1, maxLength: 2048 });
const Ctx = Type.Optional(Type.Record(Type.String(), Type.String()));
/** Blobs carry no length bounds in the schema (see the Huawei dialect): the body limit and the service bound them. */
const Blob = (_max: number) => Type.String();
const GrantTokens = Type.Optional(Type.Array(Type.String({ maxLength: 8192 }), { maxItems: 10 }));

const AWS_SPEC: Record<string, KeySpec> = {
  SYMMETRIC_DEFAULT: 'AES_256', RSA_2048: 'RSA_2048', RSA_3072: 'RSA_3072', RSA_4096: 'RSA_4096', ECC_NIST_P256: 'EC_P256', ECC_NIST_P384: 'EC_P384', SM2: 'SM4',
};
const SPEC_TO_AWS: Record<string, string> = { AES_256: 'SYMMETRIC_DEFAULT', SM4: 'SM4', RSA_2048: 'RSA_2048', RSA_3072: 'RSA_3072', RSA_4096: 'RSA_4096', EC_P256: 'ECC_NIST_P256', EC_P384: 'ECC_NIST_P384' };
const STATE_TO_AWS: Record<string, string> = { enabled: 'Enabled', disabled: 'Disabled', pending_deletion: 'PendingDeletion', pending_import: 'PendingImport', destroyed: 'Unavailable' };
const secs = (ms: number | null) => (ms === null ? undefined : ms / 1000);

export function keyArn(k: Pick<KeyRow, 'region' | 'account_id' | 'id'>): string {
  return `arn:aws:kms:${k.region}:${k.account_id}:key/${k.id}`;
}

function keyMetadata(k: KeyRow) {
  const a = algorithmsFor(k);
  return {
    AWSAccountId: k.account_id, KeyId: k.id, Arn: keyArn(k), CreationDate: secs(k.created_at), Enabled: k.state === 'enabled',
    Description: k.description, KeyUsage: k.key_usage, KeyState: STATE_TO_AWS[k.state], ...(k.deletion_date !== null ? { DeletionDate: secs(k.deletion_date), PendingDeletionWindowInDays: undefined } : {}),
    Origin: k.origin === 'external' ? 'EXTERNAL' : 'AWS_KMS', KeyManager: 'CUSTOMER', CustomerMasterKeySpec: SPEC_TO_AWS[k.key_spec], KeySpec: SPEC_TO_AWS[k.key_spec],
    ...(a.encryption.length ? { EncryptionAlgorithms: a.encryption } : {}), ...(a.signing.length ? { SigningAlgorithms: a.signing } : {}),
    ...(k.material_expires_at !== null ? { ValidTo: secs(k.material_expires_at), ExpirationModel: 'KEY_MATERIAL_EXPIRES' } : k.origin === 'external' ? { ExpirationModel: 'KEY_MATERIAL_DOES_NOT_EXPIRE' } : {}),
    MultiRegion: false,
  };
}

/** A key id, key ARN, `alias/<name>` or alias ARN, as AWS accepts; aliases are stored without the prefix. */
function parseKeyRef(ref: string, scope: KeyScope): string | null {
  const arn = /^arn:aws[a-z-]*:kms:([^:]*):([^:]*):(key|alias)\/(.+)$/.exec(ref);
  if (arn) {
    // Another region's or account's ARN names nothing here: not found, like a missing key.
    if (arn[1] !== scope.region || arn[2] !== scope.accountId) return null;
    return arn[4]!;
  }
  if (ref.startsWith('alias/')) return ref.slice(6);
  return ref;
}

/** The region the request is signed for (SigV4 credential scope), where its keys live. */
function signedRegion(req: FastifyRequest): string | null {
  const auth = req.headers.authorization;
  const m = typeof auth === 'string' ? /Credential=[^/]+\/\d{8}\/([^/]+)\/kms\/aws4_request/.exec(auth) : null;
  return m ? m[1]! : null;
}

type Body = Record<string, unknown>;
interface Op {
  action: string;
  grant?: GrantOperation;
  body: Record<string, TSchema>;
  /** The body field naming the key; none for account-level operations. */
  keyField?: string | null;
  key?: (req: FastifyRequest, scope: KeyScope) => Promise<KeyRow | undefined>;
  data?: boolean;
  handler: (req: FastifyRequest, b: Body) => Promise<unknown>;
}

export function awsKmsRoutes(kms: KmsService, iam: IamService): RouteDef[] {
  const projects = new ProjectLookup(iam);
  const scopeFor = async (req: FastifyRequest, p: Principal): Promise<{ scope: KeyScope; name: string } | null> => {
    const region = signedRegion(req) ?? p.region;
    if (!region) throw KmsError.invalid('sign the request for a region (SigV4 credential scope) or use a project-scoped token');
    // A project-scoped credential acts in its project's region only.
    if (p.projectId !== null && p.region !== null && region !== p.region) throw new KmsError(403, 'AccessDenied', `the credential is scoped to a project in ${p.region}, not ${region}`);
    const row = p.projectId && p.region === region ? { id: p.projectId, account_id: p.accountId, region, name: p.projectName ?? region } : await projects.defaultOf(p.accountId, region);
    if (!row) return null;
    const scope = scopeOfProject(row as Parameters<typeof scopeOfProject>[0]);
    rememberScope(req, scope);
    return { scope, name: row.name };
  };
  const find = async (scope: KeyScope, ref: string) => {
    const id = parseKeyRef(ref, scope);
    return id === null ? undefined : kms.findKey(scope, id);
  };
  const ctxOf = (v: unknown, field: string) => encryptionContext(v, field);
  const encAlg = (k: KeyRow, v: unknown) => (v as EncryptionAlgorithm | undefined) ?? (isSymmetric(k.key_spec) ? 'SYMMETRIC_DEFAULT' : 'RSAES_OAEP_SHA_256');

  const ops: Record<string, Op> = {
    CreateKey: {
      action: 'kms:cmk:create', keyField: null,
      body: {
        Description: Type.Optional(Type.String({ maxLength: 8192 })), KeyUsage: Type.Optional(Type.String()), KeySpec: Type.Optional(Type.String()), CustomerMasterKeySpec: Type.Optional(Type.String()),
        Origin: Type.Optional(Type.String()), Tags: Type.Optional(Type.Array(Type.Object({ TagKey: Type.String(), TagValue: Type.String() }), { maxItems: 50 })),
        Policy: Type.Optional(Type.String()), BypassPolicyLockoutSafetyCheck: Type.Optional(Type.Boolean()), MultiRegion: Type.Optional(Type.Boolean()),
      },
      handler: async (req, b) => {
        const specName = (b.KeySpec ?? b.CustomerMasterKeySpec ?? 'SYMMETRIC_DEFAULT') as string;
        const spec = AWS_SPEC[specName];
        if (!spec || specName === 'SM2') throw new KmsError(400, 'Unsupported', `KeySpec ${specName} is not supported; use SYMMETRIC_DEFAULT, RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256 or ECC_NIST_P384`);
        if (b.MultiRegion === true) throw new KmsError(400, 'Unsupported', 'multi-region keys are not supported');
        if (b.Policy !== undefined) throw new KmsError(400, 'Unsupported', 'key policies are not supported: authorize with IAM policies and grants');
        if (b.Origin !== undefined && b.Origin !== 'AWS_KMS' && b.Origin !== 'EXTERNAL') throw new KmsError(400, 'Unsupported', `Origin ${String(b.Origin)} is not supported`);
        if (b.KeyUsage !== undefined && b.KeyUsage !== 'ENCRYPT_DECRYPT' && b.KeyUsage !== 'SIGN_VERIFY') throw new KmsError(400, 'Unsupported', `KeyUsage ${String(b.KeyUsage)} is not supported`);
        const tags = Object.fromEntries(((b.Tags as { TagKey: string; TagValue: string }[] | undefined) ?? []).map((t) => [t.TagKey, t.TagValue]));
        const key = await kms.createKey(scopeOf(req), { description: b.Description as string | undefined, keySpec: spec, keyUsage: b.KeyUsage as 'ENCRYPT_DECRYPT' | undefined, origin: b.Origin === 'EXTERNAL' ? 'external' : 'kms', tags });
        req.custos.traced.resourceId = key.id;
        return { KeyMetadata: keyMetadata(key) };
      },
    },
    DescribeKey: { action: 'kms:cmk:get', grant: 'DescribeKey', body: { KeyId: KeyRef, GrantTokens }, handler: async (req) => ({ KeyMetadata: keyMetadata(keyOf(req)) }) },
    ListKeys: {
      action: 'kms:cmk:list', keyField: null, body: { Limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })), Marker: Type.Optional(Type.String({ maxLength: 1024 })) },
      handler: async (req, b) => {
        const offset = b.Marker === undefined ? 0 : /^[0-9]{1,9}$/.test(b.Marker as string) ? Number(b.Marker) : (() => { throw new KmsError(400, 'InvalidMarker', 'Marker is not one this API returned'); })();
        const r = await kms.listKeys(scopeOf(req), { limit: (b.Limit as number | undefined) ?? 100, offset });
        return { Keys: r.keys.map((k) => ({ KeyId: k.id, KeyArn: keyArn(k) })), Truncated: r.next !== null, ...(r.next !== null ? { NextMarker: String(r.next) } : {}) };
      },
    },
    Encrypt: {
      action: 'kms:cmk:encrypt', grant: 'Encrypt', data: true, body: { KeyId: KeyRef, Plaintext: Blob(8192), EncryptionContext: Ctx, EncryptionAlgorithm: Type.Optional(Type.String()), GrantTokens },
      handler: async (req, b) => {
        const key = keyOf(req);
        const alg = encAlg(key, b.EncryptionAlgorithm);
        const plain = fromBase64(b.Plaintext as string, 'Plaintext');
        const ct = await kms.encrypt(key, plain, ctxOf(b.EncryptionContext, 'EncryptionContext'), alg);
        plain.fill(0);
        return { CiphertextBlob: ct.toString('base64'), KeyId: keyArn(key), EncryptionAlgorithm: alg };
      },
    },
    Decrypt: {
      action: 'kms:cmk:decrypt', grant: 'Decrypt', data: true,
      body: { CiphertextBlob: Blob(12_000), EncryptionContext: Ctx, KeyId: Type.Optional(KeyRef), EncryptionAlgorithm: Type.Optional(Type.String()), GrantTokens, DryRun: Type.Optional(Type.Boolean()) },
      key: async (req, scope) => {
        const b = req.body as Body;
        const ct = ciphertextOf(req, b.CiphertextBlob as string, 'CiphertextBlob');
        if (b.KeyId === undefined) return kms.findKey(scope, kms.keyIdOf(ct));
        return find(scope, b.KeyId as string);
      },
      handler: async (req, b) => {
        const key = keyOf(req);
        const alg = encAlg(key, b.EncryptionAlgorithm);
        const plain = await kms.decrypt(key, ciphertextOf(req, b.CiphertextBlob as string, 'CiphertextBlob'), ctxOf(b.EncryptionContext, 'EncryptionContext'), alg);
        return { KeyId: keyArn(key), Plaintext: plain.toString('base64'), EncryptionAlgorithm: alg };
      },
    },
    ReEncrypt: {
      action: 'kms:cmk:reEncrypt', grant: 'ReEncryptTo', data: true,
      body: {
        CiphertextBlob: Blob(12_000), SourceEncryptionContext: Ctx, SourceKeyId: Type.Optional(KeyRef), DestinationKeyId: KeyRef, DestinationEncryptionContext: Ctx,
        SourceEncryptionAlgorithm: Type.Optional(Type.String()), DestinationEncryptionAlgorithm: Type.Optional(Type.String()), GrantTokens,
      },
      keyField: 'DestinationKeyId',
      handler: async (req, b) => {
        const dest = keyOf(req);
        const p = principalOf(req);
        const scope = scopeOf(req);
        const ct = fromBase64(b.CiphertextBlob as string, 'CiphertextBlob');
        const source = b.SourceKeyId !== undefined ? await find(scope, b.SourceKeyId as string) : await kms.findKey(scope, kms.keyIdOf(ct));
        if (!source) throw KmsError.notFound();
        // The source key is a second resource: it needs its own decision (policy or grant).
        // Decided like any request on it: with its tags (g:ResourceTag) and alias.
        const srcRef = keyRef(source);
        const d = await iam.authorize(p, 'kms:cmk:reEncrypt', srcRef, { sourceIp: req.ip });
        if (d.effect !== 'allow' && !(d.effect === 'implicit-deny' && (await kms.grantAllows(source.id, p.userId, 'ReEncryptFrom')))) {
          throw new KmsError(403, 'AccessDenied', 'not authorized to perform kms:cmk:reEncrypt on the source key');
        }
        const plain = await kms.decrypt(source, ct, ctxOf(b.SourceEncryptionContext, 'SourceEncryptionContext'), encAlg(source, b.SourceEncryptionAlgorithm));
        const out = await kms.encrypt(dest, plain, ctxOf(b.DestinationEncryptionContext, 'DestinationEncryptionContext'), encAlg(dest, b.DestinationEncryptionAlgorithm));
        plain.fill(0);
        return { CiphertextBlob: out.toString('base64'), SourceKeyId: keyArn(source), KeyId: keyArn(dest), SourceEncryptionAlgorithm: encAlg(source, b.SourceEncryptionAlgorithm), DestinationEncryptionAlgorithm: encAlg(dest, b.DestinationEncryptionAlgorithm) };
      },
    },
    GenerateDataKey: {
      action: 'kms:cmk:generate', grant: 'GenerateDataKey', data: true,
      body: { KeyId: KeyRef, KeySpec: Type.Optional(Type.Union([Type.Literal('AES_256'), Type.Literal('AES_128')])), NumberOfBytes: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024 })), EncryptionContext: Ctx, GrantTokens },
      handler: async (req, b) => {
        const key = keyOf(req);
        const dk = await kms.generateDataKey(key, dataKeyBytes(b), ctxOf(b.EncryptionContext, 'EncryptionContext'));
        const out = { CiphertextBlob: dk.ciphertext.toString('base64'), Plaintext: dk.plaintext.toString('base64'), KeyId: keyArn(key) };
        dk.plaintext.fill(0);
        return out;
      },
    },
    GenerateDataKeyWithoutPlaintext: {
      action: 'kms:cmk:generate', grant: 'GenerateDataKeyWithoutPlaintext', data: true,
      body: { KeyId: KeyRef, KeySpec: Type.Optional(Type.Union([Type.Literal('AES_256'), Type.Literal('AES_128')])), NumberOfBytes: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024 })), EncryptionContext: Ctx, GrantTokens },
      handler: async (req, b) => {
        const key = keyOf(req);
        const dk = await kms.generateDataKey(key, dataKeyBytes(b), ctxOf(b.EncryptionContext, 'EncryptionContext'));
        dk.plaintext.fill(0);
        return { CiphertextBlob: dk.ciphertext.toString('base64'), KeyId: keyArn(key) };
      },
    },
    GenerateRandom: {
      action: 'kms:cmk:generateRandom', keyField: null, body: { NumberOfBytes: Type.Optional(Type.Integer({ minimum: 1, maximum: 1024 })), CustomKeyStoreId: Type.Optional(Type.String()) },
      handler: async (_req, b) => ({ Plaintext: kms.generateRandom((b.NumberOfBytes as number | undefined) ?? 32).toString('base64') }),
    },
    EnableKey: { action: 'kms:cmk:enable', body: { KeyId: KeyRef }, handler: async (req) => (await kms.enableKey(keyOf(req)), {}) },
    DisableKey: { action: 'kms:cmk:disable', body: { KeyId: KeyRef }, handler: async (req) => (await kms.disableKey(keyOf(req)), {}) },
    ScheduleKeyDeletion: {
      action: 'kms:cmk:scheduleDeletion', body: { KeyId: KeyRef, PendingWindowInDays: Type.Optional(Type.Integer()) },
      handler: async (req, b) => {
        const days = (b.PendingWindowInDays as number | undefined) ?? 30;
        if (days < MIN_PENDING_DAYS || days > MAX_PENDING_DAYS) throw KmsError.invalid(`PendingWindowInDays must be ${MIN_PENDING_DAYS} to ${MAX_PENDING_DAYS}`);
        const k = await kms.scheduleDeletion(keyOf(req), days);
        return { KeyId: keyArn(k), DeletionDate: secs(k.deletion_date), KeyState: 'PendingDeletion', PendingWindowInDays: days };
      },
    },
    CancelKeyDeletion: { action: 'kms:cmk:cancelDeletion', body: { KeyId: KeyRef }, handler: async (req) => ({ KeyId: keyArn(await kms.cancelDeletion(keyOf(req))) }) },
    EnableKeyRotation: {
      action: 'kms:cmk:update', body: { KeyId: KeyRef, RotationPeriodInDays: Type.Optional(Type.Integer({ minimum: 90, maximum: 2560 })) },
      handler: async (req, b) => (await kms.setRotation(keyOf(req), true, b.RotationPeriodInDays as number | undefined), {}),
    },
    DisableKeyRotation: { action: 'kms:cmk:update', body: { KeyId: KeyRef }, handler: async (req) => (await kms.setRotation(keyOf(req), false), {}) },
    RotateKeyOnDemand: {
      action: 'kms:cmk:rotate', body: { KeyId: KeyRef },
      handler: async (req) => {
        const key = keyOf(req);
        if (!(await kms.rotate(key))) throw new KmsError(409, 'InvalidState', 'the key was rotated by another request at the same time; retry');
        return { KeyId: key.id };
      },
    },
    GetKeyRotationStatus: {
      action: 'kms:cmk:get', body: { KeyId: KeyRef },
      handler: async (req) => {
        const k = keyOf(req);
        return {
          KeyId: keyArn(k), KeyRotationEnabled: k.rotation_enabled === 1, RotationPeriodInDays: k.rotation_interval_days,
          ...(k.rotation_enabled === 1 && k.next_rotation_at !== null ? { NextRotationDate: secs(k.next_rotation_at) } : {}),
        };
      },
    },
    CreateAlias: {
      action: 'kms:cmk:update', keyField: 'TargetKeyId', body: { AliasName: Type.String({ pattern: '^alias/[a-zA-Z0-9:/_-]{1,250}$' }), TargetKeyId: KeyRef },
      handler: async (req, b) => {
        const key = keyOf(req);
        const name = (b.AliasName as string).slice(6);
        if (name.startsWith('aws/')) throw KmsError.invalid('alias names starting with alias/aws/ are reserved');
        if (key.alias !== null) throw new KmsError(409, 'AlreadyExists', `key ${key.id} already has the alias alias/${key.alias}; a key has one alias here`);
        await kms.updateAlias(key, name);
        return {};
      },
    },
    DeleteAlias: {
      action: 'kms:cmk:update', keyField: 'AliasName', body: { AliasName: Type.String({ pattern: '^alias/[a-zA-Z0-9:/_-]{1,250}$' }) },
      handler: async (req) => (await kms.updateAlias(keyOf(req), null), {}),
    },
    ListAliases: {
      action: 'kms:cmk:list', keyField: null, body: { KeyId: Type.Optional(KeyRef), Limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })), Marker: Type.Optional(Type.String({ maxLength: 1024 })) },
      handler: async (req, b) => {
        const scope = scopeOf(req);
        let keyId: string | undefined;
        if (b.KeyId !== undefined) {
          const k = await find(scope, b.KeyId as string);
          if (!k) throw KmsError.notFound();
          keyId = k.id;
        }
        const rows = await kms.listAliases(scope, keyId);
        return { Aliases: rows.map((k) => ({ AliasName: `alias/${k.alias}`, AliasArn: `arn:aws:kms:${k.region}:${k.account_id}:alias/${k.alias}`, TargetKeyId: k.id, CreationDate: secs(k.alias_created_at) })), Truncated: false };
      },
    },
    UpdateKeyDescription: { action: 'kms:cmk:update', body: { KeyId: KeyRef, Description: Type.String({ maxLength: 8192 }) }, handler: async (req, b) => (await kms.updateDescription(keyOf(req), (b.Description as string).slice(0, 255)), {}) },
    Sign: {
      action: 'kms:cmk:sign', grant: 'Sign', data: true, body: { KeyId: KeyRef, Message: Blob(8192), MessageType: Type.Optional(Type.Union([Type.Literal('RAW'), Type.Literal('DIGEST')])), SigningAlgorithm: Type.String(), GrantTokens },
      handler: async (req, b) => {
        const key = keyOf(req);
        const sig = await kms.sign(key, fromBase64(b.Message as string, 'Message'), (b.MessageType as 'RAW' | undefined) ?? 'RAW', b.SigningAlgorithm as string);
        return { KeyId: keyArn(key), Signature: sig.toString('base64'), SigningAlgorithm: b.SigningAlgorithm };
      },
    },
    Verify: {
      action: 'kms:cmk:verify', grant: 'Verify', data: true,
      body: { KeyId: KeyRef, Message: Blob(8192), MessageType: Type.Optional(Type.Union([Type.Literal('RAW'), Type.Literal('DIGEST')])), Signature: Blob(2048), SigningAlgorithm: Type.String(), GrantTokens },
      handler: async (req, b) => {
        const key = keyOf(req);
        const ok = await kms.verify(key, fromBase64(b.Message as string, 'Message'), (b.MessageType as 'RAW' | undefined) ?? 'RAW', fromBase64(b.Signature as string, 'Signature'), b.SigningAlgorithm as string);
        // AWS answers an invalid signature with an error, not SignatureValid: false.
        if (!ok) throw new KmsError(400, 'InvalidSignature', 'the signature is not valid for this message, key and algorithm');
        return { KeyId: keyArn(key), SignatureValid: true, SigningAlgorithm: b.SigningAlgorithm };
      },
    },
    GetPublicKey: {
      action: 'kms:cmk:getPublicKey', grant: 'GetPublicKey', body: { KeyId: KeyRef, GrantTokens },
      handler: async (req) => {
        const key = keyOf(req);
        const a = algorithmsFor(key);
        return {
          KeyId: keyArn(key), PublicKey: (await kms.publicKey(key)).toString('base64'), KeySpec: SPEC_TO_AWS[key.key_spec], CustomerMasterKeySpec: SPEC_TO_AWS[key.key_spec], KeyUsage: key.key_usage,
          ...(a.encryption.length ? { EncryptionAlgorithms: a.encryption } : { SigningAlgorithms: a.signing }),
        };
      },
    },
    CreateGrant: {
      action: 'kms:grant:create', grant: 'CreateGrant',
      body: { KeyId: KeyRef, GranteePrincipal: Type.String({ minLength: 1, maxLength: 256 }), RetiringPrincipal: Type.Optional(Type.String({ maxLength: 256 })), Operations: Type.Array(Type.String(), { minItems: 1, maxItems: 20 }), Name: Type.Optional(Type.String({ maxLength: 256 })), Constraints: Type.Optional(Type.Object({})), GrantTokens },
      handler: async (req, b) => {
        const key = keyOf(req);
        const p = principalOf(req);
        if (b.Constraints !== undefined) throw new KmsError(400, 'Unsupported', 'grant constraints are not supported');
        const ops = (b.Operations as string[]).map((o) => {
          if (!(GRANT_OPERATIONS as readonly string[]).includes(o)) throw KmsError.invalid(`unknown grant operation ${o}`);
          return o as GrantOperation;
        });
        const grantee = userIdOf(b.GranteePrincipal as string);
        if (!(await iam.getUser(p.accountId, grantee))) throw KmsError.invalid('GranteePrincipal is not a user of this account (give its user id)');
        await checkGrantSubset(iam, kms, req, key, ops);
        const g = await kms.createGrant(key, p.userId, { grantee, operations: ops, name: b.Name as string | undefined, retiring: b.RetiringPrincipal !== undefined ? userIdOf(b.RetiringPrincipal as string) : undefined });
        return { GrantId: g.id, GrantToken: g.id };
      },
    },
    ListGrants: {
      action: 'kms:grant:list', body: { KeyId: KeyRef, Limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })), Marker: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$' })) },
      handler: async (req, b) => {
        const r = await kms.listGrants(keyOf(req), (b.Limit as number | undefined) ?? 50, b.Marker ? Number(b.Marker) : 0);
        return {
          Grants: r.grants.map((g) => ({ KeyId: keyArn(keyOf(req)), GrantId: g.id, Name: g.name, CreationDate: secs(g.created_at), GranteePrincipal: g.grantee, RetiringPrincipal: g.retiring ?? undefined, IssuingAccount: g.account_id, Operations: JSON.parse(g.operations_json) as string[] })),
          Truncated: r.next !== null, ...(r.next !== null ? { NextMarker: String(r.next) } : {}),
        };
      },
    },
    RevokeGrant: { action: 'kms:grant:revoke', body: { KeyId: KeyRef, GrantId: Type.String({ maxLength: 128 }) }, handler: async (req, b) => (await kms.revokeGrant(keyOf(req), b.GrantId as string), {}) },
    TagResource: {
      action: 'kms:cmkTag:create', body: { KeyId: KeyRef, Tags: Type.Array(Type.Object({ TagKey: Type.String({ minLength: 1, maxLength: 128 }), TagValue: Type.String({ maxLength: 256 }) }), { maxItems: 50 }) },
      handler: async (req, b) => (await kms.setTags(keyOf(req), Object.fromEntries((b.Tags as { TagKey: string; TagValue: string }[]).map((t) => [t.TagKey, t.TagValue])), []), {}),
    },
    UntagResource: {
      action: 'kms:cmkTag:delete', body: { KeyId: KeyRef, TagKeys: Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { maxItems: 50 }) },
      handler: async (req, b) => (await kms.setTags(keyOf(req), {}, b.TagKeys as string[]), {}),
    },
    ListResourceTags: {
      action: 'kms:cmkTag:list', body: { KeyId: KeyRef, Limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 50 })), Marker: Type.Optional(Type.String()) },
      handler: async (req) => ({ Tags: Object.entries(kms.tagsOf(keyOf(req))).map(([TagKey, TagValue]) => ({ TagKey, TagValue })), Truncated: false }),
    },
  };

  const routes: RouteDef[] = [];
  for (const [name, op] of Object.entries(ops)) {
    const keyField = op.keyField === undefined ? 'KeyId' : op.keyField;
    const meta: RouteMeta = {
      dialect: 'aws-json', service: 'KMS', action: op.action, resourceType: 'KeyId',
      ...(op.data ? { traceType: 'data' as const } : {}),
      ...(op.grant ? { grant: op.grant } : {}),
      resource: async (req, p) => {
        const s = await scopeFor(req, p);
        if (!s) return null;
        if (op.key) {
          const k = await op.key(req, s.scope);
          return k ? keyResource(req, k) : null;
        }
        if (keyField === null) return projectResource(s.scope, s.name);
        const k = await find(s.scope, (req.body as Body)[keyField] as string);
        return k ? keyResource(req, k) : null;
      },
    };
    routes.push({
      method: 'POST', url: '/', constraints: { amzTarget: `TrentService.${name}` }, meta,
      schema: { body: Type.Object(op.body, S) },
      handler: async (req) => op.handler(req, req.body as Body),
    });
  }

  // Retiring needs no policy: the grant names its retiring principal (and its grantee may retire it too).
  routes.push({
    method: 'POST', url: '/', constraints: { amzTarget: 'TrentService.RetireGrant' },
    meta: { dialect: 'aws-json', service: 'KMS', action: 'kms:grant:retire', authenticatedOnly: true, resourceType: 'KeyId' },
    schema: { body: Type.Object({ KeyId: Type.Optional(KeyRef), GrantId: Type.Optional(Type.String({ maxLength: 128 })), GrantToken: Type.Optional(Type.String({ maxLength: 8192 })) }, S) },
    handler: async (req) => {
      const p = principalOf(req);
      const b = req.body as Body;
      const grantId = (b.GrantId ?? b.GrantToken) as string | undefined;
      if (!grantId || b.KeyId === undefined) throw KmsError.invalid('give KeyId and GrantId');
      const s = await scopeFor(req, p);
      const key = s ? await find(s.scope, b.KeyId as string) : undefined;
      if (!key) throw KmsError.notFound();
      req.custos.resource = keyResource(req, key);
      await kms.retireGrant(key, grantId, p.userId);
      return {};
    },
  });
  return routes;
}

/** A grantee is named by user id, or by an IAM user ARN whose last part is the user id. */
function userIdOf(principal: string): string {
  const m = /^arn:aws[a-z-]*:iam::[^:]*:user\/(.+)$/.exec(principal);
  const id = m ? m[1]! : principal;
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) throw KmsError.invalid('a grantee is a user id of this account');
  return id;
}

function dataKeyBytes(b: Body): number {
  if (b.NumberOfBytes !== undefined && b.KeySpec !== undefined) throw KmsError.invalid('give KeySpec or NumberOfBytes, not both');
  if (b.NumberOfBytes !== undefined) return b.NumberOfBytes as number;
  if (b.KeySpec === undefined) throw KmsError.invalid('give KeySpec or NumberOfBytes');
  return b.KeySpec === 'AES_128' ? 16 : 32;
}


/**
 * Huawei Cloud DEW KMS: `POST /v1.0/{project_id}/kms/<operation>` with JSON bodies, errors as
 * `{"error":{"error_code","error_msg"}}`. Field names and value forms (numbers as strings, states as
 * "2".."5", data keys in hex) follow Huawei's API reference.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { IamService, Principal } from '../../iam/iam.js';
import { principalOf, type RouteDef, type RouteMeta } from '../../server/route.js';
import { KmsError } from '../errors.js';
import {
  algorithmsFor, assertCustomerAlias, isSymmetric, KEY_SPECS, MAX_PENDING_DAYS, MIN_PENDING_DAYS,
  type GrantOperation, type KeySpec, type KeyState, type KmsService,
} from '../kms.js';
import type { GrantRow, KeyRow } from '../store.js';
import { checkGrantSubset, ciphertextOf, encryptionContext, fromBase64, fromHex, keyOf, keyResource, ProjectLookup, projectResource, rememberScope, scopeOf, scopeOfProject } from './common.js';

const S = { additionalProperties: false } as const;
const KeyId = Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' });
const Alias = Type.String({ pattern: '^[a-zA-Z0-9:/_-]{1,255}$' });
const Sequence = Type.Optional(Type.String({ maxLength: 36 }));
const Digits = Type.String({ pattern: '^[0-9]{1,10}$' });
const Ctx = Type.Optional(Type.Record(Type.String({ maxLength: 1024 }), Type.String({ maxLength: 8192 })));
/**
 * Large text fields carry no length bounds in the schema: the validator would count characters one by
 * one (UTF-16 aware) on every request. The body limit bounds them, and the service checks byte sizes.
 */
const Base64Field = (_max: number) => Type.String();

const STATE_CODE: Record<string, string> = { enabled: '2', disabled: '3', pending_deletion: '4', pending_import: '5', destroyed: '6' };
const STATE_BY_CODE: Record<string, KeyState> = { '2': 'enabled', '3': 'disabled', '4': 'pending_deletion', '5': 'pending_import' };
/** Huawei's grant operation names onto the service's (AWS) names. */
const HW_GRANT_OPS: Record<string, GrantOperation> = {
  'create-datakey': 'GenerateDataKey', 'create-datakey-without-plaintext': 'GenerateDataKeyWithoutPlaintext',
  'encrypt-datakey': 'Encrypt', 'decrypt-datakey': 'Decrypt', 'encrypt-data': 'Encrypt', 'decrypt-data': 'Decrypt',
  'describe-key': 'DescribeKey', 'create-grant': 'CreateGrant', 'retire-grant': 'RetireGrant',
  sign: 'Sign', verify: 'Verify', 'get-publickey': 'GetPublicKey',
};
const GRANT_OPS_TO_HW: Record<string, string> = {
  GenerateDataKey: 'create-datakey', GenerateDataKeyWithoutPlaintext: 'create-datakey-without-plaintext', Encrypt: 'encrypt-data',
  Decrypt: 'decrypt-data', DescribeKey: 'describe-key', CreateGrant: 'create-grant', RetireGrant: 'retire-grant', Sign: 'sign',
  Verify: 'verify', GetPublicKey: 'get-publickey', ReEncryptFrom: 're-encrypt-from', ReEncryptTo: 're-encrypt-to',
};
const ms = (v: number | null) => (v === null ? '' : String(v));

export function keyDetails(k: KeyRow) {
  return {
    key_id: k.id, domain_id: k.account_id, key_alias: k.alias ?? '', realm: k.region, key_spec: k.key_spec, key_usage: k.key_usage,
    key_description: k.description, creation_date: String(k.created_at), scheduled_deletion_date: ms(k.deletion_date),
    key_state: STATE_CODE[k.state] ?? '', default_key_flag: '0', key_type: '1', expiration_time: ms(k.material_expires_at),
    origin: k.origin, key_rotation_enabled: k.rotation_enabled === 1 ? 'true' : 'false', sys_enterprise_project_id: '0',
    keystore_id: '0', key_label: '', partition_type: '1',
  };
}
function grantView(g: GrantRow) {
  return {
    key_id: g.key_id, grant_id: g.id, grantee_principal: g.grantee, grantee_principal_type: 'user',
    operations: (JSON.parse(g.operations_json) as string[]).map((o) => GRANT_OPS_TO_HW[o] ?? o),
    issuing_principal: g.issuer, creation_date: String(g.created_at), name: g.name, retiring_principal: g.retiring ?? '',
  };
}
function parseLimit(v: string | undefined, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (n < 1 || n > max) throw KmsError.invalid(`limit must be 1 to ${max}`);
  return n;
}
function parseMarker(v: string | undefined): number {
  if (v === undefined || v === '') return 0;
  if (!/^[0-9]{1,9}$/.test(v)) throw new KmsError(400, 'InvalidMarker', 'marker is not one this API returned');
  return Number(v);
}

type Body = Record<string, unknown>;
interface Op {
  action: string;
  /** Declares what grant operation also allows the call (when no policy does). */
  grant?: GrantOperation;
  body: Record<string, TSchema>;
  /** How the request names its key: the body's key_id (default), none (project-level), or custom. */
  key?: 'body' | 'none' | ((req: FastifyRequest) => Promise<KeyRow | undefined>);
  data?: boolean;
  handler: (req: FastifyRequest, b: Body, reply: FastifyReply) => Promise<unknown>;
}

export function huaweiKmsRoutes(kms: KmsService, iam: IamService): RouteDef[] {
  const projects = new ProjectLookup(iam);
  const project = async (req: FastifyRequest, p: Principal) => {
    const id = (req.params as { project_id: string }).project_id;
    // A project-scoped credential acts in its project only (another project's id in the URL: 403).
    if (p.projectId !== null && p.projectId !== id) throw new KmsError(403, 'AccessDenied', 'the credential is scoped to another project; get one scoped to this project (or to the account)');
    const row = p.projectId === id && p.region ? { id, account_id: p.accountId, region: p.region, name: p.projectName ?? p.region } : await projects.byProjectId(p.accountId, id);
    if (!row) return null;
    const scope = scopeOfProject(row as Parameters<typeof scopeOfProject>[0]);
    rememberScope(req, scope);
    return { scope, name: row.name };
  };

  const ops: Record<string, Op> = {
    'create-key': {
      action: 'kms:cmk:create', key: 'none',
      body: {
        key_alias: Alias, key_spec: Type.Optional(Type.Union(KEY_SPECS.map((s) => Type.Literal(s)))),
        key_usage: Type.Optional(Type.Union([Type.Literal('ENCRYPT_DECRYPT'), Type.Literal('SIGN_VERIFY')])),
        key_description: Type.Optional(Type.String({ maxLength: 255 })), origin: Type.Optional(Type.Union([Type.Literal('kms'), Type.Literal('external')])),
        enterprise_project_id: Type.Optional(Type.String({ maxLength: 36 })), keystore_id: Type.Optional(Type.String({ maxLength: 36 })), sequence: Sequence,
      },
      handler: async (req, b) => {
        assertCustomerAlias(b.key_alias as string);
        const key = await kms.createKey(scopeOf(req), {
          alias: b.key_alias as string, description: b.key_description as string | undefined, keySpec: (b.key_spec as KeySpec | undefined) ?? 'AES_256',
          keyUsage: b.key_usage as 'ENCRYPT_DECRYPT' | undefined, origin: b.origin as 'kms' | 'external' | undefined,
        });
        req.custos.traced.resourceId = key.id;
        req.custos.traced.resourceName = key.alias ?? undefined;
        return { key_info: { key_id: key.id, domain_id: key.account_id } };
      },
    },
    'describe-key': { action: 'kms:cmk:get', grant: 'DescribeKey', body: { key_id: KeyId, sequence: Sequence }, handler: async (req) => ({ key_info: keyDetails(keyOf(req)) }) },
    'list-keys': {
      action: 'kms:cmk:list', key: 'none',
      body: { limit: Type.Optional(Digits), marker: Type.Optional(Type.String({ maxLength: 10 })), key_state: Type.Optional(Type.Union(['2', '3', '4', '5'].map((s) => Type.Literal(s)))), key_spec: Type.Optional(Type.String({ maxLength: 16 })), enterprise_project_id: Type.Optional(Type.String({ maxLength: 36 })), sequence: Sequence },
      handler: async (req, b) => {
        const r = await kms.listKeys(scopeOf(req), { limit: parseLimit(b.limit as string | undefined, 1000, 1000), offset: parseMarker(b.marker as string | undefined), state: b.key_state ? STATE_BY_CODE[b.key_state as string] : undefined, keySpec: b.key_spec as string | undefined });
        return { keys: r.keys.map((k) => k.id), key_details: r.keys.map(keyDetails), next_marker: r.next === null ? '' : String(r.next), truncated: r.next === null ? 'false' : 'true', total: r.total };
      },
    },
    'enable-key': { action: 'kms:cmk:enable', body: { key_id: KeyId, sequence: Sequence }, handler: async (req) => stateOnly(await kms.enableKey(keyOf(req))) },
    'disable-key': { action: 'kms:cmk:disable', body: { key_id: KeyId, sequence: Sequence }, handler: async (req) => stateOnly(await kms.disableKey(keyOf(req))) },
    'schedule-key-deletion': {
      action: 'kms:cmk:scheduleDeletion', body: { key_id: KeyId, pending_days: Digits, sequence: Sequence },
      handler: async (req, b) => {
        const days = Number(b.pending_days);
        if (days < MIN_PENDING_DAYS || days > MAX_PENDING_DAYS) throw KmsError.invalid(`pending_days must be ${MIN_PENDING_DAYS} to ${MAX_PENDING_DAYS}`);
        const k = await kms.scheduleDeletion(keyOf(req), days);
        return { key_id: k.id, key_state: STATE_CODE[k.state] };
      },
    },
    'cancel-key-deletion': {
      action: 'kms:cmk:cancelDeletion', body: { key_id: KeyId, sequence: Sequence },
      handler: async (req) => {
        const k = await kms.cancelDeletion(keyOf(req));
        return { key_id: k.id, key_state: STATE_CODE[k.state] };
      },
    },
    'update-key-alias': {
      action: 'kms:cmk:update', body: { key_id: KeyId, key_alias: Alias, sequence: Sequence },
      handler: async (req, b) => {
        const k = await kms.updateAlias(keyOf(req), b.key_alias as string);
        return { key_info: { key_id: k.id, key_alias: k.alias } };
      },
    },
    'update-key-description': {
      action: 'kms:cmk:update', body: { key_id: KeyId, key_description: Type.String({ maxLength: 255 }), sequence: Sequence },
      handler: async (req, b) => {
        const k = await kms.updateDescription(keyOf(req), b.key_description as string);
        return { key_info: { key_id: k.id, key_description: k.description } };
      },
    },
    'encrypt-data': {
      action: 'kms:cmk:encrypt', grant: 'Encrypt', data: true,
      body: { key_id: KeyId, plain_text: Type.String(), encryption_context: Ctx, encryption_algorithm: Type.Optional(Type.String({ maxLength: 32 })), sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        // Symmetric keys take the text itself (as Huawei's API does); RSA keys take base64.
        const plain = isSymmetric(key.key_spec) ? Buffer.from(b.plain_text as string, 'utf8') : fromBase64(b.plain_text as string, 'plain_text');
        const ct = await kms.encrypt(key, plain, encryptionContext(b.encryption_context, 'encryption_context'), (b.encryption_algorithm as 'SYMMETRIC_DEFAULT' | undefined) ?? (isSymmetric(key.key_spec) ? 'SYMMETRIC_DEFAULT' : 'RSAES_OAEP_SHA_256'));
        plain.fill(0);
        return { key_id: key.id, cipher_text: ct.toString('base64') };
      },
    },
    'decrypt-data': {
      action: 'kms:cmk:decrypt', grant: 'Decrypt', data: true,
      body: { cipher_text: Base64Field(12_000), encryption_context: Ctx, key_id: Type.Optional(KeyId), encryption_algorithm: Type.Optional(Type.String({ maxLength: 32 })), sequence: Sequence },
      // A symmetric ciphertext names its key; an RSA ciphertext needs key_id.
      key: async (req) => {
        const b = req.body as Body;
        const keyId = (b.key_id as string | undefined) ?? kms.keyIdOf(ciphertextOf(req, b.cipher_text as string, 'cipher_text'));
        return kms.findKey(scopeOf(req), keyId);
      },
      handler: async (req, b) => {
        const key = keyOf(req);
        const plain = await kms.decrypt(key, ciphertextOf(req, b.cipher_text as string, 'cipher_text'), encryptionContext(b.encryption_context, 'encryption_context'), (b.encryption_algorithm as 'SYMMETRIC_DEFAULT' | undefined) ?? (isSymmetric(key.key_spec) ? 'SYMMETRIC_DEFAULT' : 'RSAES_OAEP_SHA_256'));
        return { key_id: key.id, plain_text: plain.toString('utf8'), plain_text_base64: plain.toString('base64') };
      },
    },
    'create-datakey': {
      action: 'kms:cmk:generate', grant: 'GenerateDataKey', data: true,
      body: { key_id: KeyId, key_spec: Type.Optional(Type.Union([Type.Literal('AES_256'), Type.Literal('AES_128')])), datakey_length: Type.Optional(Digits), encryption_context: Ctx, sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        const dk = await kms.generateDataKey(key, dataKeyBytes(b), encryptionContext(b.encryption_context, 'encryption_context'));
        const out = { key_id: key.id, plain_text: dk.plaintext.toString('hex'), cipher_text: dk.ciphertext.toString('hex') };
        dk.plaintext.fill(0);
        return out;
      },
    },
    'create-datakey-without-plaintext': {
      action: 'kms:cmk:generate', grant: 'GenerateDataKeyWithoutPlaintext', data: true,
      body: { key_id: KeyId, key_spec: Type.Optional(Type.Union([Type.Literal('AES_256'), Type.Literal('AES_128')])), datakey_length: Type.Optional(Digits), encryption_context: Ctx, sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        const dk = await kms.generateDataKey(key, dataKeyBytes(b), encryptionContext(b.encryption_context, 'encryption_context'));
        dk.plaintext.fill(0);
        return { key_id: key.id, cipher_text: dk.ciphertext.toString('hex') };
      },
    },
    'encrypt-datakey': {
      action: 'kms:cmk:encrypt', grant: 'Encrypt', data: true,
      body: { key_id: KeyId, plain_text: Type.String({ minLength: 2, maxLength: 2200 }), datakey_plain_length: Digits, encryption_context: Ctx, sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        const raw = fromHex(b.plain_text as string, 'plain_text');
        const n = Number(b.datakey_plain_length);
        if (n < 1 || n > 1024 || raw.length !== n + 32) throw KmsError.invalid('plain_text must be the data key (datakey_plain_length bytes) followed by its SHA-256, in hex');
        const dk = raw.subarray(0, n);
        if (!timingSafeEqual(createHash('sha256').update(dk).digest(), raw.subarray(n))) throw KmsError.invalid('the SHA-256 in plain_text does not match the data key');
        const ct = await kms.encrypt(key, dk, encryptionContext(b.encryption_context, 'encryption_context'));
        raw.fill(0);
        return { key_id: key.id, cipher_text: ct.toString('hex'), datakey_length: String(n) };
      },
    },
    'decrypt-datakey': {
      action: 'kms:cmk:decrypt', grant: 'Decrypt', data: true,
      body: { key_id: KeyId, cipher_text: Type.String({ minLength: 2, maxLength: 4400 }), datakey_cipher_length: Digits, encryption_context: Ctx, sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        const dk = await kms.decrypt(key, fromHex(b.cipher_text as string, 'cipher_text'), encryptionContext(b.encryption_context, 'encryption_context'));
        const out = { data_key: dk.toString('hex'), datakey_length: String(dk.length), datakey_dgst: createHash('sha256').update(dk).digest('hex') };
        dk.fill(0);
        return out;
      },
    },
    'gen-random': {
      action: 'kms:cmk:generateRandom', key: 'none', body: { random_data_length: Digits, sequence: Sequence },
      handler: async (_req, b) => {
        const bits = Number(b.random_data_length);
        if (bits % 8 !== 0 || bits < 8 || bits > 8192) throw KmsError.invalid('random_data_length is a number of bits, a multiple of 8 from 8 to 8192');
        return { random_data: kms.generateRandom(bits / 8).toString('hex') };
      },
    },
    'enable-key-rotation': { action: 'kms:cmk:update', body: { key_id: KeyId, sequence: Sequence }, handler: async (req) => (await kms.setRotation(keyOf(req), true), {}) },
    'disable-key-rotation': { action: 'kms:cmk:update', body: { key_id: KeyId, sequence: Sequence }, handler: async (req) => (await kms.setRotation(keyOf(req), false), {}) },
    'update-key-rotation-interval': {
      action: 'kms:cmk:update', body: { key_id: KeyId, rotation_interval: Type.Integer({ minimum: 30, maximum: 365 }), sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        await kms.setRotation(key, key.rotation_enabled === 1, b.rotation_interval as number);
        return {};
      },
    },
    'get-key-rotation-status': {
      action: 'kms:cmk:get', body: { key_id: KeyId, sequence: Sequence },
      handler: async (req) => {
        const k = keyOf(req);
        return { key_rotation_enabled: k.rotation_enabled === 1, rotation_interval: k.rotation_interval_days, last_rotation_time: ms(k.last_rotated_at), number_of_rotations: Math.max(0, k.current_version - 1) };
      },
    },
    'get-parameters-for-import': {
      action: 'kms:cmk:import', body: { key_id: KeyId, wrapping_algorithm: Type.String({ maxLength: 32 }), wrapping_key_spec: Type.Optional(Type.String({ maxLength: 16 })), sequence: Sequence },
      handler: async (req, b) => {
        const p = await kms.importParameters(keyOf(req), b.wrapping_algorithm as string, (b.wrapping_key_spec as string | undefined) ?? 'RSA_2048');
        return { key_id: p.keyId, import_token: p.importToken, expiration_time: Math.floor(p.expiresAt / 1000), public_key: p.publicKey.toString('base64') };
      },
    },
    'import-key-material': {
      action: 'kms:cmk:import',
      body: { key_id: KeyId, import_token: Type.String({ minLength: 1, maxLength: 512 }), encrypted_key_material: Base64Field(4096), expiration_time: Type.Optional(Digits), encrypted_privatekey: Type.Optional(Type.String({ maxLength: 16384 })), sequence: Sequence },
      handler: async (req, b) => {
        if (b.encrypted_privatekey !== undefined) throw new KmsError(400, 'Unsupported', 'imported asymmetric keys are not supported');
        await kms.importMaterial(keyOf(req), b.import_token as string, fromBase64(b.encrypted_key_material as string, 'encrypted_key_material'), b.expiration_time ? Number(b.expiration_time) * 1000 : null);
        return {};
      },
    },
    'delete-imported-key-material': { action: 'kms:cmk:deleteImportedMaterial', body: { key_id: KeyId, sequence: Sequence }, handler: async (req) => (await kms.deleteImportedMaterial(keyOf(req)), {}) },
    sign: {
      action: 'kms:cmk:sign', grant: 'Sign', data: true,
      body: { key_id: KeyId, message: Base64Field(8192), signing_algorithm: Type.String({ maxLength: 32 }), message_type: Type.Optional(Type.Union([Type.Literal('RAW'), Type.Literal('DIGEST')])), sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        const sig = await kms.sign(key, fromBase64(b.message as string, 'message'), (b.message_type as 'RAW' | 'DIGEST' | undefined) ?? 'DIGEST', b.signing_algorithm as string);
        return { key_id: key.id, signature: sig.toString('base64') };
      },
    },
    verify: {
      action: 'kms:cmk:verify', grant: 'Verify', data: true,
      body: { key_id: KeyId, message: Base64Field(8192), signature: Base64Field(2048), signing_algorithm: Type.String({ maxLength: 32 }), message_type: Type.Optional(Type.Union([Type.Literal('RAW'), Type.Literal('DIGEST')])), sequence: Sequence },
      handler: async (req, b) => {
        const key = keyOf(req);
        const ok = await kms.verify(key, fromBase64(b.message as string, 'message'), (b.message_type as 'RAW' | 'DIGEST' | undefined) ?? 'DIGEST', fromBase64(b.signature as string, 'signature'), b.signing_algorithm as string);
        return { key_id: key.id, signature_valid: ok ? 'true' : 'false' };
      },
    },
    'get-publickey': {
      action: 'kms:cmk:getPublicKey', grant: 'GetPublicKey', body: { key_id: KeyId, sequence: Sequence },
      handler: async (req) => {
        const key = keyOf(req);
        const der = await kms.publicKey(key);
        const pem = `-----BEGIN PUBLIC KEY-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END PUBLIC KEY-----\n`;
        return { key_id: key.id, public_key: pem, ...algorithmsForView(key) };
      },
    },
    'create-grant': {
      action: 'kms:grant:create', grant: 'CreateGrant',
      body: {
        key_id: KeyId, grantee_principal: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }), operations: Type.Array(Type.String({ maxLength: 40 }), { minItems: 1, maxItems: 20 }),
        name: Type.Optional(Type.String({ maxLength: 255 })), retiring_principal: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' })),
        grantee_principal_type: Type.Optional(Type.Union([Type.Literal('user'), Type.Literal('domain')])), sequence: Sequence,
      },
      handler: async (req, b) => {
        const key = keyOf(req);
        if (b.grantee_principal_type === 'domain') throw new KmsError(400, 'Unsupported', 'grants to another account (grantee_principal_type "domain") are not supported; grant to a user of this account');
        const operations = (b.operations as string[]).map((o) => {
          const op = HW_GRANT_OPS[o];
          if (!op) throw KmsError.invalid(`unknown grant operation ${o}; known: ${Object.keys(HW_GRANT_OPS).join(', ')}`);
          return op;
        });
        const p = principalOf(req);
        if (!(await iam.getUser(p.accountId, b.grantee_principal as string))) throw KmsError.invalid('grantee_principal is not a user of this account');
        await checkGrantSubset(iam, kms, req, key, operations);
        const g = await kms.createGrant(key, p.userId, { grantee: b.grantee_principal as string, operations, name: b.name as string | undefined, retiring: b.retiring_principal as string | undefined });
        req.custos.traced.resourceId = key.id;
        return { grant_id: g.id };
      },
    },
    'list-grants': {
      action: 'kms:grant:list', body: { key_id: KeyId, limit: Type.Optional(Digits), marker: Type.Optional(Type.String({ maxLength: 10 })), sequence: Sequence },
      handler: async (req, b) => {
        const r = await kms.listGrants(keyOf(req), parseLimit(b.limit as string | undefined, 100, 100), parseMarker(b.marker as string | undefined));
        return { grants: r.grants.map(grantView), next_marker: r.next === null ? '' : String(r.next), truncated: r.next === null ? 'false' : 'true', total: r.total };
      },
    },
    'revoke-grant': { action: 'kms:grant:revoke', body: { key_id: KeyId, grant_id: Type.String({ pattern: '^[0-9a-f]{64}$' }), sequence: Sequence }, handler: async (req, b) => (await kms.revokeGrant(keyOf(req), b.grant_id as string), {}) },
  };

  const routes: RouteDef[] = [];
  for (const [name, op] of Object.entries(ops)) {
    const meta: RouteMeta = {
      dialect: 'huawei-kms', service: 'KMS', action: op.action, resourceType: 'KeyId',
      ...(op.data ? { traceType: 'data' as const } : {}),
      ...(op.grant ? { grant: op.grant } : {}),
      resource: async (req, p) => {
        const proj = await project(req, p);
        if (!proj) return null;
        if (op.key === 'none') return projectResource(proj.scope, proj.name);
        const key = typeof op.key === 'function' ? await op.key(req) : await kms.findKey(proj.scope, (req.body as Body).key_id as string);
        return key ? keyResource(req, key) : null;
      },
    };
    routes.push({
      method: 'POST', url: `/v1.0/:project_id/kms/${name}`, meta,
      schema: { params: Type.Object({ project_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) }, S), body: Type.Object(op.body, S) },
      handler: (req, reply) => op.handler(req, req.body as Body, reply),
    });
  }

  // Retiring a grant needs no policy: the grant names who may retire it.
  routes.push({
    method: 'POST', url: '/v1.0/:project_id/kms/retire-grant',
    meta: { dialect: 'huawei-kms', service: 'KMS', action: 'kms:grant:retire', authenticatedOnly: true, resourceType: 'KeyId' },
    schema: { params: Type.Object({ project_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) }, S), body: Type.Object({ key_id: KeyId, grant_id: Type.String({ pattern: '^[0-9a-f]{64}$' }), sequence: Sequence }, S) },
    handler: async (req) => {
      const p = principalOf(req);
      const proj = await project(req, p);
      const b = req.body as Body;
      const key = proj ? await kms.findKey(proj.scope, b.key_id as string) : undefined;
      if (!key) throw KmsError.notFound();
      req.custos.resource = keyResource(req, key);
      await kms.retireGrant(key, b.grant_id as string, p.userId);
      return {};
    },
  });

  // Key tags (Huawei's TMS-style routes under the key).
  const tagParams = Type.Object({ project_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }), key_id: KeyId }, S);
  const Tag = Type.Object({ key: Type.String({ minLength: 1, maxLength: 128 }), value: Type.Optional(Type.String({ maxLength: 256 })) }, S);
  const tagMeta = (action: string): RouteMeta => ({
    dialect: 'huawei-kms', service: 'KMS', action, resourceType: 'KeyId',
    resource: async (req, p) => {
      const proj = await project(req, p);
      if (!proj) return null;
      const key = await kms.findKey(proj.scope, (req.params as { key_id: string }).key_id);
      return key ? keyResource(req, key) : null;
    },
  });
  const tagList = (t: Record<string, string>) => ({ tags: Object.entries(t).map(([key, value]) => ({ key, value })), existTagsNum: Object.keys(t).length });
  routes.push(
    {
      method: 'GET', url: '/v1.0/:project_id/kms/:key_id/tags', meta: tagMeta('kms:cmkTag:list'), schema: { params: tagParams },
      handler: async (req) => tagList(kms.tagsOf(keyOf(req))),
    },
    {
      method: 'POST', url: '/v1.0/:project_id/kms/:key_id/tags', meta: tagMeta('kms:cmkTag:create'), schema: { params: tagParams, body: Type.Object({ tag: Tag, sequence: Sequence }, S) },
      handler: async (req, reply) => {
        const t = (req.body as { tag: { key: string; value?: string } }).tag;
        await kms.setTags(keyOf(req), { [t.key]: t.value ?? '' }, []);
        return reply.code(204).send();
      },
    },
    {
      method: 'DELETE', url: '/v1.0/:project_id/kms/:key_id/tags/:key', meta: tagMeta('kms:cmkTag:delete'),
      schema: { params: Type.Object({ project_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }), key_id: KeyId, key: Type.String({ minLength: 1, maxLength: 128 }) }, S) },
      handler: async (req, reply) => {
        const key = keyOf(req);
        const name = (req.params as { key: string }).key;
        if (!(name in kms.tagsOf(key))) throw KmsError.notFound('tag');
        await kms.setTags(key, {}, [name]);
        return reply.code(204).send();
      },
    },
    {
      method: 'POST', url: '/v1.0/:project_id/kms/:key_id/tags/action', meta: tagMeta('kms:cmkTag:batch'),
      schema: { params: tagParams, body: Type.Object({ action: Type.Union([Type.Literal('create'), Type.Literal('delete')]), tags: Type.Array(Tag, { minItems: 1, maxItems: 50 }), sequence: Sequence }, S) },
      handler: async (req, reply) => {
        const b = req.body as { action: 'create' | 'delete'; tags: { key: string; value?: string }[] };
        if (b.action === 'create') await kms.setTags(keyOf(req), Object.fromEntries(b.tags.map((t) => [t.key, t.value ?? ''])), []);
        else await kms.setTags(keyOf(req), {}, b.tags.map((t) => t.key));
        return reply.code(204).send();
      },
    },
  );
  return routes;
}

function stateOnly(k: KeyRow) {
  return { key_info: { key_id: k.id, key_state: STATE_CODE[k.state] } };
}
function algorithmsForView(k: KeyRow) {
  const a = algorithmsFor(k);
  return { key_spec: k.key_spec, key_usage: k.key_usage, ...(a.signing.length ? { signing_algorithms: a.signing } : { encryption_algorithms: a.encryption }) };
}
/** Huawei sizes data keys by key_spec, or by datakey_length in bits. */
function dataKeyBytes(b: Body): number {
  if (b.datakey_length !== undefined) {
    const bits = Number(b.datakey_length);
    if (bits % 8 !== 0 || bits < 8 || bits > 8192) throw KmsError.invalid('datakey_length is a number of bits, a multiple of 8 from 8 to 8192');
    return bits / 8;
  }
  return b.key_spec === 'AES_128' ? 16 : 32;
}

import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

/** Every setting Custos reads, with its default. Sources, lowest first: defaults, file, environment, flags. */
export const ConfigSchema = Type.Object(
  {
    dataDir: Type.String({ minLength: 1, default: './data' }),
    host: Type.String({ minLength: 1, default: '127.0.0.1' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
    /** The S3/OBS listener's port; by default the main port + 1 (0, an ephemeral port, when the main port is 0). */
    obsPort: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
    /**
     * The domain of virtual-hosted-style S3/OBS requests: a request to `<bucket>.<obsDomain>` names the
     * bucket in its Host header. Unset: path-style only.
     */
    obsDomain: Type.Optional(Type.String({ pattern: '^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$' })),
    /**
     * Origins whose browsers may preflight (CORS `OPTIONS`) on the S3/OBS listener: `*`, or origins
     * such as `https://app.example.com` (one `*` wildcard each). Preflights carry no credentials and
     * never look at a bucket; each bucket's CORS configuration decides the actual responses.
     */
    obsCorsOrigins: Type.Array(Type.String({ pattern: '^(\\*|[a-z][a-z0-9+.-]*://[^\\s/]+)$', maxLength: 1024 }), { maxItems: 100, default: ['*'] }),
    /** Largest object a single PUT may carry (bytes). */
    obsMaxObjectBytes: Type.Integer({ minimum: 1024, maximum: 5 * 1024 ** 4, default: 5 * 1024 ** 3 }),
    tlsCert: Type.Optional(Type.String({ minLength: 1 })),
    tlsKey: Type.Optional(Type.String({ minLength: 1 })),
    insecure: Type.Boolean({ default: false }),
    databaseUrl: Type.Optional(Type.String({ pattern: '^(postgres|postgresql)://' })),
    regions: Type.Array(Type.String({ pattern: '^[a-z]{2}-[a-z]+-[0-9]+$' }), { minItems: 1, default: ['cn-north-4', 'ap-southeast-1', 'eu-west-0'] }),
    logLevel: Type.Union(
      ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
      { default: 'info' },
    ),
    bodyLimitBytes: Type.Integer({ minimum: 1024, maximum: 64 * 1024 * 1024, default: 1024 * 1024 }),
    tokenTtlSeconds: Type.Integer({ minimum: 900, maximum: 86400, default: 86400 }),
    signatureWindowSeconds: Type.Integer({ minimum: 60, maximum: 3600, default: 900 }),
    rootKeyProvider: Type.Union([Type.Literal('local'), Type.Literal('pkcs11')], { default: 'local' }),
    /** pkcs11 provider: the module, the token, the key's label, and the NAME of the variable holding the PIN. */
    pkcs11Module: Type.Optional(Type.String({ minLength: 1 })),
    pkcs11TokenLabel: Type.Optional(Type.String({ minLength: 1, maxLength: 32 })),
    pkcs11KeyLabel: Type.String({ minLength: 1, maxLength: 64, default: 'custos-root' }),
    pkcs11PinEnv: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128, default: 'CUSTOS_PKCS11_PIN' }),
    /** Name of the environment variable holding the root-key passphrase (never the passphrase itself). */
    rootKeyPassphraseEnv: Type.String({ minLength: 1, default: 'CUSTOS_ROOT_PASSPHRASE' }),
    auditDigestIntervalSeconds: Type.Integer({ minimum: 60, maximum: 86400, default: 3600 }),
    /** Directory each signed digest and the traces it covers are also written to, as gzip'd JSON. */
    auditExportDir: Type.Optional(Type.String({ minLength: 1 })),
    shutdownGraceMs: Type.Integer({ minimum: 0, maximum: 120000, default: 10000 }),
    /**
     * Whether privacy webhooks may target internal addresses (loopback, private networks, link-local,
     * ...). Off by default: an account's webhook URL must not reach what only the server can.
     */
    privacyWebhookInternalTargets: Type.Boolean({ default: false }),
    /** Days a deregistered account stays frozen (and the deregistration cancellable) before its data is destroyed. */
    deregistrationRetentionDays: Type.Integer({ minimum: 1, maximum: 3650, default: 30 }),
    /** Where object content (always ciphertext) is kept: `fs`, under `<dataDir>/blobs`; `s3`, an upstream S3-compatible bucket. */
    blobBackend: Type.Union([Type.Literal('fs'), Type.Literal('s3')], { default: 'fs' }),
    /** The upstream's URL (http or https, no credentials in it); unset: the SDK's address for blobS3Region. */
    blobS3Endpoint: Type.Optional(Type.String({ pattern: '^[Hh][Tt][Tt][Pp][Ss]?://', maxLength: 2048 })),
    blobS3Bucket: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$' })),
    blobS3Region: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', default: 'us-east-1' }),
    /** Put in front of every blob id to make its key upstream (e.g. `custos/blobs/`). */
    blobS3Prefix: Type.String({ pattern: "^([A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]*)?$", maxLength: 512, default: '' }),
    /** Path-style addresses (`<endpoint>/<bucket>/<key>`), which most self-hosted servers need. */
    blobS3PathStyle: Type.Boolean({ default: false }),
    /** NAMES of the environment variables holding the upstream's credentials (never the values). */
    blobS3AccessKeyIdEnv: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128, default: 'CUSTOS_BLOB_S3_ACCESS_KEY_ID' }),
    blobS3SecretAccessKeyEnv: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128, default: 'CUSTOS_BLOB_S3_SECRET_ACCESS_KEY' }),
    blobS3SessionTokenEnv: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128, default: 'CUSTOS_BLOB_S3_SESSION_TOKEN' }),
    /** Verify the upstream's TLS certificate; turn off only for a test installation. */
    blobS3TlsVerify: Type.Boolean({ default: true }),
    /** PEM file of extra CA certificates to trust for the upstream (a private CA). */
    blobS3CaFile: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type Config = Static<typeof ConfigSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const ENV_MAP: Record<string, keyof Config> = {
  CUSTOS_DATA_DIR: 'dataDir',
  CUSTOS_HOST: 'host',
  CUSTOS_PORT: 'port',
  CUSTOS_OBS_PORT: 'obsPort',
  CUSTOS_OBS_DOMAIN: 'obsDomain',
  CUSTOS_OBS_CORS_ORIGINS: 'obsCorsOrigins',
  CUSTOS_TLS_CERT: 'tlsCert',
  CUSTOS_TLS_KEY: 'tlsKey',
  CUSTOS_INSECURE: 'insecure',
  CUSTOS_DATABASE_URL: 'databaseUrl',
  CUSTOS_REGIONS: 'regions',
  CUSTOS_LOG_LEVEL: 'logLevel',
  CUSTOS_BODY_LIMIT_BYTES: 'bodyLimitBytes',
  CUSTOS_TOKEN_TTL_SECONDS: 'tokenTtlSeconds',
  CUSTOS_AUDIT_DIGEST_INTERVAL_SECONDS: 'auditDigestIntervalSeconds',
  CUSTOS_AUDIT_EXPORT_DIR: 'auditExportDir',
  CUSTOS_DEREGISTRATION_RETENTION_DAYS: 'deregistrationRetentionDays',
  CUSTOS_PRIVACY_WEBHOOK_INTERNAL_TARGETS: 'privacyWebhookInternalTargets',
  CUSTOS_ROOT_KEY_PROVIDER: 'rootKeyProvider',
  CUSTOS_PKCS11_MODULE: 'pkcs11Module',
  CUSTOS_PKCS11_TOKEN_LABEL: 'pkcs11TokenLabel',
  CUSTOS_PKCS11_KEY_LABEL: 'pkcs11KeyLabel',
  CUSTOS_PKCS11_PIN_ENV: 'pkcs11PinEnv',
  CUSTOS_BLOB_BACKEND: 'blobBackend',
  CUSTOS_BLOB_S3_ENDPOINT: 'blobS3Endpoint',
  CUSTOS_BLOB_S3_BUCKET: 'blobS3Bucket',
  CUSTOS_BLOB_S3_REGION: 'blobS3Region',
  CUSTOS_BLOB_S3_PREFIX: 'blobS3Prefix',
  CUSTOS_BLOB_S3_PATH_STYLE: 'blobS3PathStyle',
  CUSTOS_BLOB_S3_ACCESS_KEY_ID_ENV: 'blobS3AccessKeyIdEnv',
  CUSTOS_BLOB_S3_SECRET_ACCESS_KEY_ENV: 'blobS3SecretAccessKeyEnv',
  CUSTOS_BLOB_S3_SESSION_TOKEN_ENV: 'blobS3SessionTokenEnv',
  CUSTOS_BLOB_S3_TLS_VERIFY: 'blobS3TlsVerify',
  CUSTOS_BLOB_S3_CA_FILE: 'blobS3CaFile',
};

function coerce(key: keyof Config, raw: string): unknown {
  const prop = (ConfigSchema.properties as Record<string, { type?: string; anyOf?: unknown }>)[key];
  if (key === 'regions' || key === 'obsCorsOrigins') return raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (prop?.type === 'integer') return /^-?\d+$/.test(raw) ? Number(raw) : raw;
  if (prop?.type === 'boolean') return raw === 'true' || raw === '1' ? true : raw === 'false' || raw === '0' ? false : raw;
  return raw;
}

function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1';
  return false;
}

/**
 * Builds the configuration and validates it, failing with every problem named.
 * `flags` are already-parsed command-line values (undefined means "not given").
 */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv; flags?: Partial<Config> } = {}): Config {
  const env = opts.env ?? process.env;
  let merged: Record<string, unknown> = {};
  const file = opts.file ?? env.CUSTOS_CONFIG;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
      merged = { ...(parsed as Record<string, unknown>) };
    } catch {
      throw new ConfigError(`config file ${file} is not a JSON object`);
    }
  }
  for (const [name, key] of Object.entries(ENV_MAP)) {
    const raw = env[name];
    if (raw !== undefined && raw !== '') merged[key] = coerce(key, raw);
  }
  for (const [k, v] of Object.entries(opts.flags ?? {})) if (v !== undefined) merged[k] = v;

  const withDefaults = Value.Default(ConfigSchema, merged) as Record<string, unknown>;
  const errors = [...Value.Errors(ConfigSchema, withDefaults)];
  if (errors.length > 0) {
    const lines = errors.slice(0, 10).map((e) => `  ${e.path || '/'}: ${e.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const cfg = withDefaults as Config;
  cfg.dataDir = path.resolve(cfg.dataDir);
  if (cfg.obsPort === undefined) cfg.obsPort = cfg.port === 0 ? 0 : cfg.port + 1;
  if (cfg.auditExportDir !== undefined) cfg.auditExportDir = path.resolve(cfg.auditExportDir);
  if (cfg.blobS3CaFile !== undefined) cfg.blobS3CaFile = path.resolve(cfg.blobS3CaFile);
  if (cfg.blobS3Endpoint !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(cfg.blobS3Endpoint);
    } catch {
      url = undefined;
    }
    // The URL is not repeated in the message: a mistaken one may carry a secret.
    if (!url || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
      throw new ConfigError('invalid configuration:\n  blobS3Endpoint must be an http(s) URL without user, password, query or fragment (credentials come from the variables blobS3AccessKeyIdEnv and blobS3SecretAccessKeyEnv name)');
    }
  }
  if (cfg.blobBackend === 's3' && cfg.blobS3Bucket === undefined) {
    throw new ConfigError('invalid configuration:\n  blobBackend "s3" needs blobS3Bucket (CUSTOS_BLOB_S3_BUCKET): the upstream bucket blobs are written to');
  }
  if (cfg.rootKeyProvider === 'pkcs11') {
    const missing = [
      ...(cfg.pkcs11Module === undefined ? ['  rootKeyProvider "pkcs11" needs pkcs11Module (CUSTOS_PKCS11_MODULE): the path of the HSM vendor\'s PKCS#11 library'] : []),
      ...(cfg.pkcs11TokenLabel === undefined ? ['  rootKeyProvider "pkcs11" needs pkcs11TokenLabel (CUSTOS_PKCS11_TOKEN_LABEL): the label of the token holding the root key'] : []),
    ];
    if (missing.length > 0) throw new ConfigError(`invalid configuration:\n${missing.join('\n')}`);
  }
  if ((cfg.tlsCert === undefined) !== (cfg.tlsKey === undefined)) {
    throw new ConfigError('invalid configuration:\n  tlsCert and tlsKey must be given together');
  }
  if (!isLoopback(cfg.host) && cfg.tlsCert === undefined && !cfg.insecure) {
    throw new ConfigError(
      `refusing to listen on non-loopback address ${cfg.host} without TLS: give --tls-cert and --tls-key, or --insecure if a TLS proxy sits in front`,
    );
  }
  return cfg;
}

import type { FastifyInstance } from 'fastify';
import type { Config } from '../config.js';
import { openLocalRootKey, type RootKeyProvider } from '../crypto/rootkey.js';
import { openPkcs11RootKey } from '../crypto/rootkey-pkcs11.js';
import { SecretBox } from '../crypto/secretbox.js';
import { AuditService } from '../audit/audit.js';
import { ctsRoutes } from '../audit/http/cts.js';
import { huaweiIamRoutes } from '../iam/http/huawei.js';
import { custosIamRoutes } from '../iam/http/custos.js';
import { IamService } from '../iam/iam.js';
import type { IamTables } from '../iam/store.js';
import { awsKmsRoutes } from '../kms/http/aws.js';
import { huaweiKmsRoutes } from '../kms/http/huawei.js';
import { KmsService, type GrantOperation } from '../kms/kms.js';
import type { KmsTables } from '../kms/store.js';
import { ANONYMOUS_ACTIONS, s3CorsHeaders, s3Routes } from '../obs/http/s3.js';
import { keyDecryptCheck, keyUseCheck } from '../kms/http/common.js';
import { ObsService } from '../obs/obs.js';
import type { ObsTables } from '../obs/store.js';
import { FsBlobStore, type BlobStore } from '../store/blobs.js';
import { DeregistrationService } from '../privacy/deregistration.js';
import { deregistrationRoutes } from '../privacy/http/deregistration.js';
import { privacyRightsRoutes } from '../privacy/http/rights.js';
import { PrivacyRightsService } from '../privacy/rights.js';
import type { RightsTables } from '../privacy/rights-store.js';
import { vaultRoutes } from '../vault/http/custos.js';
import type { VaultTables } from '../vault/store.js';
import { VaultService } from '../vault/vault.js';
import { migrate, openStore, type Store } from '../store/db.js';
import path from 'node:path';
import { buildApp } from './app.js';

export interface Custos {
  app: FastifyInstance;
  url: string;
  store: Store;
  iam: IamService;
  audit: AuditService;
  kms: KmsService;
  obs: ObsService;
  vault: VaultService;
  rights: PrivacyRightsService;
  deregistration: DeregistrationService;
  /** The S3/OBS listener. */
  obsUrl: string;
  /** Where object content (ciphertext) is kept. */
  blobs: BlobStore;
  root: RootKeyProvider;
  bootstrap: Awaited<ReturnType<IamService['bootstrap']>>;
  rootKeyCreated: boolean;
  close(): Promise<void>;
}

export interface Services {
  store: Store;
  root: RootKeyProvider;
  rootKeyCreated: boolean;
  iam: IamService;
  audit: AuditService;
  kms: KmsService;
  obs: ObsService;
  vault: VaultService;
  rights: PrivacyRightsService;
  deregistration: DeregistrationService;
  blobs: BlobStore;
  close(): Promise<void>;
}

/**
 * Opens the root key: the HSM's key is generated only on an installation's first start (no system key
 * wrapped yet); later, a missing key is a wrong label or token, not a reason to make a new one.
 */
async function openRootKey(config: Config, store: Store): Promise<{ provider: RootKeyProvider; created: boolean }> {
  if (config.rootKeyProvider === 'pkcs11') {
    const wrappedKeys = await store.db.withTables<{ system_keys: { name: string } }>().selectFrom('system_keys').select('name').limit(1).execute();
    return openPkcs11RootKey({
      modulePath: config.pkcs11Module!, tokenLabel: config.pkcs11TokenLabel!, keyLabel: config.pkcs11KeyLabel,
      pin: process.env[config.pkcs11PinEnv], pinEnv: config.pkcs11PinEnv, create: wrappedKeys.length === 0,
    });
  }
  return openLocalRootKey({
    dataDir: config.dataDir,
    passphrase: process.env[config.rootKeyPassphraseEnv],
    passphraseEnv: config.rootKeyPassphraseEnv,
  });
}

/** Opens storage, applies migrations, unseals the root key and builds the services (no listener). */
export async function openServices(config: Config, opts: { now?: () => number; onError?: (message: string) => void; plaintextObjectsForBenchmarks?: boolean } = {}): Promise<Services> {
  const store = openStore({ dataDir: config.dataDir, ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}) });
  let root: RootKeyProvider | undefined;
  let blobs: BlobStore | undefined;
  try {
    await migrate(store);
    const { provider: rootKey, created: rootKeyCreated } = await openRootKey(config, store);
    root = rootKey;
    const secrets = await SecretBox.open(store.db, rootKey, 'iam-secrets');
    const durable = () => store.durable();
    const iam = new IamService(store.db.withTables<IamTables>(), secrets, {
      durable,
      regions: config.regions,
      tokenTtlSeconds: config.tokenTtlSeconds,
      signatureWindowSeconds: config.signatureWindowSeconds,
      ...(opts.now ? { now: opts.now } : {}),
    });
    const audit = await AuditService.open(store.db, await SecretBox.open(store.db, rootKey, 'audit-secrets'), {
      dialect: store.dialect,
      digestIntervalSeconds: config.auditDigestIntervalSeconds,
      exportDir: config.auditExportDir ?? null,
      durable,
      ...(store.sqlite ? { sqlite: store.sqlite } : {}),
      ...(opts.now ? { now: opts.now } : {}),
      ...(opts.onError ? { onError: opts.onError } : {}),
    });
    const kms = new KmsService(store.db.withTables<KmsTables>(), rootKey, { durable, ...(opts.now ? { now: opts.now } : {}) });
    // The S3 client is loaded only when it is used.
    blobs = config.blobBackend === 's3' ? await (await import('../store/blobs-s3.js')).openS3BlobStore(config) : new FsBlobStore(path.join(config.dataDir, 'blobs'));
    const obs = new ObsService(store.db.withTables<ObsTables>(), kms, blobs, { maxObjectBytes: config.obsMaxObjectBytes, dialect: store.dialect, durable, ...(opts.now ? { now: opts.now } : {}), ...(opts.plaintextObjectsForBenchmarks ? { plaintextBaselineForBenchmarks: true } : {}) });
    const vault = new VaultService(store.db.withTables<VaultTables>(), kms, { durable, ...(opts.now ? { now: opts.now } : {}) });
    const privacySecrets = await SecretBox.open(store.db, rootKey, 'privacy-secrets');
    const rights = new PrivacyRightsService(store.db.withTables<RightsTables>(), vault, kms, obs, privacySecrets, { ...(opts.now ? { now: opts.now } : {}), allowInternalWebhooks: config.privacyWebhookInternalTargets, onAlert: (m) => opts.onError?.(m) });
    // Every vault read asks the privacy service: consent, restriction, objection.
    vault.setProcessingGate(rights);
    const deregistration = new DeregistrationService(store.db.withTables<RightsTables>(), {
      iam, kms, obs, vault, rights, secrets: privacySecrets, dialect: store.dialect, retentionDays: config.deregistrationRetentionDays, ...(opts.now ? { now: opts.now } : {}),
    });
    return {
      store, root: rootKey, rootKeyCreated, iam, audit, kms, obs, vault, rights, deregistration, blobs,
      async close() {
        await audit.close();
        await store.close();
        await rootKey.close();
        await blobs?.close?.();
      },
    };
  } catch (e) {
    await store.close().catch(() => undefined);
    await root?.close();
    await blobs?.close?.();
    throw e;
  }
}

/**
 * How often a node re-reads the IAM epoch in the background. It keeps the cache warm; the bound on
 * staleness is IAM_MAX_STALENESS_MS (src/iam/cache.ts): a cached decision older than that is
 * confirmed against the database before it is used, whatever this timer does.
 */
export const IAM_EPOCH_POLL_MS = 500;

export interface StartOptions {
  logStream?: NodeJS.WritableStream;
  now?: () => number;
  /**
   * Serve without writing traces. Only for bench/audit's baseline (the same route with tracing off);
   * deliberately not reachable from configuration or the CLI.
   */
  untracedBaselineForBenchmarks?: boolean;
  /** Store objects unencrypted. Only for bench/obs's baseline; not reachable from configuration or the CLI. */
  plaintextObjectsForBenchmarks?: boolean;
}

/** Opens the services, bootstraps once, and starts listening. */
export async function startCustos(config: Config, opts: StartOptions = {}): Promise<Custos> {
  let report: (message: string) => void = (m) => process.stderr.write(`${m}\n`);
  const services = await openServices(config, { ...opts, onError: (m) => report(m) });
  const { store, root, rootKeyCreated, iam, audit, kms, obs, vault, rights, deregistration, blobs } = services;
  try {
    const bootstrap = await iam.bootstrap();
    const now = opts.now ?? Date.now;
    // Whether a caller may use a KMS key that OBS or the vault will use on its behalf.
    const mayUseKey = keyUseCheck(iam, kms);
    const routes = [...huaweiIamRoutes(iam), ...custosIamRoutes(iam), ...ctsRoutes(audit, iam, now), ...huaweiKmsRoutes(kms, iam), ...awsKmsRoutes(kms, iam), ...vaultRoutes(vault, iam, rights, { mayUseKey }), ...privacyRightsRoutes(rights, iam, vault, obs), ...deregistrationRoutes(deregistration)];
    const app = await buildApp({
      config, store, iam, audit: opts.untracedBaselineForBenchmarks ? null : audit, routes, now,
      serviceCounters: [
        ['custos_kms_material_unwraps_total', 'CMK versions unwrapped by the root key (cache misses)', () => kms.stats.materialUnwraps],
        ['custos_kms_material_cache_hits_total', 'CMK material served from the in-memory cache', () => kms.stats.materialCacheHits],
        ['custos_kms_rotations_total', 'CMK rotations made by this node', () => kms.stats.rotations],
        ['custos_kms_keys_destroyed_total', 'CMKs destroyed (crypto-shredded) by this node', () => kms.stats.destroyed],
        ['custos_kms_key_cache_hits_total', 'CMK rows served from the per-node cache', () => kms.rowCache.stats.hits],
        ['custos_kms_key_cache_misses_total', 'CMK rows read from the database', () => kms.rowCache.stats.misses],
        ['custos_kms_epoch_read_failures_total', 'Failed reads of the KMS epoch (cached rows are not served meanwhile)', () => kms.rowCache.stats.epochReadFailures],
        ['custos_vault_records_written_total', 'Vault records created or rectified by this node', () => vault.stats.recordsWritten],
        ['custos_vault_records_read_total', 'Vault records decrypted for a read, search or list by this node', () => vault.stats.recordsRead],
        ['custos_vault_values_deleted_total', 'Vault values deleted by their retention rule on this node', () => vault.stats.valuesDeleted],
        ['custos_vault_values_deferred_total', 'Due vault values the retention job could not delete yet: their sealed group holds values not yet due and the collection\'s KMS key cannot be used', () => vault.stats.valuesDeferred],
        ['custos_privacy_requests_completed_total', 'Data-subject requests carried out by this node', () => rights.stats.requestsCompleted],
        ['custos_privacy_requests_overdue_total', 'Data-subject requests found past their deadline (one alert each)', () => rights.stats.overdueAlerts],
        ['custos_accounts_destroyed_total', 'Deregistered accounts destroyed by this node', () => deregistration.stats.destroyed],
        ['custos_vault_records_deleted_total', 'Vault records deleted (with their data keys) by this node', () => vault.stats.recordsDeleted],
      ],
      grantAllows: (resource, p, op) => (resource.service === 'kms' && resource.type === 'KeyId' ? kms.grantAllows(resource.id, p.userId, op as GrantOperation) : Promise.resolve(false)),
      ...(opts.logStream ? { logStream: opts.logStream } : {}),
    });
    report = (m) => app.log.error(m);
    const s3App = await buildApp({
      config, store, iam, audit: opts.untracedBaselineForBenchmarks ? null : audit, routes: s3Routes(obs, iam, config.regions, rights, { corsOrigins: config.obsCorsOrigins, mayUseKey, mayDecryptWith: keyDecryptCheck(iam, kms) }), now, listener: 's3', onSend: s3CorsHeaders, anonymousActions: ANONYMOUS_ACTIONS,
      ...(opts.logStream ? { logStream: opts.logStream } : {}),
    });
    // Digests that fell due while no node ran (a stop before the next one, a long outage) are written
    // before serving, so the trail's unsigned tail never spans a downtime (the verifier takes a long
    // unsigned span for removed digests).
    await audit.writeDueDigests().catch((e: Error) => app.log.warn({ err: { message: e.message } }, 'audit digest at start-up failed'));
    const address = await app.listen({ host: config.host, port: config.port });
    let obsUrl: string;
    try {
      obsUrl = await s3App.listen({ host: config.host, port: config.obsPort! });
    } catch (e) {
      await app.close();
      throw e;
    }
    const warn = (what: string) => (err: Error) => app.log.warn({ err: { message: err.message } }, `${what} failed`);
    const timers = [
      setInterval(() => iam.purgeExpired().catch(warn('IAM housekeeping')), 60_000),
      // IAM changes made on other nodes reach this node's cache within this interval.
      setInterval(() => iam.pollEpoch().catch(warn('IAM epoch poll')), IAM_EPOCH_POLL_MS),
      // Likewise for KMS key rows (a key disabled or destroyed on another node).
      setInterval(() => kms.pollEpoch().catch(warn('KMS epoch poll')), IAM_EPOCH_POLL_MS),
      // Any node may write a due digest; the chain-head lock makes exactly one of them do it.
      setInterval(() => audit.writeDueDigests().catch(warn('audit digest')), Math.min(60, config.auditDigestIntervalSeconds / 4) * 1000),
      setInterval(() => audit.clearExpired().catch(warn('audit retention')), 3_600_000),
      // Key destruction, expiry of imported material and automatic rotation; each step is a
      // conditional update, so however many nodes run this, each piece of work happens once.
      setInterval(() => kms.runDueJobs().catch(warn('KMS jobs')), 60_000),
      // Vault retention rules; one node at a time holds the run's lease.
      setInterval(() => vault.runRetention().catch(warn('vault retention')), 60_000),
      // Overdue data-subject requests raise their alert once; expired archives go.
      setInterval(() => rights.runDueJobs().catch(warn('privacy jobs')), 60_000),
      // Accounts whose deregistration retention ended are destroyed (each claimed by one node).
      setInterval(() => deregistration.runDue().catch(warn('account destruction')), 60_000),
      // Webhook notifications of data-subject request changes (signed, retried with backoff).
      setInterval(() => rights.runOutbox().catch(warn('privacy webhooks')), 10_000),
      // Bucket lifecycle rules; one node at a time holds the run's lease.
      setInterval(() => obs.runLifecycle().catch(warn('OBS lifecycle')), 600_000),
      // Blobs of uploads whose node died before committing them.
      setInterval(() => obs.collectOrphans().then(() => blobs.clearInterruptedWrites(3_600_000, now())).catch(warn('OBS orphan collection')), 600_000),
    ];
    for (const t of timers) t.unref();
    let closed = false;
    return {
      app, url: address, obsUrl, blobs, store, iam, audit, kms, obs, vault, rights, deregistration, root, bootstrap, rootKeyCreated,
      async close() {
        if (closed) return;
        closed = true;
        for (const t of timers) clearInterval(t);
        await Promise.all([app.close(), s3App.close()]);
        await audit.drain();
        await services.close();
      },
    };
  } catch (e) {
    await services.close().catch(() => undefined);
    throw e;
  }
}

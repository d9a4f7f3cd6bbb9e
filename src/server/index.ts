import type { FastifyInstance } from 'fastify';
import type { Config } from '../config.js';
import { openLocalRootKey, type RootKeyProvider } from '../crypto/rootkey.js';
import { SecretBox } from '../crypto/secretbox.js';
import { huaweiIamRoutes } from '../iam/http/huawei.js';
import { custosIamRoutes } from '../iam/http/custos.js';
import { IamService } from '../iam/iam.js';
import type { IamTables } from '../iam/store.js';
import { migrate, openStore, type Store } from '../store/db.js';
import { buildApp } from './app.js';

export interface Custos {
  app: FastifyInstance;
  url: string;
  store: Store;
  iam: IamService;
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
  close(): Promise<void>;
}

/** Unseals the root key, opens storage, applies migrations and builds the services (no listener). */
export async function openServices(config: Config, opts: { now?: () => number } = {}): Promise<Services> {
  const { provider: root, created: rootKeyCreated } = openLocalRootKey({
    dataDir: config.dataDir,
    passphrase: process.env[config.rootKeyPassphraseEnv],
    passphraseEnv: config.rootKeyPassphraseEnv,
  });
  const store = openStore({ dataDir: config.dataDir, ...(config.databaseUrl ? { databaseUrl: config.databaseUrl } : {}) });
  try {
    await migrate(store);
    const secrets = await SecretBox.open(store.db, root, 'iam-secrets');
    const iam = new IamService(store.db.withTables<IamTables>(), secrets, {
      regions: config.regions,
      tokenTtlSeconds: config.tokenTtlSeconds,
      signatureWindowSeconds: config.signatureWindowSeconds,
      ...(opts.now ? { now: opts.now } : {}),
    });
    return {
      store, root, rootKeyCreated, iam,
      async close() {
        await store.close();
        await root.close();
      },
    };
  } catch (e) {
    await store.close().catch(() => undefined);
    await root.close();
    throw e;
  }
}

/** Opens the services, bootstraps once, and starts listening. */
export async function startCustos(config: Config, opts: { logStream?: NodeJS.WritableStream; now?: () => number } = {}): Promise<Custos> {
  const services = await openServices(config, opts);
  const { store, root, rootKeyCreated, iam } = services;
  try {
    const bootstrap = await iam.bootstrap();
    const routes = [...huaweiIamRoutes(iam), ...custosIamRoutes(iam)];
    const app = await buildApp({ config, store, iam, audit: null, routes, ...(opts.logStream ? { logStream: opts.logStream } : {}) });
    const address = await app.listen({ host: config.host, port: config.port });
    const housekeeping = setInterval(() => {
      iam.purgeExpired().catch((err: Error) => app.log.warn({ err: { message: err.message } }, 'housekeeping failed'));
    }, 60_000);
    housekeeping.unref();
    let closed = false;
    return {
      app, url: address, store, iam, root, bootstrap, rootKeyCreated,
      async close() {
        if (closed) return;
        closed = true;
        clearInterval(housekeeping);
        await app.close();
        await services.close();
      },
    };
  } catch (e) {
    await services.close().catch(() => undefined);
    throw e;
  }
}

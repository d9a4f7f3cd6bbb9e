import { startCustos, type StartOptions } from '../server/index.js';
import { configFrom } from './options.js';

/** Runs the server until SIGTERM/SIGINT, printing where it listens and how to log in. */
export async function serve(opts: Record<string, unknown>, start: StartOptions = {}): Promise<void> {
  const config = configFrom(opts);
  const custos = await startCustos(config, start);
  const out = process.stderr;
  out.write(`\nCustos is listening on ${custos.url}  (health: ${custos.url}/health, metrics: ${custos.url}/metrics, OpenAPI: ${custos.url}/openapi.json)\n`);
  out.write(`S3/OBS listener on ${custos.obsUrl}  (path-style, e.g. aws s3 ls --endpoint-url ${custos.obsUrl})\n`);
  out.write(`Storage: ${custos.store.dialect === 'sqlite' ? `SQLite in ${config.dataDir}` : 'PostgreSQL'}; root key: ${custos.root.kind === 'pkcs11' ? `pkcs11 (HSM token "${config.pkcs11TokenLabel}", key "${config.pkcs11KeyLabel}"${custos.rootKeyCreated ? ', generated in the HSM now: back it up by the HSM\'s own means' : ''})` : custos.root.kind}${custos.root.development ? ' (DEVELOPMENT key: its passphrase is stored beside it; set CUSTOS_ROOT_PASSPHRASE before first start in production)' : ''}\n`);
  if (custos.bootstrap.password) {
    out.write(
      `\nBootstrap administrator created (shown once, store it now):\n  account: ${custos.bootstrap.accountName}\n  user:    ${custos.bootstrap.userName}\n  password: ${custos.bootstrap.password}\n` +
        `Log in:  custos login --endpoint ${custos.url} --account ${custos.bootstrap.accountName} --user ${custos.bootstrap.userName}\n` +
        `   or:   curl -si ${custos.url}/v3/auth/tokens -H 'content-type: application/json' -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"${custos.bootstrap.userName}","password":"<password>","domain":{"name":"${custos.bootstrap.accountName}"}}}}}}'\n\n`,
    );
  } else {
    out.write(`Log in as an existing user: custos login --endpoint ${custos.url} --account <account> --user <user>  (lost the bootstrap password? custos admin reset-password --account custos --user admin)\n\n`);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    custos.app.log.info({ signal }, 'shutting down: finishing in-flight requests');
    const force = setTimeout(() => {
      custos.app.log.error('shutdown grace period over; exiting');
      process.exit(1);
    }, config.shutdownGraceMs);
    force.unref();
    custos.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}


import { Command, Option } from 'commander';
import { loadConfig, type Config } from '../config.js';

/** Flags shared by every command that opens the server's own storage. */
export function withServerOptions(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'JSON configuration file (also CUSTOS_CONFIG)')
    .option('--data-dir <dir>', 'directory for the SQLite database, blobs and the local root key (default ./data)')
    .option('--database-url <url>', 'PostgreSQL URL instead of the embedded SQLite (also CUSTOS_DATABASE_URL)')
    .option('--host <address>', 'address to listen on (default 127.0.0.1)')
    .option('--port <port>', 'port of the main listener (default 8080)', (v) => Number.parseInt(v, 10))
    .option('--obs-port <port>', 'port of the S3/OBS listener (default: the main port + 1)', (v) => Number.parseInt(v, 10))
    .option('--tls-cert <file>', 'PEM certificate for HTTPS')
    .option('--tls-key <file>', 'PEM private key for HTTPS')
    .option('--insecure', 'allow a non-loopback address without TLS (only behind a TLS-terminating proxy)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']));
}

export function configFrom(opts: Record<string, unknown>): Config {
  const flags: Partial<Config> = {};
  const map: [string, keyof Config][] = [
    ['dataDir', 'dataDir'], ['databaseUrl', 'databaseUrl'], ['host', 'host'], ['port', 'port'], ['obsPort', 'obsPort'],
    ['tlsCert', 'tlsCert'], ['tlsKey', 'tlsKey'], ['insecure', 'insecure'], ['logLevel', 'logLevel'],
  ];
  for (const [from, to] of map) if (opts[from] !== undefined) (flags as Record<string, unknown>)[to] = opts[from];
  return loadConfig({ ...(typeof opts.config === 'string' ? { file: opts.config } : {}), flags });
}


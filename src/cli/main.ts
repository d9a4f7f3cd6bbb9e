#!/usr/bin/env node
import { Command } from 'commander';
import { ConfigError } from '../config.js';
import { withServerOptions } from './options.js';
import { RootKeyError } from '../crypto/rootkey.js';
import { adminCommands } from './admin.js';
import { auditCommand } from './audit.js';
import { clientCommands } from './client.js';
import { kmsCommand } from './kms.js';
import { obsCommand } from './obs.js';
import { vaultCommand } from './vault.js';
import { privacyCommand } from './privacy-rights.js';
import { serve } from './serve.js';

const program = new Command()
  .name('custos')
  .description('Custos: self-hosted IAM, audit, KMS, object storage and personal-data vault')
  .version('0.1.0')
  .showHelpAfterError();

withServerOptions(program.command('serve').description('run the Custos server')).action((opts) => serve(opts));
program.addCommand(adminCommands());
for (const c of clientCommands()) program.addCommand(c);
program.addCommand(auditCommand());
program.addCommand(kmsCommand());
program.addCommand(obsCommand());
program.addCommand(vaultCommand());
program.addCommand(privacyCommand());

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof ConfigError || e instanceof RootKeyError) {
    process.stderr.write(`custos: ${e.message}\n`);
    process.exit(2);
  }
  const err = e as Error & { exitCode?: number };
  process.stderr.write(`custos: ${err.message}\n`);
  process.exit(err.exitCode ?? 1);
});

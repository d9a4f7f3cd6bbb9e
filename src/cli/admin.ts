import { randomBytes } from 'node:crypto';
import { Command } from 'commander';
import { openServices } from '../server/index.js';
import { configFrom, withServerOptions } from './options.js';
import { print, type OutputFormat } from './output.js';

/** Operator commands that work on the server's own storage directly (run them where the server runs). */
export function adminCommands(): Command {
  const admin = new Command('admin').description('operator commands on the local storage: bootstrap, accounts, lockouts');
  const withServices = async <T>(opts: Record<string, unknown>, fn: (s: Awaited<ReturnType<typeof openServices>>) => Promise<T>) => {
    const services = await openServices(configFrom(opts));
    try {
      return await fn(services);
    } finally {
      await services.close();
    }
  };
  const output = (cmd: Command) => cmd.option('-o, --output <format>', 'json or table', 'table');

  withServerOptions(admin.command('bootstrap').description('apply migrations and create the operator account once')).action(async (opts) => {
    await withServices(opts, async ({ iam }) => {
      const r = await iam.bootstrap();
      if (r.password) process.stdout.write(`operator account ${r.accountName}, user ${r.userName}, password ${r.password} (shown once)\n`);
      else process.stdout.write(`already bootstrapped: account ${r.accountName}\n`);
    });
  });

  output(withServerOptions(admin.command('create-account').description('create an account (tenant) and its first administrator')))
    .requiredOption('--name <name>', 'account name')
    .option('--admin-name <name>', 'first administrator user name', 'admin')
    .option('--admin-email <email>', 'administrator email')
    .action(async (opts) => {
      await withServices(opts, async ({ iam }) => {
        const password = process.env.CUSTOS_NEW_PASSWORD || `Cu-${randomBytes(12).toString('base64url')}`;
        const { account, adminUserId } = await iam.createAccount({ name: opts.name, adminName: opts.adminName, adminPassword: password, ...(opts.adminEmail ? { email: opts.adminEmail } : {}) });
        print(opts.output as OutputFormat, [
          { account: account.name, account_id: account.id, admin: opts.adminName, admin_user_id: adminUserId, password: process.env.CUSTOS_NEW_PASSWORD ? '(from CUSTOS_NEW_PASSWORD)' : password },
        ]);
      });
    });

  const findUser = async (iam: Awaited<ReturnType<typeof openServices>>['iam'], accountName: string, userName: string) => {
    const account = await iam.getAccountByName(accountName);
    const user = account ? await iam.getUserByName(account.id, userName) : undefined;
    if (!account || !user) throw Object.assign(new Error(`no user ${userName} in account ${accountName}`), { exitCode: 3 });
    return { account, user };
  };

  withServerOptions(admin.command('unlock-user').description('clear a user lockout after failed logins'))
    .requiredOption('--account <name>', 'account name')
    .requiredOption('--user <name>', 'user name')
    .action(async (opts) => {
      await withServices(opts, async ({ iam }) => {
        const { account, user } = await findUser(iam, opts.account, opts.user);
        await iam.unlockUser(account.id, user.id);
        process.stdout.write(`unlocked ${opts.user} in ${opts.account}\n`);
      });
    });

  withServerOptions(admin.command('reset-password').description("set a new random password for a user (ends the user's sessions)"))
    .requiredOption('--account <name>', 'account name')
    .requiredOption('--user <name>', 'user name')
    .action(async (opts) => {
      await withServices(opts, async ({ iam }) => {
        const { user } = await findUser(iam, opts.account, opts.user);
        const password = `Cu-${randomBytes(12).toString('base64url')}`;
        await iam.setPassword(user, password);
        process.stdout.write(`new password for ${opts.user} in ${opts.account}: ${password}\n`);
      });
    });

  output(withServerOptions(admin.command('list-accounts').description('list accounts'))).action(async (opts) => {
    await withServices(opts, async ({ iam }) => {
      print(opts.output as OutputFormat, (await iam.listAccounts()).map((a) => ({ name: a.name, id: a.id, status: a.status, created: new Date(a.created_at).toISOString() })));
    });
  });
  return admin;
}

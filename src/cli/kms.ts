/** `custos kms ...`: key management and envelope encryption through the Huawei KMS API with a stored profile. */
import { readFileSync, writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { call, profile } from './client.js';
import { print, type OutputFormat } from './output.js';

type Profile = ReturnType<typeof profile>;
const STATES: Record<string, string> = { '2': 'enabled', '3': 'disabled', '4': 'pending deletion', '5': 'pending import' };

async function projectBase(p: Profile, project: string | undefined): Promise<string> {
  const r = (await call(p, 'GET', '/v3/projects')) as { projects: { id: string; name: string }[] };
  if (!project) {
    throw Object.assign(new Error(`give --project (or CUSTOS_PROJECT): one of ${r.projects.map((x) => x.name).join(', ')}`), { exitCode: 2 });
  }
  const found = r.projects.find((x) => x.name === project || x.id === project);
  if (!found) throw Object.assign(new Error(`no project ${project}; projects: ${r.projects.map((x) => x.name).join(', ')}`), { exitCode: 3 });
  return `/v1.0/${found.id}/kms`;
}

function context(pairs: string[] | undefined): Record<string, string> | undefined {
  if (!pairs?.length) return undefined;
  return Object.fromEntries(
    pairs.map((kv) => {
      const i = kv.indexOf('=');
      if (i <= 0) throw Object.assign(new Error(`--context takes key=value, not ${kv}`), { exitCode: 2 });
      return [kv.slice(0, i), kv.slice(i + 1)];
    }),
  );
}

export function kmsCommand(): Command {
  const kms = new Command('kms').description('KMS: customer master keys, encryption, data keys');
  const common = (c: Command) =>
    c
      .option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default')
      .option('--project <name|id>', 'project (region) the keys live in', process.env.CUSTOS_PROJECT)
      .option('-o, --output <format>', 'json or table', 'table');
  const run = async (opts: { profile: string; project?: string }, op: string, body: unknown) => {
    const p = profile(opts.profile);
    return (await call(p, 'POST', `${await projectBase(p, opts.project)}/${op}`, body)) as Record<string, any>;
  };

  const keys = kms.command('keys').description('customer master keys');
  common(keys.command('list').description('list keys (every page)')).option('--state <state>', 'enabled, disabled, pending-deletion or pending-import').action(async (opts) => {
    const code = opts.state ? { enabled: '2', disabled: '3', 'pending-deletion': '4', 'pending-import': '5' }[opts.state as string] : undefined;
    if (opts.state && !code) throw Object.assign(new Error('--state is enabled, disabled, pending-deletion or pending-import'), { exitCode: 2 });
    const rows: Record<string, unknown>[] = [];
    let marker: string | undefined;
    do {
      const r = await run(opts, 'list-keys', { limit: '1000', ...(marker ? { marker } : {}), ...(code ? { key_state: code } : {}) });
      for (const k of r.key_details) rows.push({ id: k.key_id, alias: k.key_alias, spec: k.key_spec, usage: k.key_usage, state: STATES[k.key_state] ?? k.key_state, rotation: k.key_rotation_enabled, created: new Date(Number(k.creation_date)).toISOString() });
      marker = r.truncated === 'true' ? r.next_marker : undefined;
    } while (marker);
    print(opts.output as OutputFormat, rows);
  });
  common(keys.command('create').description('create a key'))
    .requiredOption('--alias <alias>', 'alias, unique in the project')
    .option('--spec <spec>', 'AES_256, RSA_2048, RSA_3072, RSA_4096, EC_P256 or EC_P384', 'AES_256')
    .option('--usage <usage>', 'ENCRYPT_DECRYPT or SIGN_VERIFY')
    .option('--description <text>', 'description')
    .option('--external', 'the material will be imported (bring your own key)')
    .action(async (opts) => {
      const r = await run(opts, 'create-key', { key_alias: opts.alias, key_spec: opts.spec, ...(opts.usage ? { key_usage: opts.usage } : {}), ...(opts.description ? { key_description: opts.description } : {}), ...(opts.external ? { origin: 'external' } : {}) });
      print(opts.output as OutputFormat, [{ id: r.key_info.key_id, alias: opts.alias, spec: opts.spec }]);
    });
  common(keys.command('describe').description('show a key')).requiredOption('--key-id <id>', 'key id').action(async (opts) => {
    const k = (await run(opts, 'describe-key', { key_id: opts.keyId })).key_info;
    print(opts.output as OutputFormat, [{ ...k, key_state: STATES[k.key_state] ?? k.key_state }]);
  });
  for (const [name, op, what] of [['enable', 'enable-key', 'enable a key'], ['disable', 'disable-key', 'disable a key (it refuses every cryptographic operation)'], ['cancel-deletion', 'cancel-key-deletion', 'cancel a scheduled deletion (the key comes back disabled)']] as const) {
    common(keys.command(name).description(what)).requiredOption('--key-id <id>', 'key id').action(async (opts) => {
      const r = await run(opts, op, { key_id: opts.keyId });
      const state = r.key_info?.key_state ?? r.key_state;
      print(opts.output as OutputFormat, [{ id: opts.keyId, state: STATES[state] ?? state }]);
    });
  }
  common(keys.command('schedule-deletion').description('destroy a key after a waiting period (7 to 1096 days); its data becomes unrecoverable then'))
    .requiredOption('--key-id <id>', 'key id')
    .requiredOption('--days <n>', 'waiting period in days')
    .action(async (opts) => {
      await run(opts, 'schedule-key-deletion', { key_id: opts.keyId, pending_days: String(opts.days) });
      const k = (await run(opts, 'describe-key', { key_id: opts.keyId })).key_info;
      print(opts.output as OutputFormat, [{ id: opts.keyId, state: STATES[k.key_state], destroyed_after: new Date(Number(k.scheduled_deletion_date)).toISOString() }]);
    });
  common(keys.command('rotation').description('turn automatic rotation on or off'))
    .requiredOption('--key-id <id>', 'key id')
    .option('--on', 'turn rotation on')
    .option('--off', 'turn rotation off')
    .option('--interval <days>', 'rotation interval (30 to 365 days)')
    .action(async (opts) => {
      if (opts.on && opts.off) throw Object.assign(new Error('give --on or --off, not both'), { exitCode: 2 });
      if (opts.on) await run(opts, 'enable-key-rotation', { key_id: opts.keyId });
      if (opts.off) await run(opts, 'disable-key-rotation', { key_id: opts.keyId });
      if (opts.interval) await run(opts, 'update-key-rotation-interval', { key_id: opts.keyId, rotation_interval: Number(opts.interval) });
      const s = await run(opts, 'get-key-rotation-status', { key_id: opts.keyId });
      print(opts.output as OutputFormat, [{ id: opts.keyId, rotation: s.key_rotation_enabled, interval_days: s.rotation_interval, rotations: s.number_of_rotations }]);
    });

  common(kms.command('encrypt').description('encrypt up to 4096 bytes under a key; prints the base64 ciphertext'))
    .requiredOption('--key-id <id>', 'key id')
    .requiredOption('--in <file>', 'file to encrypt (text, up to 4096 bytes)')
    .option('--context <key=value...>', 'encryption context, needed again to decrypt')
    .action(async (opts) => {
      const r = await run(opts, 'encrypt-data', { key_id: opts.keyId, plain_text: readFileSync(opts.in, 'utf8'), ...(context(opts.context) ? { encryption_context: context(opts.context) } : {}) });
      process.stdout.write(`${r.cipher_text}\n`);
    });
  common(kms.command('decrypt').description('decrypt a base64 ciphertext (the key is named inside it)'))
    .requiredOption('--in <file>', 'file holding the base64 ciphertext')
    .option('--out <file>', 'write the plaintext here (default: standard output)')
    .option('--context <key=value...>', 'the encryption context it was encrypted with')
    .action(async (opts) => {
      const r = await run(opts, 'decrypt-data', { cipher_text: readFileSync(opts.in, 'utf8').trim(), ...(context(opts.context) ? { encryption_context: context(opts.context) } : {}) });
      const plain = Buffer.from(r.plain_text_base64, 'base64');
      if (opts.out) writeFileSync(opts.out, plain, { mode: 0o600 });
      else process.stdout.write(plain);
    });
  common(kms.command('datakey').description('generate a data key: prints its plaintext and ciphertext (hex)'))
    .requiredOption('--key-id <id>', 'key id')
    .option('--bits <n>', 'data key length in bits', '256')
    .option('--without-plaintext', 'only the encrypted data key')
    .action(async (opts) => {
      const r = await run(opts, opts.withoutPlaintext ? 'create-datakey-without-plaintext' : 'create-datakey', { key_id: opts.keyId, datakey_length: String(opts.bits) });
      print(opts.output as OutputFormat, [{ key_id: r.key_id, ...(r.plain_text ? { plain_text: r.plain_text } : {}), cipher_text: r.cipher_text }]);
    });
  return kms;
}

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { Command } from 'commander';
import { DEFAULT_MAX_UNSIGNED_MS, KEYS_FORMAT, TRACES_FORMAT, verifyTrail, type Digest, type PublicKeyInfo, type StoredTrace } from '../audit/chain.js';
import { addExportDoc, filesUnder, loadExportChecked, newExportMeta, readKeysFile } from '../audit/verify-parallel.js';
import { openServices } from '../server/index.js';
import { call, profile } from './client.js';
import { configFrom, withServerOptions } from './options.js';
import { print, type OutputFormat } from './output.js';

function parseTime(s: string | undefined, name: string): number | undefined {
  if (s === undefined) return undefined;
  const t = /^\d+$/.test(s) ? Number(s) : Date.parse(s);
  if (!Number.isFinite(t)) throw Object.assign(new Error(`${name}: give epoch milliseconds or an ISO date, not "${s}"`), { exitCode: 2 });
  return t;
}


/**
 * Reads an export directory: traces in file order (files sorted by their first seq), all digests, the
 * public keys, and where each trail's export means to start.
 */
export async function loadExport(dir: string, keysFile?: string): Promise<{ traces: StoredTrace[]; digests: Digest[]; keys: PublicKeyInfo[]; exportedFrom: Record<string, number> }> {
  const files = await filesUnder(dir);
  const traces: StoredTrace[] = [];
  const meta = newExportMeta();
  for (const f of files) {
    const base = path.basename(f);
    if (!base.endsWith('.json.gz') && !base.endsWith('.json')) continue;
    const raw = await readFile(f);
    let doc: { format?: string; traces?: StoredTrace[] };
    try {
      doc = JSON.parse((base.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8'));
    } catch {
      throw Object.assign(new Error(`${f} is not a readable export file`), { exitCode: 1 });
    }
    if (doc.format === TRACES_FORMAT && doc.traces) traces.push(...doc.traces);
    else addExportDoc(meta, doc, keysFile !== undefined);
  }
  return { traces, digests: [...meta.digests.values()], keys: keysFile ? await readKeysFile(keysFile) : meta.keys, exportedFrom: meta.exportedFrom };
}

export function auditCommand(): Command {
  const audit = new Command('audit').description('audit trail (CTS): search traces, export and verify the signed trail');
  const common = (c: Command) => c.option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default').option('-o, --output <format>', 'json or table', 'table');

  common(audit.command('search').description("search the account's traces (newest first)"))
    .option('--type <type>', 'system (management) or data', 'system')
    .option('--from <time>', 'start, epoch ms or ISO date (default: one hour ago)')
    .option('--to <time>', 'end, epoch ms or ISO date (default: now)')
    .option('--project <name>', 'project name or id (default: the first project of the account)')
    .option('--service <type>', 'service_type, e.g. IAM')
    .option('--resource-type <type>', 'resource_type')
    .option('--resource-id <id>', 'resource_id')
    .option('--resource-name <name>', 'resource_name')
    .option('--name <action>', 'trace_name, e.g. iam:users:createUser')
    .option('--rating <rating>', 'normal, warning or incident')
    .option('--user <name>', 'user name')
    .option('--trace-id <id>', 'one trace')
    .option('--limit <n>', 'traces per page (1-200)', (v) => Number.parseInt(v, 10), 50)
    .option('--all', 'follow the pagination marker to the end')
    .action(async (opts) => {
      const p = profile(opts.profile);
      const projects = ((await call(p, 'GET', '/v3/auth/projects')) as { projects: { id: string; name: string }[] }).projects;
      const project = opts.project ? projects.find((x) => x.name === opts.project || x.id === opts.project) : projects[0];
      if (!project) throw Object.assign(new Error(`no project ${opts.project ?? ''} in this account`), { exitCode: 3 });
      const q = new URLSearchParams({ trace_type: opts.type, limit: String(opts.limit) });
      const from = parseTime(opts.from, '--from');
      const to = parseTime(opts.to, '--to');
      if (from !== undefined) q.set('from', String(from));
      if (to !== undefined) q.set('to', String(to));
      const map: [string, string][] = [['service', 'service_type'], ['resourceType', 'resource_type'], ['resourceId', 'resource_id'], ['resourceName', 'resource_name'], ['name', 'trace_name'], ['rating', 'trace_rating'], ['user', 'user'], ['traceId', 'trace_id']];
      for (const [o, k] of map) if (opts[o]) q.set(k, String(opts[o]));
      const all: Record<string, unknown>[] = [];
      for (;;) {
        const r = (await call(p, 'GET', `/v3/${project.id}/traces?${q.toString()}`)) as { traces: Record<string, unknown>[]; meta_data: { marker: string | null } };
        all.push(...r.traces);
        if (!opts.all && r.meta_data.marker) process.stderr.write('more traces may match further back: add --all to follow the pages\n');
        if (!opts.all || !r.meta_data.marker) break;
        q.set('next', r.meta_data.marker);
        process.stderr.write(`\r${all.length} traces…`);
      }
      if (opts.all) process.stderr.write(`\r${all.length} traces\n`);
      if (opts.output === 'json') return print('json', all);
      print(opts.output as OutputFormat, all.map((t) => {
        const u = t.user as { name: string | null; domain: { name: string | null } };
        return { time: new Date(t.time as number).toISOString(), trace_name: t.trace_name, code: t.code, rating: t.trace_rating, user: u.name ? `${u.name}@${u.domain.name}` : '-', source_ip: t.source_ip, resource: t.resource_name ?? t.resource_id ?? '', trace_id: t.trace_id };
      }));
    });

  audit
    .command('public-keys')
    .description('fetch the public keys that verify digests (no login needed) and print or save them')
    .requiredOption('--endpoint <url>', 'Custos main listener')
    .option('--save <file>', 'write them to this file for `custos audit verify --public-keys`')
    .action(async (opts) => {
      const res = await fetch(new URL('/v1/audit/public-keys', opts.endpoint));
      if (!res.ok) throw Object.assign(new Error(`could not fetch the public keys: HTTP ${res.status}`), { exitCode: 1 });
      const body = (await res.json()) as { public_keys: PublicKeyInfo[] };
      const text = JSON.stringify({ format: KEYS_FORMAT, keys: body.public_keys }, null, 2) + '\n';
      if (opts.save) {
        const { writeFile } = await import('node:fs/promises');
        await writeFile(opts.save, text);
        process.stderr.write(`saved ${body.public_keys.length} key(s) to ${opts.save}\n`);
      } else process.stdout.write(text);
    });

  audit
    .command('verify <dir>')
    .description('verify an exported trail offline: hash chain, digest signatures and coverage')
    .option('--public-keys <file>', 'public keys to trust (default: public-keys.json in the export; pass your own copy to not trust the export)')
    .option('--max-unsigned-hours <n>', 'longest span of traces with no digest covering them that is not taken for removed digests', String(DEFAULT_MAX_UNSIGNED_MS / 3_600_000))
    .option('-o, --output <format>', 'json or table', 'table')
    .action(async (dir: string, opts) => {
      const maxUnsignedHours = Number(opts.maxUnsignedHours);
      if (!(maxUnsignedHours > 0)) throw Object.assign(new Error('--max-unsigned-hours: give a number of hours above 0'), { exitCode: 2 });
      const progress = process.stderr.isTTY ? (n: number) => process.stderr.write(`\r${n} traces read and re-hashed`) : undefined;
      const { links, digests, keys, exportedFrom } = await loadExportChecked(dir, { ...(opts.publicKeys ? { keysFile: opts.publicKeys } : {}), ...(progress ? { onProgress: progress } : {}) });
      if (progress) process.stderr.write('\n');
      if (keys.length === 0) throw Object.assign(new Error('no public keys: pass --public-keys or export with public-keys.json'), { exitCode: 2 });
      process.stderr.write(`verifying ${links.length} traces and ${digests.length} digests with ${keys.length} public key(s)\n`);
      const report = verifyTrail(links, digests, keys, undefined, { exportedFrom, maxUnsignedMs: maxUnsignedHours * 3_600_000 });
      if (opts.output === 'json') process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else {
        print('table', report.trails.map((t) => ({
          trail: t.trail || 'platform', from: t.verified_from, traces: t.traces, digests: t.digests, unsigned_tail: t.unsigned_tail,
          first_trace_problem: t.first_trace_problem?.message ?? 'none', first_digest_problem: t.first_digest_problem?.message ?? 'none',
        })));
        // An export starting later than the trail's first trace vouches for nothing before it: say so.
        const partial = report.trails.filter((t) => t.verified_from > 1);
        const scope = partial.length ? ` from the position each export says it starts at (${partial.map((t) => `${t.trail || 'platform'} from ${t.verified_from}`).join(', ')}; earlier traces were not checked)` : '';
        process.stdout.write(report.ok ? `OK: every trace and digest verifies${scope}\n` : 'FAILED: the trail was tampered with or is incomplete\n');
      }
      if (!report.ok) process.exitCode = 4;
    });

  const withServices = async <T>(opts: Record<string, unknown>, fn: (s: Awaited<ReturnType<typeof openServices>>) => Promise<T>) => {
    const services = await openServices(configFrom(opts));
    try {
      return await fn(services);
    } finally {
      await services.close();
    }
  };

  withServerOptions(audit.command('export').description('(operator, on the server host) export trails with digests and public keys to a directory'))
    .requiredOption('--out <dir>', 'directory to write to')
    .option('--account <name>', 'only this account (default: every trail)')
    .option('--from <time>', 'start at the digest range holding this time (epoch ms or ISO date)')
    .action(async (opts) => {
      await withServices(opts, async ({ iam, audit: svc }) => {
        let trails: string[] | undefined;
        if (opts.account) {
          const a = await iam.getAccountByName(opts.account);
          if (!a) throw Object.assign(new Error(`no account ${opts.account}`), { exitCode: 3 });
          trails = [a.id];
        }
        const from = parseTime(opts.from, '--from');
        const summary = await svc.exportTo(opts.out, { ...(trails ? { trails } : {}), ...(from !== undefined ? { from } : {}), onProgress: (m) => process.stderr.write(`\r${m}`) });
        process.stderr.write('\n');
        print('table', summary.map((s) => ({ trail: s.trail || 'platform', traces: s.traces, digests: s.digests })));
      });
    });
  withServerOptions(audit.command('digest').description('(operator) write the digests that are due now, or all with --force'))
    .option('--force', 'write a digest for every trail now')
    .action(async (opts) => {
      await withServices(opts, async ({ audit: svc }) => {
        const written = await svc.writeDueDigests({ force: Boolean(opts.force) });
        process.stdout.write(`${written.length} digest(s) written\n`);
      });
    });
  withServerOptions(audit.command('clear-expired').description('(operator) remove traces past each account\'s retention; digests stay'))
    .action(async (opts) => {
      await withServices(opts, async ({ audit: svc }) => {
        const r = await svc.clearExpired();
        print('table', r.map((x) => ({ trail: x.trail || 'platform', removed: x.removed, through_seq: x.throughSeq })));
      });
    });
  withServerOptions(audit.command('rotate-key').description('(operator) start signing digests with a new key; old digests keep verifying'))
    .action(async (opts) => {
      await withServices(opts, async ({ audit: svc }) => {
        const k = await svc.rotateSigningKey();
        process.stdout.write(`new signing key ${k.key_id}\n`);
      });
    });
  return audit;
}

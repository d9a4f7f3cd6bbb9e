/** `custos vault ...`: personal-data collections, records, search, tokens, subject events and the inventory. */
import { createReadStream, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import cliProgress from 'cli-progress';
import { Command } from 'commander';
import { call, callText, profile } from './client.js';
import { print, type OutputFormat } from './output.js';

const V = '/v1/vault';
const enc = encodeURIComponent;

function fail(message: string, exitCode = 2): never {
  throw Object.assign(new Error(message), { exitCode });
}

/** A JSON argument given inline (`--fields '{...}'`) or as `@file`. */
function jsonArg(text: string, what: string): unknown {
  const src = text.startsWith('@') ? readFileSync(text.slice(1), 'utf8') : text;
  try {
    return JSON.parse(src);
  } catch {
    return fail(`${what} is not valid JSON`);
  }
}

function readQuery(opts: { reason: string; props?: string; transform?: string; unmask?: string }): string {
  const q = new URLSearchParams({ reason: opts.reason });
  if (opts.props) q.set('props', opts.props);
  if (opts.transform) q.set('transform', opts.transform);
  if (opts.unmask) q.set('unmask', opts.unmask);
  return q.toString();
}

type Rec = { id: string; subject_id: string; fields: Record<string, unknown>; created_at: string };
const recordRows = (records: Rec[]) => records.map((r) => ({ id: r.id, subject: r.subject_id, ...r.fields }));

export function vaultCommand(): Command {
  const vault = new Command('vault').description('personal-data vault: collections, records, search, tokens, retention events, inventory');
  const common = (c: Command) => c.option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default').option('-o, --output <format>', 'json or table', 'table');
  const reading = (c: Command) =>
    c.requiredOption('--reason <purpose>', 'why you read: a purpose the properties are collected for')
      .option('--props <list>', 'comma-separated properties to return')
      .option('--transform <list>', 'per-property transformations, e.g. email:hash,ip:generalize (mask, partial, redact, hash, generalize, tokenize, plain)')
      .option('--unmask <list>', 'properties to return in the clear (needs the unmask permission), or *');

  // ---------------------------------------------------------------- collections
  const cols = vault.command('collections').description('collections and their schemas');
  common(cols.command('list').description('list collections')).action(async (opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${V}/collections`)) as { collections: { name: string; region: string; schema_version: number; properties: unknown[]; kms_key_id: string }[] };
    print(opts.output as OutputFormat, r.collections.map((c) => ({ name: c.name, region: c.region, version: c.schema_version, properties: c.properties.length, key: c.kms_key_id })));
  });
  common(cols.command('get').description('a collection with its properties').argument('<name>')).action(async (name: string, opts) => {
    const c = (await call(profile(opts.profile), 'GET', `${V}/collections/${enc(name)}`)) as { properties: Record<string, unknown>[] };
    if (opts.output === 'json') return print('json', [c]);
    print('table', c.properties.map((p) => ({ name: p.name, type: p.pii_type, mandatory: p.mandatory, modifiable: p.modifiable, searchable: p.searchable, purposes: (p.purposes as string[]).join(','), deletion: p.deletion })));
  });
  common(cols.command('create').description('create a collection from a schema file ({"description", "properties": [...], "access"?: [...]})').argument('<name>'))
    .requiredOption('--file <schema.json>', 'the schema')
    .option('--project <id>', 'project id (region) the data is kept in; default: the token\'s project')
    .option('--kms-key <id|alias>', 'the collection\'s KMS key (default: the project\'s vault/default key)')
    .action(async (name: string, opts) => {
      const schema = jsonArg(`@${opts.file}`, '--file') as Record<string, unknown>;
      const c = (await call(profile(opts.profile), 'POST', `${V}/collections`, { ...schema, name, ...(opts.project ? { project_id: opts.project } : {}), ...(opts.kmsKey ? { kms_key_id: opts.kmsKey } : {}) })) as Record<string, unknown>;
      print(opts.output as OutputFormat, [{ name: c.name, region: c.region, version: c.schema_version, key: c.kms_key_id }]);
    });
  common(cols.command('update').description('a new schema version from a file ({"description", "properties": [...]})').argument('<name>'))
    .requiredOption('--file <schema.json>', 'the new schema')
    .option('--drop-removed-values', 'delete the stored values of properties the new schema removes')
    .action(async (name: string, opts) => {
      const schema = jsonArg(`@${opts.file}`, '--file');
      const c = (await call(profile(opts.profile), 'PUT', `${V}/collections/${enc(name)}${opts.dropRemovedValues ? '?drop_removed_values=true' : ''}`, schema)) as Record<string, unknown>;
      print(opts.output as OutputFormat, [{ name: c.name, version: c.schema_version }]);
    });
  common(cols.command('versions').description('the schema versions of a collection').argument('<name>')).action(async (name: string, opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${V}/collections/${enc(name)}/versions`)) as { versions: { version: number; created_at: string; created_by: string; properties: { name: string }[] }[] };
    print(opts.output as OutputFormat, r.versions.map((v) => ({ version: v.version, created: v.created_at, by: v.created_by, properties: v.properties.map((p) => p.name).join(',') })));
  });
  common(cols.command('delete').description('delete a collection').argument('<name>')).option('--force', 'also delete every record in it').action(async (name: string, opts) => {
    await call(profile(opts.profile), 'DELETE', `${V}/collections/${enc(name)}${opts.force ? '?force=true' : ''}`);
    print(opts.output as OutputFormat, [{ deleted: name }]);
  });

  // ---------------------------------------------------------------- whitelist
  const access = vault.command('access').description('who may reach a collection\'s records');
  common(access.command('get').argument('<collection>')).description('the whitelist').action(async (name: string, opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${V}/collections/${enc(name)}/access`)) as { access: { type: string; id: string; permissions: string[]; unmask: string[] }[] };
    print(opts.output as OutputFormat, r.access.map((a) => ({ type: a.type, id: a.id, permissions: a.permissions.join(','), unmask: a.unmask.join(',') })));
  });
  common(access.command('set').argument('<collection>')).description('replace the whitelist from a file ([{"type","id","permissions","unmask"}])')
    .requiredOption('--file <access.json>', 'the whitelist entries').action(async (name: string, opts) => {
      const entries = jsonArg(`@${opts.file}`, '--file');
      const r = (await call(profile(opts.profile), 'PUT', `${V}/collections/${enc(name)}/access`, { access: entries })) as { access: { type: string; id: string; permissions: string[]; unmask: string[] }[] };
      print(opts.output as OutputFormat, r.access.map((a) => ({ type: a.type, id: a.id, permissions: a.permissions.join(','), unmask: a.unmask.join(',') })));
    });

  // ---------------------------------------------------------------- records
  const recs = vault.command('records').description('records of data subjects');
  common(recs.command('put').description('store a record').argument('<collection>'))
    .requiredOption('--subject <id>', 'the data subject')
    .requiredOption('--fields <json|@file>', 'the values, e.g. \'{"email":"a@example.com"}\'')
    .action(async (name: string, opts) => {
      const r = (await call(profile(opts.profile), 'POST', `${V}/collections/${enc(name)}/records`, { subject_id: opts.subject, fields: jsonArg(opts.fields, '--fields') })) as Record<string, unknown>;
      print(opts.output as OutputFormat, [{ id: r.id, subject: r.subject_id, region: r.region }]);
    });
  common(recs.command('import').description('store one record per line of a JSON Lines file ({"subject_id", "fields"}), with progress').argument('<collection>'))
    .requiredOption('--file <records.jsonl>', 'the records')
    .action(async (name: string, opts) => {
      const p = profile(opts.profile);
      const total = statSync(opts.file).size;
      const bar = process.stderr.isTTY ? new cliProgress.SingleBar({ format: `import [{bar}] {percentage}% | {records} records | {eta}s left`, stream: process.stderr }, cliProgress.Presets.shades_classic) : null;
      bar?.start(total, 0, { records: 0 });
      const started = Date.now();
      let read = 0;
      let line = 0;
      const ids: { line: number; id: string }[] = [];
      const rl = createInterface({ input: createReadStream(opts.file), crlfDelay: Infinity });
      for await (const text of rl) {
        line++;
        read += Buffer.byteLength(text) + 1;
        if (!text.trim()) continue;
        let rec: { subject_id?: string; fields?: unknown };
        try {
          rec = JSON.parse(text) as typeof rec;
        } catch {
          bar?.stop();
          return fail(`line ${line}: not valid JSON`);
        }
        try {
          const r = (await call(p, 'POST', `${V}/collections/${enc(name)}/records`, { subject_id: rec.subject_id, fields: rec.fields })) as { id: string };
          ids.push({ line, id: r.id });
        } catch (e) {
          bar?.stop();
          throw Object.assign(new Error(`line ${line}: ${(e as Error).message} (${ids.length} records stored before it)`), { exitCode: 1 });
        }
        bar?.update(Math.min(read, total), { records: ids.length });
      }
      bar?.update(total, { records: ids.length });
      bar?.stop();
      const secs = (Date.now() - started) / 1000;
      process.stderr.write(`imported ${ids.length} records in ${secs.toFixed(1)} s (${(ids.length / Math.max(secs, 0.001)).toFixed(0)}/s)\n`);
      print(opts.output as OutputFormat, ids);
    });
  common(reading(recs.command('get').description('read a record (masked unless unmasked)').argument('<collection>').argument('<id>'))).action(async (name: string, id: string, opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${V}/collections/${enc(name)}/records/${enc(id)}?${readQuery(opts)}`)) as Rec;
    print(opts.output as OutputFormat, recordRows([r]));
  });
  common(reading(recs.command('list').description('the records of a data subject').argument('<collection>'))).requiredOption('--subject <id>', 'the data subject').action(async (name: string, opts) => {
    const p = profile(opts.profile);
    const out: Rec[] = [];
    let marker: string | null = null;
    do {
      const r = (await call(p, 'GET', `${V}/collections/${enc(name)}/records?subject_id=${enc(opts.subject)}&${readQuery(opts)}&limit=100${marker ? `&marker=${marker}` : ''}`)) as { records: Rec[]; next_marker: string | null };
      out.push(...r.records);
      marker = r.next_marker;
    } while (marker);
    print(opts.output as OutputFormat, recordRows(out));
  });
  common(reading(recs.command('search').description('exact-match search on searchable properties').argument('<collection>')))
    .requiredOption('--match <property=value...>', 'what to match (all must)')
    .action(async (name: string, opts) => {
      const match = Object.fromEntries((opts.match as string[]).map((kv) => {
        const i = kv.indexOf('=');
        if (i <= 0) fail(`--match takes property=value, not ${kv.split('=')[0]}`);
        return [kv.slice(0, i), kv.slice(i + 1)];
      }));
      const transform = opts.transform ? Object.fromEntries((opts.transform as string).split(',').map((x) => x.split(':'))) : undefined;
      const unmask = opts.unmask ? Object.fromEntries((opts.unmask as string).split(',').filter((x) => x !== '*').map((x) => [x, 'plain'])) : undefined;
      const r = (await call(profile(opts.profile), 'POST', `${V}/collections/${enc(name)}/search`, {
        reason: opts.reason, match, ...(opts.props ? { props: (opts.props as string).split(',') } : {}), ...(transform || unmask ? { transform: { ...transform, ...unmask } } : {}),
      })) as { records: Rec[] };
      print(opts.output as OutputFormat, recordRows(r.records));
    });
  common(recs.command('update').description('rectify a record (modifiable properties; null clears)').argument('<collection>').argument('<id>'))
    .requiredOption('--fields <json|@file>', 'the new values').action(async (name: string, id: string, opts) => {
      const r = (await call(profile(opts.profile), 'PATCH', `${V}/collections/${enc(name)}/records/${enc(id)}`, { fields: jsonArg(opts.fields, '--fields') })) as Record<string, unknown>;
      print(opts.output as OutputFormat, [r]);
    });
  common(recs.command('delete').description('delete a record with its data key').argument('<collection>').argument('<id>')).action(async (name: string, id: string, opts) => {
    await call(profile(opts.profile), 'DELETE', `${V}/collections/${enc(name)}/records/${enc(id)}`);
    print(opts.output as OutputFormat, [{ deleted: id }]);
  });

  common(vault.command('detokenize').description('the values tokens stand for').argument('<collection>').argument('<tokens...>'))
    .requiredOption('--reason <purpose>', 'why you read').action(async (name: string, tokens: string[], opts) => {
      const r = (await call(profile(opts.profile), 'POST', `${V}/collections/${enc(name)}/detokenize`, { reason: opts.reason, tokens })) as { values: Record<string, unknown>[] };
      print(opts.output as OutputFormat, r.values);
    });

  common(vault.command('event').description('report a data subject\'s event (delivered, account_deregistered, consent_withdrawn, ...)').argument('<subject>').argument('<event>'))
    .option('--at <iso-time>', 'when it occurred (default: now)').action(async (subject: string, event: string, opts) => {
      const r = (await call(profile(opts.profile), 'POST', `${V}/subjects/${enc(subject)}/events`, { event, ...(opts.at ? { occurred_at: opts.at } : {}) })) as Record<string, unknown>;
      print(opts.output as OutputFormat, [r]);
    });

  vault.command('inventory').description('the personal-data inventory for a privacy notice')
    .option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default')
    .option('--format <format>', 'markdown, csv or json', 'markdown')
    .option('--out <file>', 'write to a file instead of standard output')
    .action(async (opts) => {
      if (!['markdown', 'csv', 'json'].includes(opts.format)) fail('--format is markdown, csv or json');
      const text = await callText(profile(opts.profile), 'GET', `${V}/inventory?format=${opts.format}`);
      if (opts.out) writeFileSync(opts.out, text);
      else process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
    });
  return vault;
}

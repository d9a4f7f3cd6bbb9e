// bench/privacy: time to complete an access request and an erasure request for one data subject among
// BENCH_RECORDS vault records (default 1,000,000) and BENCH_OBJECTS objects (default 100,000);
// target under 2 s each. The baseline, measured in the same run, is reading the same subject's vault
// records and objects directly (what any export must at least do).
// In-process on the services and the same database; the fill reports its progress.
//   node dist/bench/privacy.js   (BENCH_DB=postgres for PostgreSQL; BENCH_RECORDS, BENCH_OBJECTS)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { loadConfig } from '../src/config.js';
import { openServices } from '../src/server/index.js';
import type { EffectiveAccess } from '../src/vault/vault.js';
import { dropPgDatabase, freshPgDatabase } from './pg.js';

const RECORDS = Number(process.env.BENCH_RECORDS ?? 1_000_000);
const OBJECTS = Number(process.env.BENCH_OBJECTS ?? 100_000);
const SUBJECTS = Math.max(10, Math.floor(RECORDS / 2));
const line = (title: string, value: string) => console.log(`  ${title.padEnd(56)} ${value}`);

async function main() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-bench-privacy-'));
  const dbUrl = process.env.BENCH_DB ? await freshPgDatabase() : undefined;
  const config = loadConfig({ env: {}, flags: { dataDir, port: 0, logLevel: 'warn', ...(dbUrl ? { databaseUrl: dbUrl } : {}) } });
  const svc = await openServices(config);
  console.log(`bench/privacy: ${dbUrl ? 'PostgreSQL' : 'SQLite'}, ${RECORDS.toLocaleString('en')} vault records over ${SUBJECTS.toLocaleString('en')} subjects, ${OBJECTS.toLocaleString('en')} objects`);
  try {
    const { iam, vault, obs, rights } = svc;
    await iam.bootstrap();
    const { account } = await iam.createAccount({ name: 'benchco', adminName: 'admin', adminPassword: 'Bench-Passw0rd!' });
    const project = (await iam.listProjects(account.id))[0]!;
    const scope = { accountId: account.id, projectId: project.id, region: project.region };
    const P = (name: string, pii: 'email' | 'phone_number' | 'person_name' | 'ip_address' | 'postal_address', purposes = ['support']) => ({ name, pii_type: pii, purposes, collection_method: 'bench', deletion: { after: 'P1Y' } });
    const c = await vault.createCollection(scope, 'bench', { name: 'people', properties: [P('email', 'email'), P('phone', 'phone_number'), P('full_name', 'person_name'), P('ip', 'ip_address'), P('invoice_address', 'postal_address', ['accounting'])] });
    await rights.putPurpose(account.id, 'accounting', 'legal_obligation', 'tax law');
    const access: EffectiveAccess = { permissions: new Set(['write']), unmask: new Set() };
    const started = performance.now();
    let last = started;
    const progress = (what: string, n: number, total: number) => {
      if (performance.now() - last > 5000) {
        last = performance.now();
        process.stderr.write(`  ... ${what}: ${n.toLocaleString('en')} / ${total.toLocaleString('en')}\n`);
      }
    };
    for (let i = 0; i < RECORDS; i++) {
      const subject = `subject-${i % SUBJECTS}`;
      await vault.createRecord(c, access, subject, { email: `p${i}@example.com`, phone: '+8613912345678', full_name: `Person ${i}`, ip: '10.0.0.1', invoice_address: `${i} Main Street` });
      progress('vault records', i + 1, RECORDS);
    }
    const bucket = await obs.createBucket(scope, 'bench-files');
    for (let i = 0; i < OBJECTS; i++) {
      const body = Buffer.from(`object ${i} `.repeat(64));
      await obs.putObject(bucket, `files/${i}.txt`, Readable.from([body]), { contentType: 'text/plain', metadata: {}, tags: { 'custos:subject': `subject-${i % SUBJECTS}` } }, () => undefined);
      progress('objects', i + 1, OBJECTS);
    }
    line('fill', `${((performance.now() - started) / 1000).toFixed(0)} s`);

    const time = async <T>(fn: () => Promise<T>) => {
      const t0 = performance.now();
      const r = await fn();
      return { ms: performance.now() - t0, r };
    };
    // Baseline: read everything the subject has, directly.
    const base = await time(async () => {
      const v = await vault.subjectData(account.id, 'subject-1');
      const o = await obs.subjectObjects(account.id, 'subject-1');
      for (const x of o) await obs.readWhole(x.bucket, x.row);
      return { records: v.length, objects: o.length };
    });
    line('baseline: read one subject\'s records and objects', `${base.ms.toFixed(0)} ms (${base.r.records} records, ${base.r.objects} objects)`);
    const run = async (subject: string, type: 'access' | 'erasure') => {
      const req = await rights.createRequest(account.id, 'bench', { subjectId: subject, type, details: {} });
      await rights.verify((await rights.getRequest(account.id, req.id))!, 'bench', 'attestation', { method: 'bench', reference: 'bench' });
      const verified = (await rights.getRequest(account.id, req.id))!;
      return time(() => rights.execute(verified, 'bench', scope));
    };
    const a = await run('subject-1', 'access');
    line('access request (archive of records and objects)', `${a.ms.toFixed(0)} ms${a.ms < 2000 ? '' : '   (above the 2 s target)'}   ratio to baseline ${(a.ms / base.ms).toFixed(2)}`);
    const e = await run('subject-2', 'erasure');
    line('erasure request (values, records, object versions)', `${e.ms.toFixed(0)} ms${e.ms < 2000 ? '' : '   (above the 2 s target)'}   (${String((e.r.result as { deleted_values?: number } | null)?.deleted_values)} values deleted)`);
  } finally {
    await svc.close();
    rmSync(dataDir, { recursive: true, force: true });
    if (dbUrl) await dropPgDatabase(dbUrl);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

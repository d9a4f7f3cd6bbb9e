// bench/vault: the vault service against a plain table in the same database, in the same run.
//   record inserts/s (5 encrypted properties, 2 searchable)      target >= 25% of the plain table's
//   masked reads/s by id                                          target >= 40% of the plain table's
//   blind-index lookups among BENCH_RECORDS records (default 1,000,000): search + decrypt + mask,
//     latency p50/p99                                             target < 5 ms
//   retention deletions/s (values and records whose rule is due)
// Measured in-process on the service (src/vault/vault.ts) and the same query layer: what the vault
// adds to storing a row (validation, a derived record key, AES-GCM per group of values, HMAC index
// rows, the consent/restriction probe on reads), not HTTP or audit.
//   node dist/bench/vault.js   (BENCH_DB=postgres for PostgreSQL; BENCH_RECORDS, BENCH_ROUNDS)
import { randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { loadConfig } from '../src/config.js';
import { openServices } from '../src/server/index.js';
import type { EffectiveAccess } from '../src/vault/vault.js';
import { dropPgDatabase, freshPgDatabase } from './pg.js';

const RECORDS = Number(process.env.BENCH_RECORDS ?? 1_000_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const BATCH = 2000;
const DAY = 86_400_000;

const props = (searchable: boolean, after = 'P1Y') => [
  { name: 'email', pii_type: 'email' as const, searchable, mandatory: true, purposes: ['bench'], collection_method: 'bench', deletion: { after } },
  { name: 'phone', pii_type: 'phone_number' as const, searchable, purposes: ['bench'], collection_method: 'bench', deletion: { after } },
  { name: 'full_name', pii_type: 'person_name' as const, purposes: ['bench'], collection_method: 'bench', deletion: { after } },
  { name: 'ip', pii_type: 'ip_address' as const, purposes: ['bench'], collection_method: 'bench', deletion: { after } },
  { name: 'birth', pii_type: 'date_of_birth' as const, purposes: ['bench'], collection_method: 'bench', deletion: { after } },
];
const person = (i: number) => ({
  email: `person${i}@example.com`, phone: `+8613${String(900000000 + (i % 100000000)).padStart(9, '0')}`, full_name: `Person Number${i}`,
  ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, birth: `19${String(50 + (i % 50)).padStart(2, '0')}-0${1 + (i % 9)}-1${i % 10}`,
});

function rate(n: number, ms: number): number {
  return (n / ms) * 1000;
}
function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
function line(title: string, value: string) {
  console.log(`  ${title.padEnd(52)} ${value}`);
}

async function main() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-bench-vault-'));
  const dbUrl = process.env.BENCH_DB ? await freshPgDatabase() : undefined;
  let clock = Date.now();
  const config = loadConfig({ env: {}, flags: { dataDir, port: 0, logLevel: 'warn', ...(dbUrl ? { databaseUrl: dbUrl } : {}) } });
  const svc = await openServices(config, { now: () => clock });
  console.log(`bench/vault: ${dbUrl ? 'PostgreSQL' : 'SQLite'}, ${RECORDS.toLocaleString('en')} records for the lookup figure, ${ROUNDS} alternating rounds per ratio`);
  try {
    const { iam, vault, store } = svc;
    await iam.bootstrap();
    const { account } = await iam.createAccount({ name: 'benchco', adminName: 'admin', adminPassword: 'Bench-Passw0rd!' });
    const project = (await iam.listProjects(account.id))[0]!;
    const scope = { accountId: account.id, projectId: project.id, region: project.region };
    const c = await vault.createCollection(scope, 'bench', { name: 'people', properties: props(true) });
    const access: EffectiveAccess = { permissions: new Set(['read', 'write', 'delete', 'search', 'detokenize']), unmask: new Set() };
    const db = store.db as unknown as import('kysely').Kysely<{ bench_plain: Record<string, string | number> }>;
    await sql`create table bench_plain (id varchar(36) primary key, subject_id varchar(128) not null, email varchar(256), phone varchar(32), full_name varchar(256), ip varchar(64), birth varchar(10), created_at bigint not null)`.execute(store.db);
    await sql`create index bench_plain_email on bench_plain (email)`.execute(store.db);
    await sql`create index bench_plain_phone on bench_plain (phone)`.execute(store.db);

    // ---- inserts and reads, alternating vault and plain rounds
    let next = 0;
    const vaultIds: string[] = [];
    const plainIds: string[] = [];
    const ins = { vault: [] as number[], plain: [] as number[] };
    const rd = { vault: [] as number[], plain: [] as number[] };
    for (let round = 0; round < ROUNDS; round++) {
      let t0 = performance.now();
      for (let i = 0; i < BATCH; i++) {
        const n = next++;
        vaultIds.push((await vault.createRecord(c, access, `s${n}`, person(n))).id);
      }
      ins.vault.push(rate(BATCH, performance.now() - t0));
      t0 = performance.now();
      for (let i = 0; i < BATCH; i++) {
        const n = next++;
        const id = crypto.randomUUID();
        await db.insertInto('bench_plain').values({ id, subject_id: `s${n}`, ...person(n), created_at: clock }).execute();
        plainIds.push(id);
      }
      ins.plain.push(rate(BATCH, performance.now() - t0));

      t0 = performance.now();
      for (let i = 0; i < BATCH; i++) await vault.readRecord(c, access, vaultIds[randomInt(vaultIds.length)]!, { reason: 'bench' });
      rd.vault.push(rate(BATCH, performance.now() - t0));
      t0 = performance.now();
      for (let i = 0; i < BATCH; i++) await db.selectFrom('bench_plain').selectAll().where('id', '=', plainIds[randomInt(plainIds.length)]!).executeTakeFirstOrThrow();
      rd.plain.push(rate(BATCH, performance.now() - t0));
    }
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const insRatio = med(ins.vault) / med(ins.plain);
    const rdRatio = med(rd.vault) / med(rd.plain);
    line('insert, vault (5 encrypted, 2 searchable)', `${med(ins.vault).toFixed(0)} records/s`);
    line('insert, plain table (2 indexed columns)', `${med(ins.plain).toFixed(0)} records/s`);
    line('insert ratio vault/plain (target >= 0.25)', `${insRatio.toFixed(2)}${insRatio >= 0.25 ? '' : '   (below target)'}`);
    line('masked read by id, vault', `${med(rd.vault).toFixed(0)} reads/s`);
    line('read by id, plain table', `${med(rd.plain).toFixed(0)} reads/s`);
    line('read ratio vault/plain (target >= 0.40)', `${rdRatio.toFixed(2)}${rdRatio >= 0.4 ? '' : '   (below target)'}`);

    // ---- fill to RECORDS and look records up through the blind index
    const started = performance.now();
    let last = started;
    while (next < RECORDS) {
      const n = next++;
      await vault.createRecord(c, access, `s${n}`, person(n));
      if (n % 50_000 === 0 && performance.now() - last > 5000) {
        last = performance.now();
        process.stderr.write(`  ... ${n.toLocaleString('en')} records (${rate(n - ROUNDS * BATCH * 2, last - started).toFixed(0)}/s)\n`);
      }
    }
    const vaultCount = Number((await sql<{ n: number }>`select count(*) as n from vault_records`.execute(store.db)).rows[0]!.n);
    const plainCount = Number((await sql<{ n: number }>`select count(*) as n from bench_plain`.execute(store.db)).rows[0]!.n);
    const lat: number[] = [];
    const t0 = performance.now();
    const LOOKUPS = 2000;
    for (let i = 0; i < LOOKUPS; i++) {
      let n = randomInt(next);
      // Numbers that went to the plain table are not in the vault; look up a vault one.
      while (!(n < ROUNDS * BATCH * 2 ? Math.floor(n / BATCH) % 2 === 0 : true)) n = randomInt(next);
      const a = performance.now();
      const found = await vault.search(c, access, { email: person(n).email }, { reason: 'bench', limit: 10 });
      lat.push(performance.now() - a);
      if (found.length !== 1) throw new Error(`lookup of record ${n} found ${found.length}`);
    }
    const total = performance.now() - t0;
    lat.sort((a, b) => a - b);
    line(`blind-index lookup among ${vaultCount.toLocaleString('en')} records`, `${rate(LOOKUPS, total).toFixed(0)} lookups/s   p50 ${pct(lat, 50).toFixed(2)} ms   p99 ${pct(lat, 99).toFixed(2)} ms${pct(lat, 99) < 5 ? '' : '   (p99 above 5 ms target)'}`);
    line('(plain table rows, for reference)', plainCount.toLocaleString('en'));

    // ---- retention: records whose every value is due, then the job
    const r = await vault.createCollection(scope, 'bench', { name: 'shortlived', properties: props(true, 'P1D') });
    const R = 5000;
    for (let i = 0; i < R; i++) await vault.createRecord(r, access, `r${i}`, person(i));
    clock += 2 * DAY;
    const tr = performance.now();
    const res = await vault.runRetention();
    const ms = performance.now() - tr;
    if (!res || res.records !== R) throw new Error(`retention deleted ${JSON.stringify(res)}, expected ${R} records`);
    line('retention: values deleted', `${rate(res.values, ms).toFixed(0)} values/s (${res.values} values, ${res.records} records with their keys in ${(ms / 1000).toFixed(1)} s)`);
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

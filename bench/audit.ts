// bench/audit: the three figures issue 3 names, each beside a baseline measured in the same run.
//   node dist/bench/audit.js [throughput] [verify] [query]     (default: all three)
//   BENCH_SECONDS=10 BENCH_CONNECTIONS=16     throughput runs (BENCH_DB=postgres for PostgreSQL)
//   BENCH_VERIFY_TRACES=1000000               traces to verify
//   BENCH_QUERY_TRACES=10000000               traces in the queried trail (SQLite, and PostgreSQL when reachable)
//   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres
import { generateKeyPairSync, hash, randomBytes, sign } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { sql } from 'kysely';
import { canonicalDigest, canonicalTrace, DIGEST_FORMAT, genesisHash, KEYS_FORMAT, keyIdOf, TRACES_FORMAT, traceHash, verifyTrail, type Digest, type PublicKeyInfo, type StoredTrace } from '../src/audit/chain.js';
import { loadExport } from '../src/cli/audit.js';
import { loadExportChecked } from '../src/audit/verify-parallel.js';
import { availableParallelism } from 'node:os';
import { loadConfig } from '../src/config.js';
import { openServices } from '../src/server/index.js';
import { dropPgDatabase, freshPgDatabase, pgReachable } from './pg.js';
import { startServerProcess, type ServerProcess } from './server-process.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const VERIFY_N = Number(process.env.BENCH_VERIFY_TRACES ?? 1_000_000);
const QUERY_N = Number(process.env.BENCH_QUERY_TRACES ?? 10_000_000);
const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- 1. traced write throughput

async function writeRate(srv: ServerProcess, token: string, label: string): Promise<number> {
  let n = 0;
  const tag = randomBytes(3).toString('hex');
  const r = await autocannon({
    url: `${srv.url}/v3/groups`,
    connections: CONNECTIONS,
    duration: SECONDS,
    requests: [{ method: 'POST', headers: { 'content-type': 'application/json', 'x-auth-token': token }, setupRequest: (req) => ({ ...req, body: JSON.stringify({ group: { name: `g-${tag}-${++n}` } }) }) }],
  });
  const bad = r.non2xx + r.errors + r.timeouts;
  console.log(`  ${label.padEnd(30)} ${r.requests.average.toFixed(0).padStart(7)} req/s   p50 ${r.latency.p50} ms   p99 ${r.latency.p99} ms${bad ? `   (${bad} failed!)` : ''}`);
  if (bad > r.requests.total * 0.01) throw new Error(`${label}: ${bad} of ${r.requests.total} requests failed`);
  return r.requests.average;
}

async function throughput() {
  console.log(`\n1. POST /v3/groups (creates a group) with tracing on and off, ${CONNECTIONS} connections, ${SECONDS} s per run, alternating`);
  // BENCH_DB=postgres runs both servers on fresh PostgreSQL databases (BENCH_PG_URL's server).
  const db = process.env.BENCH_DB;
  const urls = db ? [await freshPgDatabase(), await freshPgDatabase()] : [undefined, undefined];
  const traced = await startServerProcess({ databaseUrl: urls[0] });
  const untraced = await startServerProcess({ databaseUrl: urls[1], entry: path.join(here, 'untraced-server.js') });
  try {
    const tt = await traced.createTenant('benchtraced');
    const tu = await untraced.createTenant('benchuntraced');
    const on: number[] = [];
    const off: number[] = [];
    for (let round = 0; round < 2; round++) {
      off.push(await writeRate(untraced, tu.token, 'tracing off'));
      on.push(await writeRate(traced, tt.token, 'tracing on'));
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    console.log(`  traced / untraced = ${(mean(on) / mean(off)).toFixed(2)}   (target >= 0.70; ${db ? 'PostgreSQL' : 'SQLite'})`);
  } finally {
    await traced.stop();
    await untraced.stop();
    for (const u of urls) if (u) await dropPgDatabase(u);
  }
}

// ---------------------------------------------------------------- 2. offline verification

function syntheticTrail(n: number): { traces: StoredTrace[]; digests: Digest[]; keys: PublicKeyInfo[] } {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const keyId = keyIdOf(publicKey.export({ type: 'spki', format: 'der' }));
  const keys: PublicKeyInfo[] = [{ key_id: keyId, algorithm: 'Ed25519', public_key: publicKey.export({ type: 'spki', format: 'pem' }).toString(), status: 'active', created_at: Date.now() }];
  const trail = 'benchtrail';
  const user = { account_id: trail, account_name: 'bench', user_id: 'u1', user_name: 'admin', access_key_id: null, agency: null, auth_method: 'token' as const };
  const traces: StoredTrace[] = new Array(n);
  const digests: Digest[] = [];
  let prev = genesisHash(trail);
  let start = 1;
  let startPrev = prev;
  const t0 = Date.now() - n;
  for (let i = 1; i <= n; i++) {
    const body = {
      trail, seq: i, trace_id: `${i.toString(16).padStart(8, '0')}-0000-4000-8000-000000000000`, time: t0 + i, record_time: t0 + i, trace_name: `iam:groups:op${i % 50}`,
      trace_type: 'management' as const, trace_rating: 'normal' as const, service_type: 'IAM', resource_type: 'group', resource_id: `res-${i % 100_000}`, resource_name: null,
      project_id: null, region: null, user, source_ip: '10.0.0.1', user_agent: 'bench', request_id: `req-${i}`, http_method: 'POST', api_path: '/v3/groups', code: 201, error_code: null, correlation: null,
    };
    const hash = traceHash(prev, body);
    traces[i - 1] = { ...body, prev_hash: prev, hash };
    prev = hash;
    if (i % 10_000 === 0 || i === n) {
      const last = digests[digests.length - 1];
      const unsigned = { trail, digest_seq: digests.length + 1, created_at: t0 + i, start_seq: start, end_seq: i, trace_count: i - start + 1, start_prev_hash: startPrev, end_hash: hash, end_record_time: t0 + i, prev_signature: last?.signature ?? null, key_id: keyId };
      digests.push({ ...unsigned, signature: sign(null, canonicalDigest(unsigned), privateKey).toString('base64') });
      start = i + 1;
      startPrev = hash;
    }
  }
  return { traces, digests, keys };
}

async function verifyBench() {
  console.log(`\n2. offline verification of ${VERIFY_N.toLocaleString('en')} traces (${Math.ceil(VERIFY_N / 10_000)} digests), as custos audit verify does it`);
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-bench-verify-'));
  try {
    {
      // Written as an export is: 10,000 traces per gzip'd file, the digests, the public keys.
      const { traces, digests, keys } = syntheticTrail(VERIFY_N);
      const tdir = path.join(dir, 'benchtrail');
      mkdirSync(tdir);
      for (let i = 0; i < traces.length; i += 10_000) {
        const part = traces.slice(i, i + 10_000);
        writeFileSync(path.join(tdir, `traces-${String(part[0]!.seq).padStart(12, '0')}.json.gz`), gzipSync(JSON.stringify({ format: TRACES_FORMAT, trail: 'benchtrail', traces: part })));
      }
      writeFileSync(path.join(tdir, 'digests.json.gz'), gzipSync(JSON.stringify({ format: DIGEST_FORMAT, digests })));
      writeFileSync(path.join(dir, 'public-keys.json'), JSON.stringify({ format: KEYS_FORMAT, keys }));
    }
    // What `custos audit verify` runs: files read and re-hashed on worker threads, then the checks.
    let t = process.hrtime.bigint();
    const checked = await loadExportChecked(dir);
    const checkedLoad = Number(process.hrtime.bigint() - t) / 1e9;
    t = process.hrtime.bigint();
    const parallelReport = verifyTrail(checked.links, checked.digests, checked.keys);
    const checkedVerify = Number(process.hrtime.bigint() - t) / 1e9;
    if (!parallelReport.ok) throw new Error('the synthetic trail did not verify');
    // The same on one thread, for the ratio.
    t = process.hrtime.bigint();
    const loaded = await loadExport(dir);
    const loadSecs = Number(process.hrtime.bigint() - t) / 1e9;
    t = process.hrtime.bigint();
    for (const tr of loaded.traces) hash('sha256', canonicalTrace(tr), 'hex');
    const hashOnly = Number(process.hrtime.bigint() - t) / 1e9;
    t = process.hrtime.bigint();
    const report = verifyTrail(loaded.traces, loaded.digests, loaded.keys);
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    if (!report.ok) throw new Error('the synthetic trail did not verify');
    const single = loadSecs + secs;
    const parallel = checkedLoad + checkedVerify;
    console.log(`  one thread: read+parse ${loadSecs.toFixed(2)} s, verify ${secs.toFixed(2)} s (hashing alone: ${hashOnly.toFixed(2)} s)   total ${single.toFixed(2)} s`);
    console.log(`  custos audit verify (${availableParallelism()} worker threads): read+re-hash ${checkedLoad.toFixed(2)} s, checks ${checkedVerify.toFixed(2)} s`);
    console.log(`  files to verdict                         ${parallel.toFixed(2)} s   (${(parallel / single).toFixed(2)}x one thread; target < 10 s)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- 3. query over a large trail

const USER_JSON = JSON.stringify({ account_id: 'benchtrail', account_name: 'bench', user_id: 'u1', user_name: 'admin', access_key_id: null, agency: null, auth_method: 'token' });

async function queryBench(kind: 'sqlite' | 'postgres') {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-bench-query-'));
  const url = kind === 'postgres' ? await freshPgDatabase() : undefined;
  const config = loadConfig({ env: {}, flags: { dataDir, logLevel: 'silent', ...(url ? { databaseUrl: url } : {}) } });
  const services = await openServices(config);
  const base = Date.now() - QUERY_N * 1000;
  try {
    console.log(`\n3. first page of filtered queries over a trail of ${QUERY_N.toLocaleString('en')} traces (${kind})`);
    const db = services.store.db;
    const chunk = 1_000_000;
    const t0 = Date.now();
    for (let lo = 1; lo <= QUERY_N; lo += chunk) {
      const hi = Math.min(QUERY_N, lo + chunk - 1);
      if (kind === 'postgres') {
        await sql`insert into audit_traces select 'benchtrail', i, lpad(to_hex(i), 8, '0') || '-0000-4000-8000-000000000000', ${base}::int8 + i * 1000, ${base}::int8 + i * 1000,
          'svc:res:op' || (i % 50), case when i % 10 = 0 then 'data' else 'management' end,
          case when i % 1000 = 7 then 'incident' when i % 20 = 3 then 'warning' else 'normal' end,
          (array['IAM','KMS','OBS','VAULT','CTS'])[1 + i % 5], 'group', 'res-' || (i % 100000), 'name-' || (i % 100000), null, null, 'user-' || (i % 1000), ${USER_JSON},
          '10.0.0.1', 'bench', 'req-' || i, 'POST', '/v3/groups', 201, null, null, repeat('0', 64), repeat('0', 64)
          from generate_series(${lo}::int8, ${hi}::int8) as i`.execute(db);
      } else {
        await sql`with recursive g(i) as (select cast(${lo} as integer) union all select i + 1 from g where i < cast(${hi} as integer))
          insert into audit_traces select 'benchtrail', i, printf('%08x-0000-4000-8000-000000000000', i), ${base} + i * 1000, ${base} + i * 1000,
          'svc:res:op' || (i % 50), case when i % 10 = 0 then 'data' else 'management' end,
          case when i % 1000 = 7 then 'incident' when i % 20 = 3 then 'warning' else 'normal' end,
          case i % 5 when 0 then 'IAM' when 1 then 'KMS' when 2 then 'OBS' when 3 then 'VAULT' else 'CTS' end, 'group', 'res-' || (i % 100000), 'name-' || (i % 100000), null, null, 'user-' || (i % 1000), ${USER_JSON},
          '10.0.0.1', 'bench', 'req-' || i, 'POST', '/v3/groups', 201, null, null, printf('%064d', 0), printf('%064d', 0)
          from g`.execute(db);
      }
      process.stderr.write(`\r  loading: ${hi.toLocaleString('en')} traces (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
    }
    process.stderr.write('\n');
    await sql`insert into audit_heads (trail, seq, hash, updated_at) values ('benchtrail', ${QUERY_N}, ${'0'.repeat(64)}, ${Date.now()})`.execute(db);
    await sql`analyze`.execute(db);
    const audit = services.audit;
    const now = Date.now();
    const mid = base + Math.floor(QUERY_N / 2) * 1000;
    const cases: [string, Parameters<typeof audit.search>[1]][] = [
      ['baseline: no filter', { traceType: 'management', from: 0, to: now, limit: 10 }],
      ['resource_id (100 matches)', { traceType: 'management', from: 0, to: now, limit: 10, resourceId: 'res-4242' }],
      ['trace_name (1 in 50)', { traceType: 'management', from: 0, to: now, limit: 10, traceName: 'svc:res:op7' }],
      ['user (1 in 1000)', { traceType: 'management', from: 0, to: now, limit: 10, user: 'user-77' }],
      ['trace_id (one)', { traceType: 'data', from: 0, to: now, limit: 10, traceId: `${(QUERY_N / 2).toString(16).padStart(8, '0')}-0000-4000-8000-000000000000` }],
      ['trace_rating warning (1 in 20)', { traceType: 'management', from: 0, to: now, limit: 10, traceRating: 'warning' }],
      ['trace_rating incident (1 in 1000)', { traceType: 'management', from: 0, to: now, limit: 10, traceRating: 'incident' }],
      ['service_type nobody uses (none match)', { traceType: 'management', from: 0, to: now, limit: 10, serviceType: 'NOPE' }],
      ['service_type (1 in 5)', { traceType: 'management', from: 0, to: now, limit: 10, serviceType: 'OBS' }],
      ['one hour in the middle', { traceType: 'management', from: mid, to: mid + 3_600_000, limit: 10 }],
      ['one hour + resource_id', { traceType: 'management', from: mid, to: mid + 3_600_000, limit: 10, resourceId: `res-${(Math.floor(QUERY_N / 2) + 100) % 100000}` }],
    ];
    let baseline = 0;
    for (const [label, q] of cases) {
      const times: number[] = [];
      let count = 0;
      let marker: string | null = null;
      for (let i = 0; i < 5; i++) {
        const t = process.hrtime.bigint();
        const page = await audit.search('benchtrail', q);
        count = page.traces.length;
        marker = page.marker;
        times.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
      times.sort((a, b) => a - b);
      const median = times[2]!;
      if (!baseline) baseline = median;
      console.log(`  ${label.padEnd(36)} ${median.toFixed(1).padStart(8)} ms  (${count} on the page${marker ? ', marker to continue' : ''}; ${(median / baseline).toFixed(1)}x baseline; target < 200 ms)`);
    }
  } finally {
    await services.close();
    if (url) await dropPgDatabase(url);
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function main() {
  const parts = process.argv.slice(2);
  const want = (p: string) => parts.length === 0 || parts.includes(p);
  if (want('throughput')) await throughput();
  if (want('verify')) await verifyBench();
  if (want('query')) {
    await queryBench('sqlite');
    if (await pgReachable()) await queryBench('postgres');
    else console.log('\n3. (PostgreSQL not reachable: skipped)');
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

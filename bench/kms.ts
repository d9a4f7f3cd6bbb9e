// bench/kms: encrypt-data and decrypt-data with 4 KiB payloads, create-datakey, and /health on the
// same server in the same run (target: encrypt-data >= 40% of /health); then the same two figures on
// bench/floor-server, a bare HTTP server that only parses the body, seals it with AES-GCM and answers
// (what bounds the ratio any server can show on this machine); then create-datakey on a server whose
// root key is in SoftHSMv2, for the local-vs-pkcs11 ratio. Every KMS call is traced.
//   node dist/bench/kms.js     (BENCH_SECONDS=10 BENCH_CONNECTIONS=16 BENCH_ROUNDS=3; BENCH_DB=postgres for PostgreSQL)
import autocannon from 'autocannon';
import { ceilingRate, startFloorServer } from './floor.js';
import { dropPgDatabase, freshPgDatabase } from './pg.js';
import { startServerProcess, type ServerProcess } from './server-process.js';
import { createSoftHsmToken, SOFTHSM_AVAILABLE, SOFTHSM_MODULE } from '../test/softhsm.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function run(title: string, opts: autocannon.Options): Promise<number> {
  const r = await autocannon({ connections: CONNECTIONS, duration: SECONDS, ...opts });
  const bad = r.non2xx + r.errors + r.timeouts;
  const rps = r.requests.average;
  console.log(`  ${title.padEnd(40)} ${rps.toFixed(0).padStart(8)} req/s   p50 ${r.latency.p50} ms   p99 ${r.latency.p99} ms${bad ? `   (${bad} failed!)` : ''}`);
  if (bad > r.requests.total * 0.01) throw new Error(`${title}: ${bad} of ${r.requests.total} requests failed`);
  return rps;
}

async function post(url: string, token: string, body: unknown): Promise<Record<string, string>> {
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', 'x-auth-token': token }, body: JSON.stringify(body) });
  if (r.status !== 200) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return (await r.json()) as Record<string, string>;
}

async function setUp(srv: ServerProcess) {
  const tenant = await srv.createTenant('benchco');
  const projects = (await (await fetch(`${srv.url}/v3/projects`, { headers: { 'x-auth-token': tenant.token } })).json()) as { projects: { id: string }[] };
  const base = `${srv.url}/v1.0/${projects.projects[0]!.id}/kms`;
  const keyId = ((await post(`${base}/create-key`, tenant.token, { key_alias: 'bench' })) as unknown as { key_info: { key_id: string } }).key_info.key_id;
  return { token: tenant.token, base, keyId };
}

async function withServer<T>(opts: Parameters<typeof startServerProcess>[0], fn: (srv: ServerProcess) => Promise<T>): Promise<T> {
  const dbUrl = process.env.BENCH_DB ? await freshPgDatabase() : undefined;
  const srv = await startServerProcess({ ...opts, databaseUrl: dbUrl });
  try {
    return await fn(srv);
  } finally {
    await srv.stop();
    if (dbUrl) await dropPgDatabase(dbUrl);
  }
}

async function main() {
  console.log(`bench/kms: ${process.env.BENCH_DB ? 'PostgreSQL' : 'SQLite'}, ${CONNECTIONS} connections, ${SECONDS} s per figure`);
  const local = await withServer({}, async (srv) => {
    const { token, base, keyId } = await setUp(srv);
    const plain = 'x'.repeat(4096);
    const ct = (await post(`${base}/encrypt-data`, token, { key_id: keyId, plain_text: plain })).cipher_text;
    const json = (b: unknown) => ({ method: 'POST' as const, headers: { 'content-type': 'application/json', 'x-auth-token': token }, body: JSON.stringify(b) });
    console.log(`\nlocal root key (${ROUNDS} alternating rounds; the ratios use each figure's median)`);
    const figures = { health: [] as number[], enc: [] as number[], dec: [] as number[], dk: [] as number[] };
    for (let r = 0; r < ROUNDS; r++) {
      figures.health.push(await run('GET /health', { url: `${srv.url}/health` }));
      figures.enc.push(await run('encrypt-data (4 KiB)', { url: `${base}/encrypt-data`, ...json({ key_id: keyId, plain_text: plain }) }));
      figures.dec.push(await run('decrypt-data (4 KiB)', { url: `${base}/decrypt-data`, ...json({ cipher_text: ct }) }));
      figures.dk.push(await run('create-datakey (AES_256)', { url: `${base}/create-datakey`, ...json({ key_id: keyId }) }));
    }
    const [health, enc, dec, dk] = [median(figures.health), median(figures.enc), median(figures.dec), median(figures.dk)];
    console.log(`  ratios against /health in this run: encrypt-data ${(enc / health).toFixed(2)} (target >= 0.40), decrypt-data ${(dec / health).toFixed(2)}, create-datakey ${(dk / health).toFixed(2)}`);
    return { dk, plain, health };
  }).then(async ({ dk, plain, health }) => {
    // The floor: the same load generator and body against a server that does nothing but the HTTP,
    // the JSON and the AES-GCM of encrypt-data.
    const floor = await startFloorServer();
    try {
      console.log(`\nfloor: bare HTTP server, encrypt-data's body parsed and sealed with AES-256-GCM, nothing else (${ROUNDS} alternating rounds)`);
      const f = { health: [] as number[], enc: [] as number[] };
      const body = { method: 'POST' as const, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key_id: '00000000-0000-4000-8000-000000000000', plain_text: plain }) };
      for (let r = 0; r < ROUNDS; r++) {
        f.health.push(await run('GET /health', { url: `${floor.url}/health` }));
        f.enc.push(await run('encrypt-data (4 KiB), floor', { url: `${floor.url}/encrypt-data`, ...body }));
      }
      const [fh, fe] = [median(f.health), median(f.enc)];
      console.log(`  floor ratio encrypt-data/health: ${(fe / fh).toFixed(2)}`);
      console.log(`  bound on Custos's encrypt-data ratio: ${(ceilingRate(fe, fh, health) / health).toFixed(2)} (target 0.40), were authentication, policy, key lookup and the audit trace free`);
    } finally {
      await floor.stop();
    }
    return dk;
  });

  if (!SOFTHSM_AVAILABLE) {
    console.log('\npkcs11 root key: SoftHSMv2 is not installed (apt-get install -y softhsm2); no local/pkcs11 ratio');
    return;
  }
  const hsm = createSoftHsmToken('custos-bench', '24682468', 'CUSTOS_BENCH_HSM_PIN');
  try {
    const env = { CUSTOS_ROOT_KEY_PROVIDER: 'pkcs11', CUSTOS_PKCS11_MODULE: SOFTHSM_MODULE, CUSTOS_PKCS11_TOKEN_LABEL: 'custos-bench', CUSTOS_PKCS11_PIN_ENV: 'CUSTOS_BENCH_HSM_PIN' };
    await withServer({ env }, async (srv) => {
      const { token, base, keyId } = await setUp(srv);
      console.log('\npkcs11 root key (SoftHSMv2)');
      const health = await run('GET /health', { url: `${srv.url}/health` });
      const dk = await run('create-datakey (AES_256)', { url: `${base}/create-datakey`, method: 'POST', headers: { 'content-type': 'application/json', 'x-auth-token': token }, body: JSON.stringify({ key_id: keyId }) });
      console.log(`  create-datakey against /health: ${(dk / health).toFixed(2)}; local/pkcs11 create-datakey ratio: ${(local / dk).toFixed(2)}`);
      console.log('  (a CMK version is unwrapped by the HSM once and then kept in memory for 5 minutes, so steady-state data-key generation does not call the HSM)');
    });
  } finally {
    hsm.remove();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

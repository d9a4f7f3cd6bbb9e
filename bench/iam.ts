// bench/iam: requests/s of token-authenticated and AK/SK-signed calls against /health on the same
// server in the same run, and their ratios (target: authenticated >= 50% of /health). Every
// authenticated call is also traced by the audit trail, so the same figures are measured on the
// benchmark-only untraced server too, to tell IAM's cost from the trail's.
// Last, bench/floor-server answers the signed call after only verifying its signature: the bound on
// the AK/SK ratio any server can show on this machine with this load generator.
//   node dist/bench/iam.js     (BENCH_SECONDS=10 BENCH_CONNECTIONS=16 BENCH_ROUNDS=3; BENCH_DB=postgres for PostgreSQL)
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import autocannon from 'autocannon';
import { ceilingRate, startFloorServer } from './floor.js';
import { dropPgDatabase, freshPgDatabase } from './pg.js';
import { startServerProcess, type ServerProcess } from './server-process.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const here = path.dirname(fileURLToPath(import.meta.url));

async function run(title: string, opts: autocannon.Options): Promise<number> {
  const r = await autocannon({ connections: CONNECTIONS, duration: SECONDS, ...opts });
  const bad = r.non2xx + r.errors + r.timeouts;
  const rps = r.requests.average;
  console.log(`  ${title.padEnd(44)} ${rps.toFixed(0).padStart(8)} req/s   p50 ${r.latency.p50} ms   p99 ${r.latency.p99} ms${bad ? `   (${bad} failed!)` : ''}`);
  if (bad > r.requests.total * 0.01) throw new Error(`${title}: ${bad} of ${r.requests.total} requests failed`);
  return rps;
}

/** A pool of distinct SigV4-signed header sets for GET `path` on `url` (the replay cache refuses a repeat). */
async function signedPool(url: string, path: string, ak: string, sk: string, size: number): Promise<Record<string, string>[]> {
  const signer = new SignatureV4({ service: 'iam', region: 'cn-north-4', credentials: { accessKeyId: ak, secretAccessKey: sk }, sha256: Sha256 });
  const u = new URL(url);
  const pool: Record<string, string>[] = [];
  for (let i = 0; i < size; i++) {
    const signed = await signer.sign({
      method: 'GET', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path, query: {},
      headers: { host: u.host, 'x-custos-nonce': randomUUID() },
    });
    pool.push(signed.headers as Record<string, string>);
  }
  return pool;
}

async function measure(srv: ServerProcess, label: string): Promise<{ health: number; aksk: number }> {
  const tenant = await srv.createTenant('benchco');
  const url = srv.url;
  console.log(`\n${label}: Custos on ${url} (${process.env.BENCH_DB ? 'PostgreSQL' : 'SQLite'}), ${CONNECTIONS} connections, ${SECONDS} s per figure`);
  // /health and the token call take turns for BENCH_ROUNDS rounds; the ratios use the medians.
  const healths: number[] = [];
  const tokens: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    healths.push(await run('GET /health', { url: `${url}/health` }));
    tokens.push(await run('GET /v3/users/{id} (token)', { url: `${url}/v3/users/${tenant.userId}`, headers: { 'x-auth-token': tenant.token } }));
  }
  const health = median(healths);
  const token = median(tokens);
  // The caller reading itself is self-service, allowed without looking at policies; reading another
  // user of the account goes through the caller's policies (FullAccess through group admin).
  const created = await fetch(`${url}/v3.0/OS-USER/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': tenant.token },
    body: JSON.stringify({ user: { domain_id: tenant.accountId, name: 'other' } }),
  });
  if (created.status !== 201) throw new Error(`create user failed: ${created.status}`);
  const other = ((await created.json()) as { user: { id: string } }).user.id;
  const policy = await run('GET /v3/users/{other} (token, policy)', { url: `${url}/v3/users/${other}`, headers: { 'x-auth-token': tenant.token } });

  // Every signed request must be unique (the replay cache refuses a repeat), so sign a pool up front
  // with the AWS SDK's own SigV4 signer, each with a nonce header, and hand one to each request.
  const pool = await signedPool(url, `/v3/users/${tenant.userId}`, tenant.ak, tenant.sk, Math.ceil(token * SECONDS * 2) + Math.ceil(health * SECONDS * 1.2) + 1000);
  const aksk = await run('GET /v3/users/{id} (AK/SK SigV4)', {
    url: `${url}/v3/users/${tenant.userId}`,
    requests: [{ setupRequest: (req) => ({ ...req, headers: pool.pop() ?? {} }) }],
  });
  // The load generator itself slows down when it swaps headers on every request; this shows how fast
  // it can go doing so against /health, i.e. the ceiling the AK/SK figure can reach on this machine.
  const rotating = pool.splice(0, Math.min(pool.length, Math.ceil(health * SECONDS * 1.2)));
  const ceiling = await run('GET /health (rotating headers)', { url: `${url}/health`, requests: [{ setupRequest: (req) => ({ ...req, headers: rotating.pop() ?? {} }) }] });
  console.log(
    `  ratios against /health in this run (target >= 0.50): token ${(token / health).toFixed(2)}, token with a policy check ${(policy / health).toFixed(2)}, ` +
      `AK/SK ${(aksk / health).toFixed(2)} (AK/SK against the rotating-header ceiling: ${(aksk / ceiling).toFixed(2)})`,
  );
  return { health, aksk };
}

/**
 * The floor of the AK/SK figure on this machine: bench/floor-server answering the same signed GET after
 * only verifying its signature with Custos's verifier (an in-memory replay set, no database, no
 * policy, no audit trail), and after only parsing it, against the floor server's own /health.
 */
async function floor(custosHealth: number): Promise<void> {
  const ak = 'FLOORACCESSKEY';
  const sk = randomUUID();
  const srv = await startFloorServer({ FLOOR_SECRET: sk });
  try {
    console.log(`\nfloor: bare HTTP server, the signed GET only verified (or only parsed), nothing else; ${CONNECTIONS} connections, ${SECONDS} s per figure`);
    const health = await run('GET /health, floor', { url: `${srv.url}/health` });
    const verifiedPool = await signedPool(srv.url, '/v3/users/u1', ak, sk, Math.ceil(health * SECONDS * 0.8) + 1000);
    const verified = await run('GET /v3/users/{id} (SigV4 verified), floor', { url: `${srv.url}/v3/users/u1`, requests: [{ setupRequest: (req) => ({ ...req, headers: verifiedPool.pop() ?? {} }) }] });
    const parsedPool = await signedPool(srv.url, '/v3/users/u1', ak, sk, Math.ceil(health * SECONDS * 1.2) + 1000);
    const parsed = await run('GET /v3/users/{id} (SigV4 parsed), floor', { url: `${srv.url}/unverified/v3/users/u1`, requests: [{ setupRequest: (req) => ({ ...req, headers: parsedPool.pop() ?? {} }) }] });
    console.log(
      `  floor ratios against the floor's /health: verified ${(verified / health).toFixed(2)}, only parsed ${(parsed / health).toFixed(2)}; ` +
        `bound on Custos's AK/SK ratio: ${(ceilingRate(verified, health, custosHealth) / custosHealth).toFixed(2)} (target 0.50), were the key lookup, replay cache, policy and audit trace free`,
    );
  } finally {
    await srv.stop();
  }
}

async function main() {
  let traced: { health: number; aksk: number } | undefined;
  for (const [label, entry] of [['traced (as deployed)', undefined], ['untraced baseline (benchmark only)', path.join(here, 'untraced-server.js')]] as const) {
    const dbUrl = process.env.BENCH_DB ? await freshPgDatabase() : undefined;
    const srv = await startServerProcess({ databaseUrl: dbUrl, ...(entry ? { entry } : {}) });
    try {
      const m = await measure(srv, label);
      traced ??= m;
    } finally {
      await srv.stop();
      if (dbUrl) await dropPgDatabase(dbUrl);
    }
  }
  await floor(traced!.health);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

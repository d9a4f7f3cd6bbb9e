// bench/obs: object throughput in one run. PUT and GET MiB/s for 1 MiB and 64 MiB objects on the
// server as deployed (encrypted) and on a benchmark-only server storing plaintext (target: encrypted
// >= 70% of unencrypted), raw disk write (with fsync) and read of the same bytes, 4 KiB PUT and GET
// ops/s, and the same figures for s3rver on loopback (target: >= 2x s3rver). All through the AWS SDK,
// which also sets a ceiling, printed beside them: the same figures for a server that stores nothing.
// With BENCH_S3=1, also Custos with the upstream S3 blob backend (blobBackend "s3") writing to an
// s3rver on loopback, against the local-directory backend measured in the same run.
//   node dist/bench/obs.js     (BENCH_SECONDS=5 per small-object figure; BENCH_ROUNDS=3 alternating rounds, medians
//   reported; BENCH_DB=postgres for PostgreSQL)
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import { startBenchServer } from './floor.js';
import { dropPgDatabase, freshPgDatabase } from './pg.js';
import { Readable } from 'node:stream';
import { startServerProcess } from './server-process.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const here = path.dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
const SIZES = [{ size: MiB, count: 48 }, { size: 64 * MiB, count: 3 }];

interface Figures { put: number[]; get: number[]; smallPut: number; smallGet: number }

async function measure(client: S3Client, bucket: string): Promise<Figures> {
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  const put: number[] = [];
  const get: number[] = [];
  for (const { size, count } of SIZES) {
    const body = randomBytes(size);
    let t = process.hrtime.bigint();
    for (let i = 0; i < count; i++) await client.send(new PutObjectCommand({ Bucket: bucket, Key: `o${size}-${i}`, Body: body }));
    put.push((size * count) / MiB / (Number(process.hrtime.bigint() - t) / 1e9));
    t = process.hrtime.bigint();
    for (let i = 0; i < count; i++) {
      const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: `o${size}-${i}` }));
      for await (const _ of r.Body as AsyncIterable<Buffer>) void _;
    }
    get.push((size * count) / MiB / (Number(process.hrtime.bigint() - t) / 1e9));
  }
  const small = randomBytes(4096);
  const rate = async (op: (i: number) => Promise<unknown>) => {
    let n = 0;
    const end = Date.now() + SECONDS * 1000;
    await Promise.all(Array.from({ length: 16 }, async (_, w) => {
      while (Date.now() < end) await op(w * 1_000_000 + n++);
    }));
    return n / SECONDS;
  };
  let written = 0;
  const smallPut = await rate(async (i) => {
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: `s${i % 2000}`, Body: small }));
    written = Math.max(written, (i % 2000) + 1);
  });
  // Read only keys the PUT phase wrote (a slow or busy machine may write fewer than 1000).
  const readable = Math.min(1000, written);
  const smallGet = await rate(async (i) => {
    const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: `s${i % readable}` }));
    for await (const _ of r.Body as AsyncIterable<Buffer>) void _;
  });
  return { put, get, smallPut, smallGet };
}

async function disk(): Promise<{ write: number[]; read: number[] }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-bench-disk-'));
  const write: number[] = [];
  const read: number[] = [];
  try {
    for (const { size, count } of SIZES) {
      const body = randomBytes(size);
      let t = process.hrtime.bigint();
      for (let i = 0; i < count; i++) {
        const h = await open(path.join(dir, `f${i}`), 'w');
        await h.writeFile(body);
        await h.sync();
        await h.close();
      }
      write.push((size * count) / MiB / (Number(process.hrtime.bigint() - t) / 1e9));
      t = process.hrtime.bigint();
      for (let i = 0; i < count; i++) await readFile(path.join(dir, `f${i}`));
      read.push((size * count) / MiB / (Number(process.hrtime.bigint() - t) / 1e9));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { write, read };
}

/** Peak resident memory of a process (Linux), in MiB. */
async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

/** One large object streamed up and down; the server's peak memory (target: a 5 GiB upload under 256 MiB). */
async function bigObject(env?: Record<string, string>): Promise<{ mib: number; put: number; get: number; peakMiB: number; peakAfterPutMiB: number }> {
  const mib = Number(process.env.BENCH_BIG_MIB ?? 1024);
  const srv = await startServerProcess({ ...(env ? { env } : {}) });
  try {
    const t = await srv.createTenant('benchco');
    const client = new S3Client({ endpoint: srv.obsUrl, region: 'cn-north-4', forcePathStyle: true, credentials: { accessKeyId: t.ak, secretAccessKey: t.sk } });
    try {
      await client.send(new CreateBucketCommand({ Bucket: 'big' }));
      const chunk = randomBytes(MiB);
      const body = Readable.from((function* () {
        for (let i = 0; i < mib; i++) yield chunk;
      })());
      let t0 = process.hrtime.bigint();
      await client.send(new PutObjectCommand({ Bucket: 'big', Key: 'huge.bin', Body: body, ContentLength: mib * MiB }));
      const put = mib / (Number(process.hrtime.bigint() - t0) / 1e9);
      const peakAfterPutMiB = await peakRssMiB(srv.child.pid!);
      t0 = process.hrtime.bigint();
      const r = await client.send(new GetObjectCommand({ Bucket: 'big', Key: 'huge.bin' }));
      for await (const _ of r.Body as AsyncIterable<Buffer>) void _;
      const get = mib / (Number(process.hrtime.bigint() - t0) / 1e9);
      return { mib, put, get, peakMiB: await peakRssMiB(srv.child.pid!), peakAfterPutMiB };
    } finally {
      client.destroy();
    }
  } finally {
    await srv.stop();
  }
}

async function custos(entry?: string, env?: Record<string, string>): Promise<Figures> {
  const dbUrl = process.env.BENCH_DB ? await freshPgDatabase() : undefined;
  const srv = await startServerProcess({ databaseUrl: dbUrl, ...(entry ? { entry } : {}), ...(env ? { env } : {}) });
  try {
    const t = await srv.createTenant('benchco');
    const client = new S3Client({ endpoint: srv.obsUrl, region: 'cn-north-4', forcePathStyle: true, credentials: { accessKeyId: t.ak, secretAccessKey: t.sk } });
    try {
      return await measure(client, 'bench');
    } finally {
      client.destroy();
    }
  } finally {
    await srv.stop();
    if (dbUrl) await dropPgDatabase(dbUrl);
  }
}

async function s3rver(): Promise<Figures> {
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-bench-s3rver-'));
  const server = new S3rver({ port: 0, address: '127.0.0.1', directory: dir, silent: true });
  const { port } = (await server.run()) as { port: number };
  const client = new S3Client({ endpoint: `http://127.0.0.1:${port}`, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  try {
    return await measure(client, 'bench');
  } finally {
    client.destroy();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The ceiling this client sets on this machine: a server that stores nothing (bench/null-s3-server),
 * in its own process as Custos is. No S3 server can go faster through the same client here, so it
 * bounds the ratio against s3rver that any server can show.
 */
async function nullServer(): Promise<Figures> {
  const server = await startBenchServer('null-s3-server.js');
  const client = new S3Client({ endpoint: server.url, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'NULL', secretAccessKey: 'NULL' } });
  try {
    return await measure(client, 'bench');
  } finally {
    client.destroy();
    await server.stop();
  }
}

/** An s3rver on loopback as the upstream bucket, and the environment that points a Custos server at it. */
async function withUpstream<T>(run: (env: Record<string, string>) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-bench-upstream-'));
  const server = new S3rver({ port: 0, address: '127.0.0.1', directory: dir, silent: true, configureBuckets: [{ name: 'custos-blobs' }] });
  const { port } = (await server.run()) as { port: number };
  try {
    return await run({
      CUSTOS_BLOB_BACKEND: 's3', CUSTOS_BLOB_S3_ENDPOINT: `http://127.0.0.1:${port}`, CUSTOS_BLOB_S3_BUCKET: 'custos-blobs', CUSTOS_BLOB_S3_PATH_STYLE: 'true',
      CUSTOS_BLOB_S3_PREFIX: 'blobs/', CUSTOS_BLOB_S3_ACCESS_KEY_ID: 'S3RVER', CUSTOS_BLOB_S3_SECRET_ACCESS_KEY: 'S3RVER',
    });
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const f = (n: number) => n.toFixed(1).padStart(8);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
function medianFigures(runs: Figures[]): Figures {
  return {
    put: runs[0]!.put.map((_, i) => median(runs.map((r) => r.put[i]!))),
    get: runs[0]!.get.map((_, i) => median(runs.map((r) => r.get[i]!))),
    smallPut: median(runs.map((r) => r.smallPut)),
    smallGet: median(runs.map((r) => r.smallGet)),
  };
}
async function main() {
  console.log(`bench/obs: ${process.env.BENCH_DB ? 'PostgreSQL' : 'SQLite'}; ${SIZES.map((s) => `${s.count} x ${s.size / MiB} MiB`).join(', ')}; 4 KiB objects with 16 clients for ${SECONDS} s; medians of ${ROUNDS} alternating rounds (BENCH_ROUNDS)`);
  // The servers take turns, ROUNDS times, and each figure is the median of its rounds: one pass of
  // 48 sequential 1 MiB GETs lasts a fraction of a second, and single passes moved by half between runs.
  const runs: { enc: Figures[]; plain: Figures[]; fake: Figures[]; none: Figures[] } = { enc: [], plain: [], fake: [], none: [] };
  for (let r = 0; r < ROUNDS; r++) {
    runs.enc.push(await custos());
    runs.plain.push(await custos(path.join(here, 'plaintext-obs-server.js')));
    runs.fake.push(await s3rver());
    runs.none.push(await nullServer());
  }
  const enc = medianFigures(runs.enc);
  const plain = medianFigures(runs.plain);
  const fake = medianFigures(runs.fake);
  const none = medianFigures(runs.none);
  const raw = await disk();
  console.log(`\n  ${''.padEnd(34)}${SIZES.map((s) => `PUT ${s.size / MiB} MiB`.padStart(12) + `GET ${s.size / MiB} MiB`.padStart(12)).join('')}   4 KiB PUT/s  4 KiB GET/s`);
  const row = (name: string, x: Figures) => console.log(`  ${name.padEnd(34)}${x.put.map((p, i) => `${f(p)} MiB/s`.padStart(12) + `${f(x.get[i]!)} MiB/s`.padStart(12)).join('')}   ${f(x.smallPut)}     ${f(x.smallGet)}`);
  row('Custos, encrypted (as deployed)', enc);
  row('Custos, plaintext (bench only)', plain);
  row('s3rver', fake);
  row('a server that stores nothing', none);
  console.log(`  ${'raw disk (write+fsync / read)'.padEnd(34)}${raw.write.map((w, i) => `${f(w)} MiB/s`.padStart(12) + `${f(raw.read[i]!)} MiB/s`.padStart(12)).join('')}`);
  const ratio = (a: number[], b: number[]) => a.map((x, i) => (x / b[i]!).toFixed(2)).join(' / ');
  console.log(`\n  encrypted / plaintext (target >= 0.70): PUT ${ratio(enc.put, plain.put)}, GET ${ratio(enc.get, plain.get)}, 4 KiB PUT ${(enc.smallPut / plain.smallPut).toFixed(2)}, GET ${(enc.smallGet / plain.smallGet).toFixed(2)}`);
  const big = await bigObject();
  console.log(`\n  one ${big.mib} MiB object, streamed: PUT ${f(big.put)} MiB/s, GET ${f(big.get)} MiB/s; server peak RSS ${big.peakAfterPutMiB.toFixed(0)} MiB after the PUT (target for a 5 GiB upload: < 256 MiB; BENCH_BIG_MIB=5120 for that size), ${big.peakMiB.toFixed(0)} MiB after the GET`);
  console.log(`  encrypted / s3rver (target >= 2): PUT ${ratio(enc.put, fake.put)}, GET ${ratio(enc.get, fake.get)}, 4 KiB PUT ${(enc.smallPut / fake.smallPut).toFixed(2)}, GET ${(enc.smallGet / fake.smallGet).toFixed(2)}`);
  console.log(`  the ceiling through this client, a server that stores nothing / s3rver: PUT ${ratio(none.put, fake.put)}, GET ${ratio(none.get, fake.get)}, 4 KiB PUT ${(none.smallPut / fake.smallPut).toFixed(2)}, GET ${(none.smallGet / fake.smallGet).toFixed(2)}`);
  // A PUT acknowledged only once durable takes at least the null server's time plus writing and
  // fsyncing the same bytes (the raw-disk row): the most any durable server can show here.
  const durable = SIZES.map((_, i) => 1 / (1 / none.put[i]! + 1 / raw.write[i]!));
  console.log(`  the ceiling for a PUT acknowledged only after fsync (stores nothing, then the raw disk's write+fsync) / s3rver: PUT ${ratio(durable, fake.put)}`);
  if (process.env.BENCH_S3 === '1') {
    // The upstream (s3rver) runs in this process, beside the load generator, as the s3rver row above did.
    const ups = await withUpstream((env) => custos(undefined, env));
    console.log(`\n  upstream S3 blob backend (an s3rver on loopback as the bucket):`);
    row('Custos, encrypted, fs backend', enc);
    row('Custos, encrypted, s3 backend', ups);
    row('s3rver alone (the upstream)', fake);
    console.log(`  s3 backend / fs backend: PUT ${ratio(ups.put, enc.put)}, GET ${ratio(ups.get, enc.get)}, 4 KiB PUT ${(ups.smallPut / enc.smallPut).toFixed(2)}, GET ${(ups.smallGet / enc.smallGet).toFixed(2)}`);
    console.log(`  s3 backend / s3rver alone: PUT ${ratio(ups.put, fake.put)}, GET ${ratio(ups.get, fake.get)}, 4 KiB PUT ${(ups.smallPut / fake.smallPut).toFixed(2)}, GET ${(ups.smallGet / fake.smallGet).toFixed(2)}`);
    const bigUp = await withUpstream((env) => bigObject(env));
    console.log(`  one ${bigUp.mib} MiB object through the s3 backend: PUT ${f(bigUp.put)} MiB/s, GET ${f(bigUp.get)} MiB/s; server peak RSS ${bigUp.peakAfterPutMiB.toFixed(0)} MiB after the PUT, ${bigUp.peakMiB.toFixed(0)} MiB after the GET (fs backend: ${big.peakAfterPutMiB.toFixed(0)} / ${big.peakMiB.toFixed(0)} MiB)`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

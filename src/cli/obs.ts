/** `custos obs ...`: buckets and objects on the S3/OBS listener with a stored profile, with progress bars. */
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { rename, unlink } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import cliProgress from 'cli-progress';
import { Command } from 'commander';
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { profile } from './client.js';
import { print, type OutputFormat } from './output.js';

type Profile = ReturnType<typeof profile>;
const parser = new XMLParser({ ignoreAttributes: true, parseTagValue: false });

/** The S3/OBS listener: CUSTOS_OBS_ENDPOINT, or the profile's endpoint with the port + 1 (the default layout). */
function obsEndpoint(p: Profile): string {
  if (process.env.CUSTOS_OBS_ENDPOINT) return process.env.CUSTOS_OBS_ENDPOINT;
  const u = new URL(p.endpoint);
  u.port = String(Number(u.port || (u.protocol === 'https:' ? 443 : 80)) + 1);
  return u.toString().replace(/\/$/, '');
}

function parseS3Url(s: string): { bucket: string; key: string } | null {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(s);
  return m ? { bucket: m[1]!, key: m[2] ?? '' } : null;
}
const enc = (key: string) => key.split('/').map(encodeURIComponent).join('/');

async function s3(p: Profile, method: string, path: string, init: { body?: BodyInit | Readable; headers?: Record<string, string>; length?: number } = {}): Promise<Response> {
  const res = await fetch(`${obsEndpoint(p)}${path}`, {
    method,
    headers: { 'x-auth-token': p.token ?? '', ...(init.length !== undefined ? { 'content-length': String(init.length) } : {}), ...init.headers },
    ...(init.body !== undefined ? { body: init.body as BodyInit, duplex: 'half' } : {}),
  } as RequestInit);
  if (!res.ok) {
    const text = await res.text();
    const doc = text ? (parser.parse(text) as { Error?: { Code?: string; Message?: string } }) : {};
    throw Object.assign(new Error(`${res.status} ${doc.Error?.Code ?? ''}: ${doc.Error?.Message ?? (text || res.statusText)}`), { exitCode: res.status === 404 ? 3 : 1 });
  }
  return res;
}

/** A bar on a terminal; elsewhere one line when done. */
function progress(total: number, label: string) {
  const started = Date.now();
  const bar = process.stderr.isTTY ? new cliProgress.SingleBar({ format: `${label} [{bar}] {percentage}% | {value}/{total} bytes | {eta}s left`, stream: process.stderr }, cliProgress.Presets.shades_classic) : null;
  bar?.start(total, 0);
  let done = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _e, cb) {
      done += chunk.length;
      bar?.update(done);
      cb(null, chunk);
    },
  });
  return {
    meter,
    finish() {
      bar?.stop();
      const s = (Date.now() - started) / 1000;
      process.stderr.write(`${label}: ${done} bytes in ${s.toFixed(1)} s (${(done / 1048576 / Math.max(s, 0.001)).toFixed(1)} MiB/s)\n`);
    },
  };
}

export function obsCommand(): Command {
  const obs = new Command('obs').description('OBS: buckets and objects (S3-compatible), encrypted by KMS');
  const common = (c: Command) => c.option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default').option('-o, --output <format>', 'json or table', 'table');

  common(obs.command('mb').description('make a bucket').argument('<s3://bucket>')).option('--region <region>', 'region to keep the bucket in').action(async (url: string, opts) => {
    const t = parseS3Url(url);
    if (!t || t.key) throw Object.assign(new Error('give the bucket as s3://bucket'), { exitCode: 2 });
    const body = opts.region ? new XMLBuilder({}).build({ CreateBucketConfiguration: { LocationConstraint: opts.region } }) : undefined;
    await s3(profile(opts.profile), 'PUT', `/${t.bucket}`, body ? { body, headers: { 'content-type': 'application/xml' } } : {});
    process.stderr.write(`made bucket ${t.bucket}\n`);
  });

  common(obs.command('ls').description('list buckets, or the objects under s3://bucket/prefix').argument('[s3://bucket/prefix]')).option('--recursive', 'every key, not one level').action(async (url: string | undefined, opts) => {
    const p = profile(opts.profile);
    if (!url) {
      const doc = parser.parse(await (await s3(p, 'GET', '/')).text()) as { ListAllMyBucketsResult?: { Buckets?: { Bucket?: unknown } } };
      const raw = doc.ListAllMyBucketsResult?.Buckets?.Bucket;
      const list = (Array.isArray(raw) ? raw : raw ? [raw] : []) as { Name: string; CreationDate: string; BucketRegion?: string }[];
      return print(opts.output as OutputFormat, list.map((b) => ({ bucket: b.Name, region: b.BucketRegion ?? '', created: b.CreationDate })));
    }
    const t = parseS3Url(url);
    if (!t) throw Object.assign(new Error('give s3://bucket[/prefix]'), { exitCode: 2 });
    const rows: Record<string, unknown>[] = [];
    let token: string | undefined;
    do {
      const q = new URLSearchParams({ 'list-type': '2', prefix: t.key, ...(opts.recursive ? {} : { delimiter: '/' }), ...(token ? { 'continuation-token': token } : {}) });
      const doc = parser.parse(await (await s3(p, 'GET', `/${t.bucket}?${q.toString()}`)).text()) as { ListBucketResult: { Contents?: unknown; CommonPrefixes?: unknown; IsTruncated?: string; NextContinuationToken?: string } };
      const r = doc.ListBucketResult;
      const arr = <T>(v: unknown) => (Array.isArray(v) ? v : v ? [v] : []) as T[];
      for (const cp of arr<{ Prefix: string }>(r.CommonPrefixes)) rows.push({ key: cp.Prefix, size: '', modified: '(prefix)' });
      for (const c of arr<{ Key: string; Size: string; LastModified: string }>(r.Contents)) rows.push({ key: c.Key, size: Number(c.Size), modified: c.LastModified });
      token = r.IsTruncated === 'true' ? r.NextContinuationToken : undefined;
    } while (token);
    print(opts.output as OutputFormat, rows);
  });

  common(obs.command('cp').description('copy a local file to s3://bucket/key, or an object to a local file (with progress)').argument('<from>').argument('<to>')).action(async (from: string, to: string, opts) => {
    const p = profile(opts.profile);
    const src = parseS3Url(from);
    const dst = parseS3Url(to);
    if (!src === !dst) throw Object.assign(new Error('one side is s3://bucket/key and the other a local file'), { exitCode: 2 });
    if (dst) {
      const key = dst.key === '' || dst.key.endsWith('/') ? `${dst.key}${from.split('/').pop()}` : dst.key;
      const size = statSync(from).size;
      const bar = progress(size, `upload ${from}`);
      await s3(p, 'PUT', `/${dst.bucket}/${enc(key)}`, { body: Readable.toWeb(createReadStream(from).pipe(bar.meter)) as unknown as Readable, length: size, headers: { 'content-type': 'application/octet-stream' } });
      bar.finish();
      return;
    }
    const res = await s3(p, 'GET', `/${src!.bucket}/${enc(src!.key)}`);
    const size = Number(res.headers.get('content-length') ?? 0);
    const bar = progress(size, `download ${from}`);
    // Written beside the target and renamed when complete, so a failed download leaves no partial file.
    const partial = `${to}.custos-partial`;
    try {
      await pipeline(Readable.fromWeb(res.body as never), bar.meter, createWriteStream(partial, { mode: 0o600 }));
      await rename(partial, to);
    } catch (e) {
      await unlink(partial).catch(() => undefined);
      throw e;
    }
    bar.finish();
  });

  common(obs.command('rm').description('delete an object').argument('<s3://bucket/key>')).action(async (url: string, opts) => {
    const t = parseS3Url(url);
    if (!t || !t.key) throw Object.assign(new Error('give s3://bucket/key'), { exitCode: 2 });
    await s3(profile(opts.profile), 'DELETE', `/${t.bucket}/${enc(t.key)}`);
    process.stderr.write(`deleted ${url}\n`);
  });
  return obs;
}

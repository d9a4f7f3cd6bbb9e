// An S3-compatible upstream for tests: s3rver on loopback, storing objects as files in a temporary
// directory (so a test can scan what the upstream holds). s3rver implements multipart uploads but not
// ListMultipartUploads nor AbortMultipartUpload; the two are added here on top of s3rver's own upload
// directories (<dir>/<bucket>/._S3rver_uploads/<uploadId>/{key,<part>...}), so what a test sees is
// still s3rver's storage. A test can also make parts fail, and count acknowledged part bytes.
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';

export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface Upstream {
  endpoint: string;
  bucket: string;
  /** s3rver's storage directory. */
  dir: string;
  /** Bytes of UploadPart requests the upstream acknowledged so far. */
  acknowledgedPartBytes: number;
  /** Request kinds seen, e.g. `PUT part`, `POST uploads` (create), `POST complete`, `PUT object`, `DELETE abort`. */
  requests: string[];
  /** Answer 500 to UploadPart while this says so. */
  failPart?: (key: string, partNumber: number) => boolean;
  /** Multipart uploads not completed nor aborted (their directories in s3rver's storage). */
  openUploads(): string[];
  /** Every file under s3rver's storage directory. */
  files(): string[];
  close(): Promise<void>;
}

interface KoaContext {
  method: string;
  path: string;
  query: Record<string, string | undefined>;
  status: number;
  body: unknown;
  get(header: string): string;
}
type Middleware = (ctx: KoaContext, next: () => Promise<void>) => Promise<void>;

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

export async function startUpstream(bucket = 'custos-blobs'): Promise<Upstream> {
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-s3rver-'));
  const server = new S3rver({ port: 0, address: '127.0.0.1', directory: dir, silent: true, configureBuckets: [{ name: bucket }] });
  const uploadsOf = (b: string) => path.join(dir, b, '._S3rver_uploads');
  const upstream: Upstream = {
    endpoint: '',
    bucket,
    dir,
    acknowledgedPartBytes: 0,
    requests: [],
    openUploads: () => {
      try {
        return readdirSync(uploadsOf(bucket));
      } catch {
        return [];
      }
    },
    files: () => filesUnder(dir),
    close: async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const shim: Middleware = async (ctx, next) => {
    const [, b, ...rest] = ctx.path.split('/');
    const key = decodeURIComponent(rest.join('/'));
    const q = ctx.query;
    const kind = q.uploadId !== undefined ? (ctx.method === 'PUT' ? 'part' : ctx.method === 'POST' ? 'complete' : 'abort') : q.uploads !== undefined ? 'uploads' : key ? 'object' : 'bucket';
    upstream.requests.push(`${ctx.method} ${kind}`);
    if (b && !key && ctx.method === 'GET' && q.uploads !== undefined) {
      // ListMultipartUploads (one page, enough for tests).
      const prefix = q.prefix ?? '';
      const uploads: { Key: string; UploadId: string; Initiated: string }[] = [];
      for (const id of await readdir(uploadsOf(b)).catch(() => [] as string[])) {
        const k = await readFile(path.join(uploadsOf(b), id, 'key'), 'utf8').catch(() => null);
        const s = await stat(path.join(uploadsOf(b), id)).catch(() => null);
        if (k === null || !s || !k.startsWith(prefix)) continue;
        uploads.push({ Key: k, UploadId: id, Initiated: new Date(s.birthtimeMs || s.mtimeMs).toISOString() });
      }
      ctx.status = 200;
      ctx.body = { ListMultipartUploadsResult: { Bucket: b, Prefix: prefix, MaxUploads: 1000, IsTruncated: false, Upload: uploads } };
      return;
    }
    if (b && key && ctx.method === 'DELETE' && q.uploadId !== undefined) {
      // AbortMultipartUpload.
      const d = path.join(uploadsOf(b), path.basename(q.uploadId));
      if (!(await stat(d).catch(() => null))) {
        ctx.status = 404;
        ctx.body = { Error: { Code: 'NoSuchUpload', Message: 'The specified upload does not exist.' } };
        return;
      }
      await rm(d, { recursive: true, force: true });
      ctx.status = 204;
      return;
    }
    if (ctx.method === 'PUT' && q.uploadId !== undefined && upstream.failPart?.(key, Number(q.partNumber))) {
      ctx.status = 500;
      ctx.body = { Error: { Code: 'InternalError', Message: 'injected by the test' } };
      return;
    }
    await next();
    if (ctx.method === 'PUT' && q.uploadId !== undefined && ctx.status === 200) upstream.acknowledgedPartBytes += Number(ctx.get('content-length'));
  };
  const koa = server as unknown as { middleware: Middleware[] };
  // Just before s3rver's router (the last middleware), after its XML encoding of response bodies.
  koa.middleware.splice(koa.middleware.length - 1, 0, shim);
  const { port } = (await server.run()) as { port: number };
  upstream.endpoint = `http://127.0.0.1:${port}`;
  return upstream;
}

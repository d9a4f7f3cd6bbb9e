/**
 * Blobs in an upstream S3-compatible bucket (Ceph RGW, MinIO, a public cloud), one object per blob
 * under `<prefix><id>`. Custos hands this layer ciphertext only, so the upstream never holds content
 * or keys in the clear.
 *
 * A write is whole or nothing: a blob smaller than one part is a single PUT; a larger one is a
 * multipart upload whose parts are sent while the stream is still being read (a few parts in flight,
 * so memory stays bounded whatever the blob's size), and the blob exists under its key only once the
 * upstream has acknowledged CompleteMultipartUpload. A write that fails aborts its upload; one that a
 * crash interrupts is aborted by `clearInterruptedWrites` later.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectCommand, GetObjectCommand, HeadBucketCommand,
  HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand, S3Client, UploadPartCommand, type CompletedPart,
} from '@aws-sdk/client-s3';
import type { Config } from '../config.js';
import { BLOB_ID, type BlobStore } from './blobs.js';

/** A start-up problem with the upstream bucket (unreachable, credentials refused, no such bucket). */
export class BlobStoreError extends Error {
  override name = 'BlobStoreError';
}

export interface S3BlobStoreOptions {
  /** The upstream's URL; unset: the SDK's address for `region`. */
  endpoint?: string;
  bucket: string;
  region: string;
  /** Put in front of every blob id to make its key (e.g. `custos/blobs/`). */
  prefix?: string;
  /** Path-style addressing (`<endpoint>/<bucket>/<key>`), which most self-hosted servers need. */
  forcePathStyle?: boolean;
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Verify the upstream's TLS certificate (on unless deliberately turned off). */
  tlsVerify?: boolean;
  /** Extra trusted CA certificates (PEM), for an upstream with a private CA. */
  ca?: Buffer;
  /** Size of the first 1000 parts (S3 needs at least 5 MiB for all but the last); doubled every 1000 parts after. */
  partBytes?: number;
  /** Parts sent at once by one write; memory per write is about (partsInFlight + 2) x partBytes. */
  partsInFlight?: number;
  /** How to describe where the credentials came from in start-up errors (never the values). */
  credentialsSource?: string;
}

const MiB = 1024 * 1024;
const S3_MIN_PART = 5 * MiB;

function statusOf(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function md5(body: Buffer): string {
  return createHash('md5').update(body).digest('base64');
}

export class S3BlobStore implements BlobStore {
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly partBytes: number;
  private readonly partsInFlight: number;

  constructor(private readonly opts: S3BlobStoreOptions) {
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? '';
    this.partBytes = Math.max(opts.partBytes ?? 8 * MiB, S3_MIN_PART);
    this.partsInFlight = Math.max(1, opts.partsInFlight ?? 4);
    this.client = new S3Client({
      region: opts.region,
      ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
      forcePathStyle: opts.forcePathStyle ?? false,
      credentials: opts.credentials,
      // Integrity of each request is checked with Content-MD5, which every S3-compatible server
      // understands; the SDK's newer default checksums are not accepted by all of them.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        httpsAgent: new https.Agent({ keepAlive: true, maxSockets: 64, rejectUnauthorized: opts.tlsVerify ?? true, ...(opts.ca ? { ca: opts.ca } : {}) }),
        connectionTimeout: 10_000,
        requestTimeout: 120_000,
      },
    });
  }

  /** Builds the store and checks (HEAD bucket) that the bucket is there and the credentials are accepted. */
  static async open(opts: S3BlobStoreOptions): Promise<S3BlobStore> {
    const store = new S3BlobStore(opts);
    try {
      await store.checkBucket();
    } catch (e) {
      store.client.destroy();
      throw e;
    }
    return store;
  }

  private keyOf(id: string): string {
    if (!BLOB_ID.test(id)) throw new Error(`invalid blob id ${JSON.stringify(id)}`);
    return this.prefix + id;
  }

  /** Part `n` (1-based): the base size for parts 1-1000, twice that for 1001-2000, and so on (S3 allows 10,000). */
  private partSize(n: number): number {
    return this.partBytes * 2 ** Math.floor((n - 1) / 1000);
  }

  async write(id: string, data: Readable | AsyncIterable<Buffer>): Promise<{ bytes: number }> {
    const key = this.keyOf(id);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let bytes = 0;
    let upload: MultipartWrite | undefined;
    // Part buffers are reused once the upstream has answered for them, so a long upload allocates
    // (partsInFlight + 1) of them rather than one per part (less garbage, a steadier memory peak).
    const free: Buffer[] = [];
    const takePart = (size: number): Buffer => {
      const buf = free.pop() ?? Buffer.allocUnsafeSlow(size);
      const part = buf.length === size ? buf : Buffer.allocUnsafeSlow(size);
      let filled = 0;
      while (filled < size) {
        const c = pending[0]!;
        const n = Math.min(c.length, size - filled);
        c.copy(part, filled, 0, n);
        filled += n;
        if (n === c.length) pending.shift();
        else pending[0] = c.subarray(n);
      }
      pendingBytes -= size;
      return part;
    };
    try {
      for await (const chunk of data as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        pending.push(chunk);
        pendingBytes += chunk.length;
        let want = this.partSize((upload?.count ?? 0) + 1);
        while (pendingBytes >= want) {
          upload ??= await MultipartWrite.start(this.client, this.bucket, key, this.partsInFlight);
          const part = takePart(want);
          await upload.add(part, () => free.push(part));
          want = this.partSize(upload.count + 1);
        }
      }
      const last = Buffer.concat(pending, pendingBytes);
      pending = [];
      if (!upload) {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: last, ContentLength: last.length, ContentMD5: md5(last) }));
      } else {
        if (last.length > 0) await upload.add(last, () => undefined);
        await upload.complete();
      }
      return { bytes };
    } catch (e) {
      if (upload) await upload.abort();
      throw e;
    }
  }

  async readAt(id: string, offset: number, length: number): Promise<Buffer> {
    const key = this.keyOf(id);
    if (length <= 0) return Buffer.alloc(0);
    let res;
    try {
      res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key, Range: `bytes=${offset}-${offset + length - 1}` }));
    } catch (e) {
      if (statusOf(e) === 416) return Buffer.alloc(0); // the range starts at or past the end
      throw e;
    }
    const body = await res.Body!.transformToByteArray();
    let buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    // A server that ignores Range answers with the whole blob.
    if (res.ContentRange === undefined && offset > 0) buf = buf.subarray(offset);
    return buf.length > length ? buf.subarray(0, length) : buf;
  }

  async size(id: string): Promise<number | null> {
    try {
      const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(id) }));
      return head.ContentLength ?? 0;
    } catch (e) {
      if (statusOf(e) === 404) return null;
      throw e;
    }
  }

  async delete(id: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyOf(id) }));
    } catch (e) {
      if (statusOf(e) !== 404) throw e;
    }
  }

  async *list(): AsyncIterable<{ id: string; modifiedAt: number }> {
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix, ...(token ? { ContinuationToken: token } : {}) }));
      for (const o of page.Contents ?? []) {
        const id = o.Key?.slice(this.prefix.length);
        if (id && o.Key!.startsWith(this.prefix) && BLOB_ID.test(id)) yield { id, modifiedAt: o.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  /** Aborts the multipart uploads under the prefix that were started more than `olderThanMs` ago. */
  async clearInterruptedWrites(olderThanMs: number, now = Date.now()): Promise<number> {
    let removed = 0;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const page = await this.client.send(new ListMultipartUploadsCommand({
        Bucket: this.bucket, Prefix: this.prefix, ...(keyMarker ? { KeyMarker: keyMarker } : {}), ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
      }));
      for (const u of page.Uploads ?? []) {
        if (!u.Key?.startsWith(this.prefix) || !BLOB_ID.test(u.Key.slice(this.prefix.length)) || !u.UploadId) continue;
        if (u.Initiated && now - u.Initiated.getTime() <= olderThanMs) continue;
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }));
        removed++;
      }
      if (!page.IsTruncated || (!page.NextKeyMarker && !page.NextUploadIdMarker)) return removed;
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  /** HEAD bucket, with the failure said in words an operator can act on (no credential is ever named by value). */
  async checkBucket(): Promise<void> {
    const where = `blob bucket "${this.bucket}"${this.opts.endpoint ? ` at ${new URL(this.opts.endpoint).origin}` : ` in region ${this.opts.region}`}`;
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (e) {
      const status = statusOf(e);
      const creds = this.opts.credentialsSource ? ` (from ${this.opts.credentialsSource})` : '';
      if (status === 403 || status === 401) throw new BlobStoreError(`the upstream refused the credentials${creds} for ${where} (HTTP ${status})`);
      if (status === 404) throw new BlobStoreError(`${where} does not exist (HTTP 404): create it upstream first`);
      if (status === 301 || status === 307 || status === 400) throw new BlobStoreError(`${where} answered HTTP ${status}: check the region and the path-style setting`);
      if (status !== undefined) throw new BlobStoreError(`${where} answered HTTP ${status} to HEAD bucket`);
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).name;
      const tls = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(code) ? ': its TLS certificate is not trusted (give blobS3CaFile)' : '';
      throw new BlobStoreError(`cannot reach ${where}: ${code}${tls}`);
    }
  }
}

/** One multipart upload in progress: parts sent as they are added, a bounded number at a time. */
class MultipartWrite {
  count = 0;
  private readonly parts: CompletedPart[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;

  private constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    private readonly key: string,
    private readonly uploadId: string,
    private readonly maxInFlight: number,
  ) {}

  static async start(client: S3Client, bucket: string, key: string, maxInFlight: number): Promise<MultipartWrite> {
    const created = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
    if (!created.UploadId) throw new Error('the upstream started a multipart upload without an upload id');
    return new MultipartWrite(client, bucket, key, created.UploadId, maxInFlight);
  }

  /**
   * Sends the next part; waits while too many are in flight, and fails once any part has failed.
   * `release` is called once the upstream has answered (the buffer may then be reused).
   */
  async add(body: Buffer, release: () => void): Promise<void> {
    while (this.inFlight.size >= this.maxInFlight) await Promise.race(this.inFlight);
    if (this.failure !== undefined) throw this.failure;
    const n = ++this.count;
    const sent: Promise<void> = this.client
      .send(new UploadPartCommand({ Bucket: this.bucket, Key: this.key, UploadId: this.uploadId, PartNumber: n, Body: body, ContentLength: body.length, ContentMD5: md5(body) }))
      .then(
        (r) => {
          if (!r.ETag) throw new Error(`the upstream returned no ETag for part ${n}`);
          this.parts[n - 1] = { PartNumber: n, ETag: r.ETag };
        },
      )
      .catch((e: unknown) => {
        this.failure ??= e;
      })
      .finally(() => {
        this.inFlight.delete(sent);
        if (this.failure === undefined) release();
      });
    this.inFlight.add(sent);
  }

  /** Waits for every part, then completes: only now does the blob exist under its key. */
  async complete(): Promise<void> {
    await Promise.all(this.inFlight);
    if (this.failure !== undefined) throw this.failure;
    await this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: this.uploadId, MultipartUpload: { Parts: this.parts } }));
  }

  /** Lets the parts in flight settle, then aborts (best effort: housekeeping aborts what this misses). */
  async abort(): Promise<void> {
    await Promise.all(this.inFlight);
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: this.uploadId })).catch(() => undefined);
  }
}

/** The store the configuration describes; credentials come from the environment variables it names. */
export async function openS3BlobStore(config: Config, env: NodeJS.ProcessEnv = process.env): Promise<S3BlobStore> {
  const akEnv = config.blobS3AccessKeyIdEnv;
  const skEnv = config.blobS3SecretAccessKeyEnv;
  const accessKeyId = env[akEnv];
  const secretAccessKey = env[skEnv];
  if (!accessKeyId || !secretAccessKey) {
    throw new BlobStoreError(`blobBackend "s3" needs the upstream's access key id in ${akEnv} and its secret access key in ${skEnv} (environment variables)`);
  }
  const sessionToken = env[config.blobS3SessionTokenEnv];
  let ca: Buffer | undefined;
  if (config.blobS3CaFile !== undefined) {
    try {
      ca = readFileSync(config.blobS3CaFile);
    } catch (e) {
      throw new BlobStoreError(`cannot read blobS3CaFile ${config.blobS3CaFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  return S3BlobStore.open({
    ...(config.blobS3Endpoint ? { endpoint: config.blobS3Endpoint } : {}),
    bucket: config.blobS3Bucket!,
    region: config.blobS3Region,
    prefix: config.blobS3Prefix,
    forcePathStyle: config.blobS3PathStyle,
    credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) },
    tlsVerify: config.blobS3TlsVerify,
    ...(ca ? { ca } : {}),
    credentialsSource: `${akEnv} / ${skEnv}`,
  });
}

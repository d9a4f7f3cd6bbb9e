/**
 * Blob storage behind one interface: a local directory (here) or an upstream S3-compatible bucket
 * (blobs-s3.ts). A blob is written whole or not at all. Locally the bytes go to a temporary file that
 * is fsync'd, then renamed into place and the directory fsync'd, so an acknowledged write survives a
 * crash and a crash mid-write never leaves a partial blob under its id.
 * Custos only ever hands this layer ciphertext.
 */
import { randomBytes } from '../crypto/random.js';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';

export interface BlobStore {
  /** Stores the stream under `id`; resolves once the blob is durable. An existing blob is replaced. */
  write(id: string, data: Readable | AsyncIterable<Buffer>): Promise<{ bytes: number }>;
  /** Reads `length` bytes at `offset` (fewer only at the end of the blob). */
  readAt(id: string, offset: number, length: number): Promise<Buffer>;
  /** The blob's size, or null when there is none. */
  size(id: string): Promise<number | null>;
  delete(id: string): Promise<void>;
  /** Every stored blob with its last modification time (for collecting orphans). */
  list(): AsyncIterable<{ id: string; modifiedAt: number }>;
  /**
   * Removes what writes a crash interrupted (started more than `olderThanMs` before `now`): temporary
   * files locally, incomplete multipart uploads upstream. Returns how many it removed.
   */
  clearInterruptedWrites(olderThanMs: number, now?: number): Promise<number>;
  /** Releases connections (an upstream client); a local store holds none. */
  close?(): Promise<void>;
}

/** What a blob id looks like; anything else under a store's root is not a blob. */
export const BLOB_ID = /^[A-Za-z0-9_-]{8,128}$/;
const ID = BLOB_ID;

function checkId(id: string): void {
  if (!ID.test(id)) throw new Error(`invalid blob id ${JSON.stringify(id)}`);
}

/** Blobs as files under `<root>/<2 chars>/<2 chars>/<id>`; temporary files under `<root>/.tmp`. */
export class FsBlobStore implements BlobStore {
  private readonly tmp: string;
  constructor(private readonly root: string) {
    this.tmp = path.join(root, '.tmp');
  }

  private pathOf(id: string): string {
    checkId(id);
    return path.join(this.root, id.slice(0, 2), id.slice(2, 4), id);
  }

  async write(id: string, data: Readable | AsyncIterable<Buffer>): Promise<{ bytes: number }> {
    const final = this.pathOf(id);
    await mkdir(this.tmp, { recursive: true });
    await mkdir(path.dirname(final), { recursive: true });
    const tmpPath = path.join(this.tmp, `${id}.${randomBytes(6).toString('hex')}`);
    const handle = await open(tmpPath, 'wx', 0o600);
    let bytes = 0;
    try {
      for await (const chunk of data as AsyncIterable<Buffer>) {
        let written = 0;
        while (written < chunk.length) written += (await handle.write(chunk, written, chunk.length - written)).bytesWritten;
        bytes += chunk.length;
      }
      await handle.sync();
      await handle.close();
    } catch (e) {
      await handle.close().catch(() => undefined);
      await unlink(tmpPath).catch(() => undefined);
      throw e;
    }
    await rename(tmpPath, final);
    await syncDir(path.dirname(final));
    return { bytes };
  }

  async readAt(id: string, offset: number, length: number): Promise<Buffer> {
    const handle = await open(this.pathOf(id), 'r');
    try {
      const buf = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await handle.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return buf.subarray(0, got);
    } finally {
      await handle.close();
    }
  }

  async size(id: string): Promise<number | null> {
    try {
      return (await stat(this.pathOf(id))).size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async delete(id: string): Promise<void> {
    await rm(this.pathOf(id), { force: true });
  }

  async *list(): AsyncIterable<{ id: string; modifiedAt: number }> {
    const level = async (dir: string) => (await readdir(dir, { withFileTypes: true }).catch(() => [])).filter((d) => d.isDirectory() && d.name.length === 2);
    for (const a of await level(this.root)) {
      for (const b of await level(path.join(this.root, a.name))) {
        const dir = path.join(this.root, a.name, b.name);
        for (const f of await readdir(dir)) {
          if (!ID.test(f)) continue;
          const s = await stat(path.join(dir, f)).catch(() => null);
          if (s) yield { id: f, modifiedAt: s.mtimeMs };
        }
      }
    }
  }

  /** Removes temporary files left by writes a crash interrupted (older than `olderThanMs`). */
  async clearInterruptedWrites(olderThanMs: number, now = Date.now()): Promise<number> {
    let removed = 0;
    for (const f of await readdir(this.tmp).catch(() => [] as string[])) {
      const p = path.join(this.tmp, f);
      const s = await stat(p).catch(() => null);
      if (s && now - s.mtimeMs > olderThanMs) {
        await unlink(p).catch(() => undefined);
        removed++;
      }
    }
    return removed;
  }
}

/** A rename is durable only once its directory is; not every platform lets a directory be fsync'd. */
async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r').catch(() => null);
  if (!h) return;
  try {
    await h.sync();
  } catch {
    /* directories cannot be fsync'd here (e.g. some network file systems) */
  } finally {
    await h.close();
  }
}

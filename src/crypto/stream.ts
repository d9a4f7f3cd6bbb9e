/**
 * Chunked authenticated encryption for content of any size (objects, exports): the plaintext is cut
 * into packages of 64 KiB, each sealed with AES-256-GCM under the content's own data key. A range
 * read decrypts only the packages it covers; a package moved, dropped, duplicated or altered, a
 * truncated stream and a changed context each fail authentication. (The construction follows the
 * idea of MinIO's DARE: a per-stream random nonce prefix, the package's sequence number in the
 * nonce, and a final flag in the authenticated data.)
 *
 *   header (16 bytes): "CSE1" | version 1 | algorithm 1 (AES-256-GCM) | log2(package size) | 0 | nonce prefix (8)
 *   package i:         ciphertext (≤ package size) | tag (16)
 *   nonce of package i:  nonce prefix | uint32 i (big-endian)
 *   AAD of package i:    header | uint32 i | final flag (0 or 1) | the caller's context
 *
 * Every stream ends with a package flagged final, empty when the plaintext fills its last package
 * exactly (or is empty), so cutting a stream at a package boundary is detected too.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { randomBytes } from './random.js';
import { Transform, type TransformCallback } from 'node:stream';

const MAGIC = Buffer.from('CSE1');
const VERSION = 1;
const ALG_AES_256_GCM = 1;
export const HEADER_BYTES = 16;
export const TAG_BYTES = 16;
export const PACKAGE_LOG2 = 16;
export const PACKAGE_BYTES = 1 << PACKAGE_LOG2;
/** 2^32 packages of 64 KiB: 256 TiB per stream, far above any object size limit. */
const MAX_PACKAGES = 2 ** 32;
/** Packages read per call when decrypting a range (32 x 64 KiB = 2 MiB). */
const READ_BATCH = 32;

export class StreamAuthError extends Error {
  override name = 'StreamAuthError';
  constructor(message = 'encrypted content failed authentication: it was altered, truncated or reordered, or the context differs') {
    super(message);
  }
}

function headerOf(noncePrefix: Buffer): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(h, 0);
  h[4] = VERSION;
  h[5] = ALG_AES_256_GCM;
  h[6] = PACKAGE_LOG2;
  noncePrefix.copy(h, 8);
  return h;
}

function packageIv(header: Buffer, seq: number): Buffer {
  const iv = Buffer.alloc(12);
  header.copy(iv, 0, 8, 16);
  iv.writeUInt32BE(seq, 8);
  return iv;
}

function packageAad(header: Buffer, seq: number, final: boolean, context: Buffer): Buffer {
  const tail = Buffer.alloc(5);
  tail.writeUInt32BE(seq, 0);
  tail[4] = final ? 1 : 0;
  return Buffer.concat([header, tail, context]);
}

function sealPackage(key: Buffer, header: Buffer, seq: number, final: boolean, context: Buffer, plain: Buffer): Buffer {
  if (seq >= MAX_PACKAGES) throw new RangeError('content too large for one encrypted stream');
  const c = createCipheriv('aes-256-gcm', key, packageIv(header, seq));
  c.setAAD(packageAad(header, seq, final, context));
  const out = c.update(plain);
  c.final();
  return Buffer.concat([out, c.getAuthTag()]);
}

function openPackage(key: Buffer, header: Buffer, seq: number, final: boolean, context: Buffer, sealed: Buffer): Buffer {
  if (sealed.length < TAG_BYTES) throw new StreamAuthError();
  const d = createDecipheriv('aes-256-gcm', key, packageIv(header, seq));
  d.setAAD(packageAad(header, seq, final, context));
  d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  try {
    const out = d.update(sealed.subarray(0, sealed.length - TAG_BYTES));
    d.final();
    return out;
  } catch {
    throw new StreamAuthError();
  }
}

/** The sealed bytes of packages `from`..`to` (inclusive) of a plaintext of `plainBytes`. */
function batchBytes(plainBytes: number, from: number, to: number): number {
  const count = packageCount(plainBytes);
  let n = 0;
  for (let i = from; i <= to; i++) n += (i < count - 1 ? PACKAGE_BYTES : plainBytes - i * PACKAGE_BYTES) + TAG_BYTES;
  return n;
}

/** The number of packages (the final one included) of a plaintext of `plainBytes`. */
function packageCount(plainBytes: number): number {
  return Math.floor(plainBytes / PACKAGE_BYTES) + 1;
}

export function encryptedSize(plainBytes: number): number {
  return HEADER_BYTES + plainBytes + packageCount(plainBytes) * TAG_BYTES;
}

/** The plaintext size an encrypted stream of `cipherBytes` holds; throws if no plaintext size fits. */
export function plaintextSize(cipherBytes: number): number {
  const body = cipherBytes - HEADER_BYTES;
  if (body < TAG_BYTES) throw new StreamAuthError('encrypted content is too short');
  const full = Math.floor(body / (PACKAGE_BYTES + TAG_BYTES));
  const rest = body - full * (PACKAGE_BYTES + TAG_BYTES);
  // The final package holds 0..PACKAGE_BYTES-1 bytes plus its tag.
  if (rest < TAG_BYTES) throw new StreamAuthError('encrypted content has an impossible length');
  return full * PACKAGE_BYTES + rest - TAG_BYTES;
}

/** A Transform that encrypts what flows through it; `context` binds the stream to its owner (AAD). */
export function encryptStream(key: Buffer, context: Buffer): Transform {
  if (key.length !== 32) throw new RangeError('a stream key is 32 bytes');
  const header = headerOf(randomBytes(8));
  let seq = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let headerSent = false;
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      try {
        if (!headerSent) {
          this.push(header);
          headerSent = true;
        }
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes > PACKAGE_BYTES) {
          // Emit every full package but keep at least one byte back: the last package must be
          // sealed as final, and only the end of the input says which one that is.
          let buf = Buffer.concat(pending, pendingBytes);
          while (buf.length > PACKAGE_BYTES) {
            this.push(sealPackage(key, header, seq++, false, context, buf.subarray(0, PACKAGE_BYTES)));
            buf = buf.subarray(PACKAGE_BYTES);
          }
          pending = [buf];
          pendingBytes = buf.length;
        }
        done();
      } catch (e) {
        done(e as Error);
      }
    },
    flush(done: TransformCallback) {
      try {
        if (!headerSent) this.push(header);
        const buf = Buffer.concat(pending, pendingBytes);
        if (buf.length === PACKAGE_BYTES) {
          this.push(sealPackage(key, header, seq++, false, context, buf));
          this.push(sealPackage(key, header, seq++, true, context, Buffer.alloc(0)));
        } else {
          this.push(sealPackage(key, header, seq++, true, context, buf));
        }
        done();
      } catch (e) {
        done(e as Error);
      }
    },
  });
}

/** Encrypts a whole buffer (small content). */
export function encryptBuffer(key: Buffer, context: Buffer, plain: Buffer): Buffer {
  const header = headerOf(randomBytes(8));
  const parts = [header];
  const n = packageCount(plain.length);
  for (let i = 0; i < n; i++) parts.push(sealPackage(key, header, i, i === n - 1, context, plain.subarray(i * PACKAGE_BYTES, Math.min(plain.length, (i + 1) * PACKAGE_BYTES))));
  return Buffer.concat(parts);
}

/** Reads `length` bytes of the encrypted stream at `offset` (from a file, a blob store, memory). */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

/**
 * Decrypts plaintext bytes [start, end] (inclusive) of a stream of `cipherBytes`, reading and opening
 * only the packages that hold them. Yields plaintext in package-sized pieces.
 */
export async function* decryptRange(key: Buffer, context: Buffer, readAt: ReadAt, cipherBytes: number, start: number, end: number): AsyncGenerator<Buffer> {
  const plainBytes = plaintextSize(cipherBytes);
  if (start < 0 || end < start - 1 || end >= Math.max(plainBytes, 1) || (plainBytes === 0 && end >= 0)) throw new RangeError('range outside the content');
  const first = Math.floor(start / PACKAGE_BYTES);
  const last = Math.floor(end / PACKAGE_BYTES);
  // A range that starts in the first package (a whole object, usually) reads the header with its
  // first batch: one read of the blob instead of two.
  const fromTop = first === 0 && plainBytes > 0;
  const top = fromTop ? await readAt(0, HEADER_BYTES + batchBytes(plainBytes, 0, Math.min(last, READ_BATCH - 1))) : await readAt(0, HEADER_BYTES);
  const header = top.subarray(0, HEADER_BYTES);
  if (header.length !== HEADER_BYTES || !header.subarray(0, 4).equals(MAGIC) || header[4] !== VERSION || header[5] !== ALG_AES_256_GCM || header[6] !== PACKAGE_LOG2) {
    throw new StreamAuthError('encrypted content has an unknown header');
  }
  const count = packageCount(plainBytes);
  if (plainBytes === 0) {
    // Still authenticate the (empty) final package: an empty object is as verified as any other.
    openPackage(key, header, 0, true, context, await readAt(HEADER_BYTES, TAG_BYTES));
    return;
  }
  const sealedLen = (i: number) => (i < count - 1 ? PACKAGE_BYTES : plainBytes - i * PACKAGE_BYTES) + TAG_BYTES;
  // Read several packages per call (fewer, larger reads), then open them one by one. (Handing a
  // batch's plaintext on as one buffer saved little and raised a 1 GiB GET's peak memory by ~30 MiB.)
  // The next batch is read while this one is opened and handed on (one batch ahead at most), so the
  // storage's latency and the decryption overlap instead of taking turns.
  const readBatch = (batchStart: number): Promise<Buffer> => {
    const batchEnd = Math.min(last, batchStart + READ_BATCH - 1);
    return batchStart === 0 && fromTop
      ? Promise.resolve(top.subarray(HEADER_BYTES))
      : readAt(HEADER_BYTES + batchStart * (PACKAGE_BYTES + TAG_BYTES), batchBytes(plainBytes, batchStart, batchEnd));
  };
  let ahead: Promise<Buffer> | null = first <= last ? readBatch(first) : null;
  try {
    for (let batchStart = first; batchStart <= last; batchStart += READ_BATCH) {
      const batchEnd = Math.min(last, batchStart + READ_BATCH - 1);
      const want = batchBytes(plainBytes, batchStart, batchEnd);
      const chunk = await ahead!;
      ahead = batchEnd < last ? readBatch(batchEnd + 1) : null;
      if (chunk.length !== want) throw new StreamAuthError('encrypted content is truncated');
      let at = 0;
      for (let i = batchStart; i <= batchEnd; i++) {
        const len = sealedLen(i);
        const plain = openPackage(key, header, i, i === count - 1, context, chunk.subarray(at, at + len));
        at += len;
        const from = i === first ? start - i * PACKAGE_BYTES : 0;
        const to = i === last ? end - i * PACKAGE_BYTES + 1 : plain.length;
        yield plain.subarray(from, to);
      }
    }
  } finally {
    // A reader that stops early (a client gone mid-download) or a failed package leaves the read
    // ahead in flight: its outcome no longer matters, but it must not surface as unhandled.
    ahead?.catch(() => undefined);
  }
  // A stream whose last package holds the final byte must also prove nothing follows: when the
  // range ended inside a full package and that package is the last data package before an empty
  // final one, the final package is read too.
  if (last === count - 2 && plainBytes % PACKAGE_BYTES === 0) {
    openPackage(key, header, count - 1, true, context, await readAt(HEADER_BYTES + (count - 1) * (PACKAGE_BYTES + TAG_BYTES), TAG_BYTES));
  }
}

/** Decrypts a whole encrypted buffer. */
export async function decryptBuffer(key: Buffer, context: Buffer, sealed: Buffer): Promise<Buffer> {
  const plainBytes = plaintextSize(sealed.length);
  const parts: Buffer[] = [];
  const readAt: ReadAt = async (o, l) => sealed.subarray(o, o + l);
  for await (const p of decryptRange(key, context, readAt, sealed.length, 0, plainBytes - 1)) parts.push(p);
  return Buffer.concat(parts);
}

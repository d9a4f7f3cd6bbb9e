/**
 * The checksums S3 clients declare for content (x-amz-checksum-*): running digests, and the composite
 * checksum of a multipart object (the algorithm over its parts' raw checksums, then `-<parts>`).
 * CRC32C and CRC64NVME come from the AWS SDK's own checksum package; CRC32 from zlib.
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { Crc32c, Crc64Nvme } from '@aws-sdk/checksums/crc';

export const CHECKSUM_BYTES = { crc32: 4, crc32c: 4, crc64nvme: 8, sha1: 20, sha256: 32 } as const;
export type ChecksumAlgorithm = keyof typeof CHECKSUM_BYTES;
export const isChecksumAlgorithm = (a: string): a is ChecksumAlgorithm => Object.hasOwn(CHECKSUM_BYTES, a);
/** Algorithms whose multipart checksum is COMPOSITE (CRC64NVME has only a full-object form). */
export const COMPOSITE_ALGORITHMS: readonly ChecksumAlgorithm[] = ['crc32', 'crc32c', 'sha1', 'sha256'];

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** A running checksum over content. */
export function checksummer(alg: ChecksumAlgorithm): { update(b: Buffer): void; digest(): Promise<Buffer> } {
  switch (alg) {
    case 'crc32': {
      let c = 0;
      // An empty chunk is skipped: zlib.crc32 on Node 20 answers 0, not the running value, for an empty
      // buffer with no backing memory (what crypto.randomBytes(0) gives).
      return { update: (b) => void (b.length > 0 && (c = crc32(b, c))), digest: async () => u32(c) };
    }
    case 'crc32c':
    case 'crc64nvme': {
      const h = alg === 'crc32c' ? new Crc32c() : new Crc64Nvme();
      return { update: (b) => h.update(b), digest: async () => Buffer.from(await h.digest()) };
    }
    case 'sha1':
    case 'sha256': {
      const h = createHash(alg);
      return { update: (b) => void h.update(b), digest: async () => h.digest() };
    }
  }
}

/** S3's composite checksum of parts (base64 values, in part order): `<base64 of alg(concatenated raw values)>-<count>`. */
export async function compositeChecksum(alg: ChecksumAlgorithm, parts: string[]): Promise<string> {
  const h = checksummer(alg);
  for (const p of parts) h.update(Buffer.from(p, 'base64'));
  return `${(await h.digest()).toString('base64')}-${parts.length}`;
}

/** The checksum a multipart upload was created with: its algorithm, and whether it is of the parts or of the content. */
export interface UploadChecksum {
  algorithm: ChecksumAlgorithm;
  type: 'COMPOSITE' | 'FULL_OBJECT';
}

/** Algorithms whose multipart checksum can be FULL_OBJECT: the CRCs, which combine from their parts'. */
export const FULL_OBJECT_ALGORITHMS: readonly ChecksumAlgorithm[] = ['crc32', 'crc32c', 'crc64nvme'];

/**
 * The CRCs' parameters: width and polynomial, bit-reversed as these reflected CRCs compute. All three
 * start from all ones and end XORed with all ones, so CRCs of adjacent pieces combine directly.
 */
const CRC_PARAMS = {
  crc32: { width: 32n, poly: 0xedb88320n },
  crc32c: { width: 32n, poly: 0x82f63b78n },
  crc64nvme: { width: 64n, poly: 0x9a6c9329ac4bc9b5n },
} as const;
type CrcAlgorithm = keyof typeof CRC_PARAMS;

/** a(x)·b(x) mod p(x), in the reflected representation (the top bit is x⁰). */
function mulModP(a: bigint, b: bigint, { width, poly }: { width: bigint; poly: bigint }): bigint {
  let m = 1n << (width - 1n);
  let p = 0n;
  while (m !== 0n) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1n)) === 0n) break;
    }
    m >>= 1n;
    b = b & 1n ? (b >> 1n) ^ poly : b >> 1n;
  }
  return p;
}

/** x^(8·bytes) mod p(x): what appending `bytes` bytes does to a CRC register. */
function shiftOperator(bytes: number, params: { width: bigint; poly: bigint }): bigint {
  // x^(2^k) for k = 0, 1, ...: squared one from the other.
  let power = 1n << (params.width - 2n); // x¹
  let result = 1n << (params.width - 1n); // x⁰
  let n = BigInt(bytes) * 8n;
  while (n > 0n) {
    if (n & 1n) result = mulModP(power, result, params);
    n >>= 1n;
    if (n > 0n) power = mulModP(power, power, params);
  }
  return result;
}

/**
 * A CRC's value over a whole object from its parts' CRCs and sizes, in order, without the content
 * (zlib's crc32_combine, for any of the three CRCs): S3's FULL_OBJECT checksum of a multipart upload.
 */
export function combineCrcs(alg: ChecksumAlgorithm, parts: { checksum: Buffer; size: number }[]): Buffer {
  if (!(FULL_OBJECT_ALGORITHMS as readonly string[]).includes(alg)) throw new Error(`${alg} checksums do not combine`);
  const params = CRC_PARAMS[alg as CrcAlgorithm];
  const bytes = Number(params.width / 8n);
  // Parts mostly share one size: each size's operator is computed once.
  const operators = new Map<number, bigint>();
  let crc = 0n; // the CRC of no bytes
  for (const part of parts) {
    if (part.checksum.length !== bytes) throw new Error(`a ${alg} checksum is ${bytes} bytes`);
    let op = operators.get(part.size);
    if (op === undefined) {
      op = shiftOperator(part.size, params);
      operators.set(part.size, op);
    }
    crc = mulModP(op, crc, params) ^ BigInt(`0x${part.checksum.toString('hex')}`);
  }
  return Buffer.from(crc.toString(16).padStart(bytes * 2, '0'), 'hex');
}

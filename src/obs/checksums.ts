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
      return { update: (b) => void (c = crc32(b, c)), digest: async () => u32(c) };
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

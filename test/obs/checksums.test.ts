// The checksum functions on their own: full-object CRCs combined from parts agree with the CRC of the
// whole content computed directly (zlib for CRC32, the AWS SDK's own CRC32C and CRC64NVME), for part
// sizes that include empty and single-byte parts; and a running CRC32 is not reset by an empty chunk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { Crc32c, Crc64Nvme } from '@aws-sdk/checksums/crc';
import { checksummer, combineCrcs, type ChecksumAlgorithm } from '../../src/obs/checksums.js';

/** The CRC of `data` computed by a library other than the code under test, big-endian. */
async function reference(alg: ChecksumAlgorithm, data: Buffer): Promise<Buffer> {
  if (alg === 'crc32') {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(crc32(data) >>> 0);
    return b;
  }
  const h = alg === 'crc32c' ? new Crc32c() : new Crc64Nvme();
  h.update(data);
  return Buffer.from(await h.digest());
}

test('a FULL_OBJECT CRC combined from the parts\' CRCs equals the CRC of the whole content', async () => {
  const layouts = [[0], [1], [5, 0, 7], [1000, 1, 33], [65_536, 65_536, 17], [3, 100_000], [5 * 1024 * 1024, 5 * 1024 * 1024, 12]];
  for (const alg of ['crc32', 'crc32c', 'crc64nvme'] as const) {
    for (const sizes of layouts) {
      const parts = sizes.map((n) => randomBytes(n));
      const combined = combineCrcs(alg, await Promise.all(parts.map(async (p) => ({ checksum: await reference(alg, p), size: p.length }))));
      assert.equal(combined.toString('hex'), (await reference(alg, Buffer.concat(parts))).toString('hex'), `${alg} over parts of ${sizes.join(', ')} bytes`);
    }
  }
  // The catalogued check values, from pieces of "123456789".
  const digits = ['1234', '5', '6789'].map((x) => Buffer.from(x));
  const pieces = async (alg: ChecksumAlgorithm) => Promise.all(digits.map(async (d) => ({ checksum: await reference(alg, d), size: d.length })));
  assert.equal(combineCrcs('crc32', await pieces('crc32')).toString('hex'), 'cbf43926');
  assert.equal(combineCrcs('crc32c', await pieces('crc32c')).toString('hex'), 'e3069283');
  assert.equal(combineCrcs('crc64nvme', await pieces('crc64nvme')).toString('hex'), 'ae8b14860a799888');
  assert.throws(() => combineCrcs('sha256', []), /do not combine/);
  assert.throws(() => combineCrcs('crc32', [{ checksum: Buffer.alloc(8), size: 1 }]), /4 bytes/);
});

test('10,000 parts combine in well under a second (one shift operator per distinct part size)', () => {
  const parts = Array.from({ length: 10_000 }, (_, i) => ({ checksum: randomBytes(8), size: 5 * 1024 * 1024 + (i % 2) }));
  const t = performance.now();
  combineCrcs('crc64nvme', parts);
  assert.ok(performance.now() - t < 1000, `${performance.now() - t} ms`);
});

test('a running CRC32 keeps its value across an empty chunk', async () => {
  const a = randomBytes(100);
  const b = randomBytes(50);
  const h = checksummer('crc32');
  h.update(a);
  // An empty buffer with no backing memory: zlib.crc32 on Node 20 answers 0 for it.
  h.update(randomBytes(0));
  h.update(b);
  assert.deepEqual(await h.digest(), await reference('crc32', Buffer.concat([a, b])));
});

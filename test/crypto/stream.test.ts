// Chunked authenticated encryption: round trips at the package edges, range reads that open only the
// packages they need, and every kind of tampering refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { decryptBuffer, decryptRange, encryptBuffer, encryptedSize, encryptStream, HEADER_BYTES, PACKAGE_BYTES, plaintextSize, StreamAuthError, TAG_BYTES } from '../../src/crypto/stream.js';

const key = randomBytes(32);
const ctx = Buffer.from('tenant-1/bucket/photo.jpg/v1');
const P = PACKAGE_BYTES;
const SIZES = [0, 1, P - 1, P, P + 1, 2 * P, 3 * P + 5];

async function viaStream(plain: Buffer, chunk = 10_000): Promise<Buffer> {
  const parts: Buffer[] = [];
  const src = Readable.from((function* () {
    for (let i = 0; i < plain.length; i += chunk) yield plain.subarray(i, i + chunk);
  })());
  for await (const c of src.pipe(encryptStream(key, ctx))) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

test('round trips at every package edge, streamed and whole; sizes are predictable both ways', async () => {
  for (const n of SIZES) {
    const plain = randomBytes(n);
    for (const sealed of [await viaStream(plain), await viaStream(plain, 7), encryptBuffer(key, ctx, plain)]) {
      assert.equal(sealed.length, encryptedSize(n), `size of ${n}`);
      assert.equal(plaintextSize(sealed.length), n);
      assert.deepEqual(await decryptBuffer(key, ctx, sealed), plain, `round trip of ${n}`);
      if (n >= 64) assert.ok(!sealed.includes(plain.subarray(0, 32)), 'no plaintext in the output');
    }
  }
});

test('a range read opens only the packages it covers and returns exactly the range', async () => {
  const plain = randomBytes(5 * P + 123);
  const sealed = encryptBuffer(key, ctx, plain);
  for (const [start, end] of [[0, 0], [P - 1, P], [2 * P + 7, 2 * P + 9], [3 * P, 5 * P + 122], [0, 5 * P + 122]]) {
    const reads: [number, number][] = [];
    const readAt = async (o: number, l: number) => {
      reads.push([o, l]);
      return sealed.subarray(o, o + l);
    };
    const parts: Buffer[] = [];
    for await (const p of decryptRange(key, ctx, readAt, sealed.length, start!, end!)) parts.push(p);
    assert.deepEqual(Buffer.concat(parts), plain.subarray(start!, end! + 1), `range ${start}-${end}`);
    const packages = Math.floor(end! / P) - Math.floor(start! / P) + 1;
    const batches = Math.ceil(packages / 32);
    // A range that starts in the first package reads the header with its first batch; any other reads the header alone first.
    const fromTop = Math.floor(start! / P) === 0;
    assert.equal(reads.length, (fromTop ? 0 : 1) + batches, `range ${start}-${end}: ${fromTop ? '' : 'the header and '}${batches} read(s)`);
    assert.deepEqual(reads[0]!.slice(0, 1), [0], 'the header is read first');
    const read = reads.reduce((n, [, l]) => n + l, 0) - HEADER_BYTES;
    assert.equal(read, packages * (P + TAG_BYTES) - (Math.floor(end! / P) === 5 ? P - 123 : 0), `range ${start}-${end}: only the ${packages} package(s) it covers are read`);
  }
});

test('altered, truncated, reordered, extended content, another context or key: all refused', async () => {
  const plain = randomBytes(3 * P + 10);
  const sealed = encryptBuffer(key, ctx, plain);
  const pkg = (i: number) => HEADER_BYTES + i * (P + TAG_BYTES);
  const refused = async (bytes: Buffer, why: string, k = key, c = ctx) => {
    await assert.rejects(decryptBuffer(k, c, bytes), (e: Error) => e instanceof StreamAuthError || e instanceof RangeError, why);
  };
  const flipped = Buffer.from(sealed);
  flipped[pkg(1) + 100]! ^= 1;
  await refused(flipped, 'a flipped bit');
  const header = Buffer.from(sealed);
  header[10]! ^= 1;
  await refused(header, 'an altered nonce prefix');
  // Cut at a package boundary: what is left is well-formed, but its last package was not sealed as final.
  await refused(sealed.subarray(0, pkg(3)), 'truncated after three packages');
  await refused(sealed.subarray(0, sealed.length - 1), 'one byte short');
  const swapped = Buffer.concat([sealed.subarray(0, pkg(0)), sealed.subarray(pkg(1), pkg(2)), sealed.subarray(pkg(0), pkg(1)), sealed.subarray(pkg(2))]);
  await refused(swapped, 'two packages swapped');
  const other = encryptBuffer(key, ctx, randomBytes(P));
  await refused(Buffer.concat([sealed.subarray(0, pkg(1)), other.subarray(HEADER_BYTES, HEADER_BYTES + P + TAG_BYTES), sealed.subarray(pkg(2))]), 'a package from another stream');
  await refused(sealed, 'another context', key, Buffer.from('tenant-2/bucket/photo.jpg/v1'));
  await refused(sealed, 'another key', randomBytes(32));
  // An empty object is authenticated too.
  const empty = encryptBuffer(key, ctx, Buffer.alloc(0));
  await refused(empty, 'empty, other context', key, Buffer.from('x'));
  // A stream of exactly two packages whose empty final package was cut off.
  const exact = encryptBuffer(key, ctx, randomBytes(2 * P));
  await refused(exact.subarray(0, exact.length - TAG_BYTES), 'the empty final package removed');
});

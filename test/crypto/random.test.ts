// The pooled random source behind IVs, ids and data keys: every draw is fresh, of the size asked,
// in memory of its own (a key is never a view onto bytes shared with an IV), across pool refills.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from '../../src/crypto/random.js';

test('draws are of the asked size, never repeat, and cross pool refills', () => {
  const seen = new Set<string>();
  let total = 0;
  // 12- and 32-byte draws, as IVs and data keys take them, through several 4 KiB pool refills.
  for (let i = 0; i < 2000; i++) {
    const n = i % 3 === 0 ? 32 : 12;
    const b = randomBytes(n);
    assert.equal(b.length, n);
    total += n;
    const hex = b.toString('hex');
    assert.ok(!seen.has(hex), `draw ${i} repeated an earlier one`);
    seen.add(hex);
  }
  assert.ok(total > 4 * 4096);
  assert.equal(randomBytes(0).length, 0);
  const big = randomBytes(100_000);
  assert.equal(big.length, 100_000);
  assert.ok(big.some((x) => x !== 0));
});

test('a draw owns its memory: wiping it leaves every other draw intact', () => {
  const iv = randomBytes(12);
  const key = randomBytes(32);
  const keyCopy = Buffer.from(key);
  const ivCopy = Buffer.from(iv);
  assert.notEqual(iv.buffer, key.buffer);
  assert.equal(key.byteOffset, 0);
  assert.equal(key.buffer.byteLength, 32);
  iv.fill(0);
  assert.deepEqual(key, keyCopy);
  key.fill(0);
  assert.deepEqual(Buffer.from(ivCopy), ivCopy);
  assert.ok(randomBytes(32).some((x) => x !== 0));
});

test('the byte distribution is not skewed (a broken pool would hand out zeros)', () => {
  const counts = new Array<number>(256).fill(0);
  for (let i = 0; i < 4000; i++) for (const x of randomBytes(16)) counts[x]!++;
  // 64,000 bytes: 250 expected per value; a uniform source stays far inside these bounds.
  assert.ok(Math.min(...counts) > 150, `min ${Math.min(...counts)}`);
  assert.ok(Math.max(...counts) < 360, `max ${Math.max(...counts)}`);
  assert.throws(() => randomBytes(-1), RangeError);
  assert.throws(() => randomBytes(1.5), RangeError);
});

/**
 * Random bytes from the operating system's CSPRNG, drawn from a pool. Every `crypto.randomBytes`
 * call costs ~1.5 µs of OpenSSL overhead whatever its size (a 4 KiB fill costs ~2 µs), and the hot
 * paths take several small draws per request (IVs, ids, data keys). Node's own `randomUUID` pools
 * the same way. Each byte of the pool is handed out once, copied into a buffer of its own (a key is
 * never a view onto memory shared with an IV or an id), and wiped from the pool as it leaves.
 */
import { randomFillSync } from 'node:crypto';

const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let offset = POOL_BYTES;

/** `n` fresh random bytes in a new buffer (like `crypto.randomBytes`). */
export function randomBytes(n: number): Buffer {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`randomBytes: invalid size ${n}`);
  // Large draws gain nothing from the pool.
  if (n > 256) return randomFillSync(Buffer.allocUnsafe(n));
  if (offset + n > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  const out = Buffer.allocUnsafeSlow(n);
  pool.copy(out, 0, offset, offset + n);
  pool.fill(0, offset, offset + n);
  offset += n;
  return out;
}

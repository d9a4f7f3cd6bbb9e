/**
 * The key derivation of XAES-256-GCM (C2SP, https://c2sp.org/XAES-256-GCM): from a 256-bit key K and
 * a 96-bit salt N, the 256-bit key
 *
 *   Kx = AES-256_K(M1 xor K1) || AES-256_K(M2 xor K1)
 *   M1 = 0x00 0x01 'X' 0x00 || N,  M2 = 0x00 0x02 'X' 0x00 || N
 *   K1 = the CMAC subkey of K: AES-256_K(0^128) doubled in GF(2^128)
 *
 * which is NIST SP 800-108r1's KDF in counter mode with CMAC-AES-256 as its PRF. XAES-256-GCM then
 * seals a message with AES-256-GCM under Kx; the vault uses Kx as a record's key, under which the
 * record's groups are sealed with random 96-bit IVs (src/vault/sealing.ts).
 *
 * Each derivation is one call into OpenSSL on a block cipher keyed once per K (AES-256-ECB over the
 * two blocks), about a third of an HMAC-SHA256 (which sets up a new context every call).
 */
import { createCipheriv, type Cipher } from 'node:crypto';

export const XAES_SALT_BYTES = 12;

export class XaesKeyDeriver {
  private ecb: Cipher | null;
  private readonly k1: Buffer;

  constructor(key: Buffer) {
    if (key.length !== 32) throw new RangeError('XAES-256-GCM takes a 256-bit key');
    const ecb = createCipheriv('aes-256-ecb', key, null);
    ecb.setAutoPadding(false);
    const l = ecb.update(Buffer.alloc(16));
    const k1 = Buffer.alloc(16);
    for (let i = 0; i < 16; i++) k1[i] = ((l[i]! << 1) & 0xff) | (i < 15 ? l[i + 1]! >> 7 : 0);
    if (l[0]! & 0x80) k1[15]! ^= 0x87;
    l.fill(0);
    this.ecb = ecb;
    this.k1 = k1;
  }

  /** Whether destroy() was called: derive() then throws. */
  get destroyed(): boolean {
    return this.ecb === null;
  }

  /** Kx for the salt (12 bytes). The caller zeroes it after use. */
  derive(salt: Buffer): Buffer {
    if (!this.ecb) throw new Error('the key deriver was destroyed');
    if (salt.length !== XAES_SALT_BYTES) throw new RangeError('an XAES-256-GCM salt is 12 bytes');
    const m = Buffer.allocUnsafe(32);
    m[0] = 0x00;
    m[1] = 0x01;
    m[2] = 0x58;
    m[3] = 0x00;
    salt.copy(m, 4);
    m[16] = 0x00;
    m[17] = 0x02;
    m[18] = 0x58;
    m[19] = 0x00;
    salt.copy(m, 20);
    const k1 = this.k1;
    for (let i = 0; i < 16; i++) {
      m[i]! ^= k1[i]!;
      m[16 + i]! ^= k1[i]!;
    }
    const kx = this.ecb.update(m);
    m.fill(0);
    return kx;
  }

  /** Frees the cipher context (OpenSSL clears its key schedule) and zeroes the subkey. */
  destroy(): void {
    if (!this.ecb) return;
    try {
      this.ecb.final();
    } catch {
      // final() of an ECB context fed whole blocks does not fail; a context that did is freed anyway.
    }
    this.ecb = null;
    this.k1.fill(0);
  }
}

// XAES-256-GCM's key derivation (src/crypto/xaes.ts), which derives each vault record's key: checked
// against the C2SP specification's test vectors, the derived key and whole messages sealed under it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { XaesKeyDeriver } from '../../src/crypto/xaes.js';

/** XAES-256-GCM as the specification defines it: Kx from the nonce's first 12 bytes, AES-256-GCM with its last 12. */
function xaesSeal(key: Buffer, nonce: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  const d = new XaesKeyDeriver(key);
  const kx = d.derive(nonce.subarray(0, 12));
  d.destroy();
  const c = createCipheriv('aes-256-gcm', kx, nonce.subarray(12));
  c.setAAD(aad);
  const ct = Buffer.concat([c.update(plaintext), c.final()]);
  return Buffer.concat([ct, c.getAuthTag()]);
}

test('the derived key and the sealed messages match the C2SP test vectors', () => {
  const nonce = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWX');
  const d = new XaesKeyDeriver(Buffer.alloc(32, 0x01));
  assert.equal(d.derive(nonce.subarray(0, 12)).toString('hex'), 'c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b');
  // The same salt again gives the same key: the cipher context carries no state between derivations.
  assert.equal(d.derive(nonce.subarray(0, 12)).toString('hex'), 'c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b');
  assert.equal(xaesSeal(Buffer.alloc(32, 0x01), nonce, Buffer.from('XAES-256-GCM'), Buffer.alloc(0)).toString('hex'), 'ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271');
  assert.equal(xaesSeal(Buffer.alloc(32, 0x03), nonce, Buffer.from('XAES-256-GCM'), Buffer.from('c2sp.org/XAES-256-GCM')).toString('hex'), '986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d');
});

test('a key whose CMAC subkey needs the reduction (L starts with a 1 bit) derives what one long AES-CMAC would', () => {
  // K1 = L << 1 xor 0x87 when L's top bit is set: find such a key, and check Kx's first half against
  // AES-CBC-MAC with the subkey applied by hand to the last (only) block, which is what CMAC is for one block.
  for (let b = 0; b < 256; b++) {
    const key = Buffer.alloc(32, b);
    const ecb = createCipheriv('aes-256-ecb', key, null).setAutoPadding(false);
    const l = ecb.update(Buffer.alloc(16));
    if (!(l[0]! & 0x80)) continue;
    const k1 = Buffer.alloc(16);
    const big = (BigInt(`0x${l.toString('hex')}`) << 1n) & ((1n << 128n) - 1n);
    Buffer.from((big ^ 0x87n).toString(16).padStart(32, '0'), 'hex').copy(k1);
    const salt = Buffer.from('0123456789ab');
    const m1 = Buffer.concat([Buffer.from([0, 1, 0x58, 0]), salt]);
    for (let i = 0; i < 16; i++) m1[i]! ^= k1[i]!;
    const expected = createCipheriv('aes-256-ecb', key, null).setAutoPadding(false).update(m1);
    const d = new XaesKeyDeriver(key);
    assert.equal(d.derive(salt).subarray(0, 16).toString('hex'), expected.toString('hex'));
    // And the key opens what it sealed, once more through the whole construction.
    const nonce = Buffer.concat([salt, Buffer.from('ivivivivivIV')]);
    const sealed = xaesSeal(key, nonce, Buffer.from('hello'), Buffer.from('aad'));
    const dec = createDecipheriv('aes-256-gcm', d.derive(salt), nonce.subarray(12));
    dec.setAAD(Buffer.from('aad'));
    dec.setAuthTag(sealed.subarray(sealed.length - 16));
    assert.equal(Buffer.concat([dec.update(sealed.subarray(0, sealed.length - 16)), dec.final()]).toString(), 'hello');
    return;
  }
  assert.fail('no key byte gave an L with its top bit set');
});

test('bad input is refused, and a destroyed deriver derives nothing', () => {
  assert.throws(() => new XaesKeyDeriver(Buffer.alloc(16)), RangeError);
  const d = new XaesKeyDeriver(Buffer.alloc(32, 7));
  assert.throws(() => d.derive(Buffer.alloc(16)), RangeError);
  d.destroy();
  assert.throws(() => d.derive(Buffer.alloc(12)), /destroyed/);
});

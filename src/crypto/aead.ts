import { createCipheriv, createDecipheriv } from 'node:crypto';
import { randomBytes } from './random.js';

/** AES-256-GCM with a random 96-bit IV; output is iv(12) | tag(16) | ciphertext. */
export function sealAesGcm(key: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(aad);
  // GCM is a stream mode: update() returns all of the ciphertext, final() only computes the tag.
  const ct = cipher.update(plaintext);
  cipher.final();
  return Buffer.concat([iv, cipher.getAuthTag(), ct]);
}

export class DecryptError extends Error {
  override name = 'DecryptError';
  constructor() {
    super('ciphertext failed authentication');
  }
}

export function openAesGcm(key: Buffer, sealed: Buffer, aad: Buffer): Buffer {
  if (sealed.length < 28) throw new DecryptError();
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, 12));
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(12, 28));
  try {
    // update() returns all of the plaintext (GCM is a stream mode); final() checks the tag.
    const pt = decipher.update(sealed.subarray(28));
    decipher.final();
    return pt;
  } catch {
    throw new DecryptError();
  }
}

/**
 * The self-describing ciphertext of a symmetric customer master key. Decryption needs no key id: the
 * header names the key and version, and is authenticated together with the tenant and the
 * encryption context, so a changed context, a ciphertext moved to another tenant or an edited
 * header fails authentication.
 *
 *   0      format (0x01)
 *   1..16  key id (the UUID's 16 bytes)
 *   17..20 key version (uint32, big-endian)
 *   21     algorithm (0x01 AES-256-GCM)
 *   22..33 IV (96 bits, random per message)
 *   34..   ciphertext, then the 128-bit tag
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { randomBytes } from '../crypto/random.js';
import { KmsError } from './errors.js';

const FORMAT_V1 = 0x01;
export const ALG_AES_256_GCM = 0x01;
const HEADER_BYTES = 22;
const IV_BYTES = 12;
const TAG_BYTES = 16;
export const CIPHERTEXT_OVERHEAD = HEADER_BYTES + IV_BYTES + TAG_BYTES;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export type EncryptionContext = Record<string, string>;

export interface CiphertextHeader {
  keyId: string;
  version: number;
  algorithm: number;
}

function uuidBytes(id: string): Buffer {
  if (!UUID.test(id)) throw new Error(`not a key id: ${id}`);
  return Buffer.from(id.replace(/-/g, ''), 'hex');
}
function uuidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The context in one canonical byte form: pairs sorted by key, so the order a client sends does not matter. */
export function canonicalContext(ctx: EncryptionContext | undefined): Buffer {
  const pairs = Object.entries(ctx ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Buffer.from(JSON.stringify(pairs), 'utf8');
}

function aadOf(header: Buffer, accountId: string, ctx: EncryptionContext | undefined): Buffer {
  const account = Buffer.from(accountId, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(account.length);
  return Buffer.concat([header, len, account, canonicalContext(ctx)]);
}

/** Reads the header of a ciphertext; a blob that is not one is the client's mistake (400). */
export function parseHeader(blob: Buffer): CiphertextHeader {
  if (blob.length < CIPHERTEXT_OVERHEAD || blob[0] !== FORMAT_V1) {
    throw new KmsError(400, 'InvalidCiphertext', 'the ciphertext is malformed or truncated: it is not a Custos KMS ciphertext');
  }
  const algorithm = blob[21]!;
  if (algorithm !== ALG_AES_256_GCM) throw new KmsError(400, 'InvalidCiphertext', 'the ciphertext names an unknown algorithm');
  return { keyId: uuidString(blob.subarray(1, 17)), version: blob.readUInt32BE(17), algorithm };
}

export function sealWithKey(material: Buffer, keyId: string, version: number, accountId: string, ctx: EncryptionContext | undefined, plaintext: Buffer): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header[0] = FORMAT_V1;
  uuidBytes(keyId).copy(header, 1);
  header.writeUInt32BE(version, 17);
  header[21] = ALG_AES_256_GCM;
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', material, iv);
  cipher.setAAD(aadOf(header, accountId, ctx));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([header, iv, body, cipher.getAuthTag()]);
}

/** Opens a ciphertext whose header was parsed; a failed tag is one error whatever the cause. */
export function openWithKey(material: Buffer, accountId: string, ctx: EncryptionContext | undefined, blob: Buffer): Buffer {
  const header = blob.subarray(0, HEADER_BYTES);
  const iv = blob.subarray(HEADER_BYTES, HEADER_BYTES + IV_BYTES);
  const body = blob.subarray(HEADER_BYTES + IV_BYTES, blob.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', material, iv);
  decipher.setAAD(aadOf(header, accountId, ctx));
  decipher.setAuthTag(blob.subarray(blob.length - TAG_BYTES));
  try {
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    throw new KmsError(400, 'InvalidCiphertext', 'the ciphertext could not be decrypted: it was altered, or the encryption context differs from the one it was encrypted with');
  }
}

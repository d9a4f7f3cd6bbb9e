import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomBytes, scryptSync } from 'node:crypto';
import path from 'node:path';
import { openAesGcm, sealAesGcm, DecryptError } from './aead.js';

/** The top of the key hierarchy: wraps and unwraps the keys below it, never handing out its own. */
export interface RootKeyProvider {
  readonly kind: 'local' | 'pkcs11';
  /** True when the key was created for development with a passphrase stored beside it. */
  readonly development: boolean;
  wrap(plaintext: Buffer, aad: Buffer): Promise<Buffer>;
  unwrap(wrapped: Buffer, aad: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

export class RootKeyError extends Error {
  override name = 'RootKeyError';
}

interface SealedRootKeyFile {
  format: 'custos-root-key-v1';
  kdf: { name: 'scrypt'; salt: string; N: number; r: number; p: number };
  sealed: string;
  /** Present only for the development default: the passphrase is kept in this file beside the key. */
  developmentPassphraseFile?: string;
}

const KDF = { N: 1 << 15, r: 8, p: 1 };
const AAD = Buffer.from('custos root key v1');

function deriveKek(passphrase: string, salt: Buffer, p: { N: number; r: number; p: number }): Buffer {
  return scryptSync(passphrase, salt, 32, { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r });
}

class LocalRootKey implements RootKeyProvider {
  readonly kind = 'local' as const;
  #key: Buffer;
  constructor(key: Buffer, readonly development: boolean) {
    this.#key = key;
  }
  async wrap(plaintext: Buffer, aad: Buffer): Promise<Buffer> {
    return sealAesGcm(this.#key, plaintext, aad);
  }
  async unwrap(wrapped: Buffer, aad: Buffer): Promise<Buffer> {
    return openAesGcm(this.#key, wrapped, aad);
  }
  async close(): Promise<void> {
    this.#key.fill(0);
  }
}

/**
 * The `local` provider: a 256-bit root key in `<dataDir>/root-key.json`, sealed with a key derived by
 * scrypt from a passphrase read from the environment. With no passphrase and no key file, a
 * development key is created whose passphrase sits in a file beside it, and the server says so.
 */
export function openLocalRootKey(opts: { dataDir: string; passphrase: string | undefined; passphraseEnv: string }): {
  provider: RootKeyProvider;
  created: boolean;
} {
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const file = path.join(opts.dataDir, 'root-key.json');
  const devFile = path.join(opts.dataDir, 'root-key.DEVELOPMENT-PASSPHRASE');
  if (!existsSync(file)) {
    let passphrase = opts.passphrase;
    let development = false;
    if (!passphrase) {
      passphrase = randomBytes(32).toString('base64url');
      writeFileSync(devFile, passphrase + '\n', { mode: 0o600 });
      development = true;
    }
    const key = randomBytes(32);
    const salt = randomBytes(16);
    const kek = deriveKek(passphrase, salt, KDF);
    const body: SealedRootKeyFile = {
      format: 'custos-root-key-v1',
      kdf: { name: 'scrypt', salt: salt.toString('base64'), ...KDF },
      sealed: sealAesGcm(kek, key, AAD).toString('base64'),
      ...(development ? { developmentPassphraseFile: path.basename(devFile) } : {}),
    };
    writeFileSync(file, JSON.stringify(body, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
    return { provider: new LocalRootKey(key, development), created: true };
  }
  let body: SealedRootKeyFile;
  try {
    body = JSON.parse(readFileSync(file, 'utf8')) as SealedRootKeyFile;
    if (body.format !== 'custos-root-key-v1') throw new Error('format');
  } catch {
    throw new RootKeyError(`${file} is not a Custos root key file`);
  }
  let passphrase = opts.passphrase;
  const development = body.developmentPassphraseFile !== undefined;
  if (!passphrase && development) {
    try {
      passphrase = readFileSync(path.join(opts.dataDir, body.developmentPassphraseFile!), 'utf8').trim();
    } catch {
      throw new RootKeyError(`the development root key's passphrase file is missing; set ${opts.passphraseEnv}`);
    }
  }
  if (!passphrase) {
    throw new RootKeyError(`the root key is sealed: set ${opts.passphraseEnv} to its passphrase to unseal it`);
  }
  try {
    const kek = deriveKek(passphrase, Buffer.from(body.kdf.salt, 'base64'), body.kdf);
    const key = openAesGcm(kek, Buffer.from(body.sealed, 'base64'), AAD);
    return { provider: new LocalRootKey(key, development), created: false };
  } catch (e) {
    if (e instanceof DecryptError) throw new RootKeyError(`cannot unseal the root key: wrong passphrase in ${opts.passphraseEnv}`);
    throw e;
  }
}

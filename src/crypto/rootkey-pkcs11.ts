/**
 * The `pkcs11` root-key provider: the root key is a non-extractable AES-256 key inside an HSM, and
 * wrapping and unwrapping (AES-GCM with the caller's AAD) happen inside the HSM. Custos never holds
 * the root key's bytes; it holds a logged-in session and the key's handle.
 *
 * Wrapped format: version byte 0x01 | IV (12) | ciphertext | tag (16).
 */
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { DecryptError } from './aead.js';
import { RootKeyError, type RootKeyProvider } from './rootkey.js';

const VERSION = 0x01;
const IV_BYTES = 12;
const TAG_BYTES = 16;

export interface Pkcs11RootKeyOptions {
  /** Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  modulePath: string;
  tokenLabel: string;
  keyLabel: string;
  /** The user PIN, read by the caller from the environment variable named `pinEnv`. */
  pin: string | undefined;
  pinEnv: string;
}

function ckrName(e: unknown): string {
  const m = /CKR_[A-Z_]+/.exec(String((e as Error)?.message ?? e));
  return m ? m[0] : 'an HSM error';
}

class Pkcs11RootKey implements RootKeyProvider {
  readonly kind = 'pkcs11' as const;
  readonly development = false;
  #closed = false;

  constructor(
    private readonly lib: pkcs11js.PKCS11,
    private readonly session: Buffer,
    private readonly key: Buffer,
    private readonly modulePath: string,
  ) {}

  private gcm(iv: Buffer, aad: Buffer): pkcs11js.Mechanism {
    return { mechanism: pkcs11js.CKM_AES_GCM, parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, aad, ivBits: IV_BYTES * 8, tagBits: TAG_BYTES * 8 } as pkcs11js.AesGCM };
  }

  // The calls are synchronous, so two operations never interleave on the one session.
  async wrap(plaintext: Buffer, aad: Buffer): Promise<Buffer> {
    if (this.#closed) throw new RootKeyError('the HSM session is closed');
    const iv = randomBytes(IV_BYTES);
    this.lib.C_EncryptInit(this.session, this.gcm(iv, aad), this.key);
    const out = this.lib.C_Encrypt(this.session, plaintext, Buffer.alloc(plaintext.length + TAG_BYTES + 16));
    return Buffer.concat([Buffer.from([VERSION]), iv, out]);
  }

  async unwrap(wrapped: Buffer, aad: Buffer): Promise<Buffer> {
    if (this.#closed) throw new RootKeyError('the HSM session is closed');
    if (wrapped.length < 1 + IV_BYTES + TAG_BYTES || wrapped[0] !== VERSION) throw new DecryptError();
    const iv = wrapped.subarray(1, 1 + IV_BYTES);
    const body = wrapped.subarray(1 + IV_BYTES);
    this.lib.C_DecryptInit(this.session, this.gcm(Buffer.from(iv), aad), this.key);
    try {
      return Buffer.from(this.lib.C_Decrypt(this.session, body, Buffer.alloc(body.length)));
    } catch {
      throw new DecryptError();
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.lib.C_Logout(this.session);
    } catch {
      /* already logged out */
    }
    try {
      this.lib.C_CloseSession(this.session);
    } finally {
      releaseModule(this.modulePath);
    }
  }
}

/**
 * Opens the token, logs in and finds the root key by label, generating it inside the token on the
 * first start (CKA_SENSITIVE, not CKA_EXTRACTABLE, so it can never leave).
 */
/**
 * A PKCS#11 module is initialised once per process: C_Finalize ends every session of every user of
 * the module, so it is called only when the last provider using the module closes.
 */
const modules = new Map<string, { lib: pkcs11js.PKCS11; refs: number }>();
function acquireModule(modulePath: string): pkcs11js.PKCS11 {
  const m = modules.get(modulePath);
  if (m) {
    m.refs++;
    return m.lib;
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(modulePath);
  } catch {
    throw new RootKeyError(`cannot load the PKCS#11 module ${modulePath}`);
  }
  try {
    lib.C_Initialize();
  } catch (e) {
    if (!/CKR_CRYPTOKI_ALREADY_INITIALIZED/.test(String(e))) throw new RootKeyError(`the PKCS#11 module did not initialise (${ckrName(e)})`);
  }
  modules.set(modulePath, { lib, refs: 1 });
  return lib;
}
function releaseModule(modulePath: string): void {
  const m = modules.get(modulePath);
  if (!m) return;
  if (--m.refs > 0) return;
  modules.delete(modulePath);
  try {
    m.lib.C_Finalize();
  } catch {
    /* already finalized */
  }
}

export function openPkcs11RootKey(opts: Pkcs11RootKeyOptions): { provider: RootKeyProvider; created: boolean } {
  if (!opts.pin) throw new RootKeyError(`the HSM needs its user PIN: set ${opts.pinEnv}`);
  const lib = acquireModule(opts.modulePath);
  let session: Buffer | null = null;
  try {
    const slots = lib.C_GetSlotList(true);
    const labels: string[] = [];
    const slot = slots.find((s) => {
      const label = lib.C_GetTokenInfo(s).label.trim();
      labels.push(label);
      return label === opts.tokenLabel;
    });
    if (!slot) throw new RootKeyError(`no HSM token labelled "${opts.tokenLabel}" (tokens: ${labels.map((l) => `"${l}"`).join(', ') || 'none'})`);
    session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      lib.C_Login(session, pkcs11js.CKU_USER, opts.pin);
    } catch (e) {
      if (!/CKR_USER_ALREADY_LOGGED_IN/.test(String(e))) throw new RootKeyError(`the HSM refused the login with the PIN from ${opts.pinEnv} (${ckrName(e)})`);
    }
    lib.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
    ]);
    const found = lib.C_FindObjects(session, 2);
    lib.C_FindObjectsFinal(session);
    if (found.length > 1) throw new RootKeyError(`more than one key labelled "${opts.keyLabel}" in token "${opts.tokenLabel}"`);
    let key = found[0];
    let created = false;
    if (!key) {
      key = lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        { type: pkcs11js.CKA_ENCRYPT, value: true },
        { type: pkcs11js.CKA_DECRYPT, value: true },
        { type: pkcs11js.CKA_WRAP, value: false },
        { type: pkcs11js.CKA_UNWRAP, value: false },
      ]);
      created = true;
    }
    return { provider: new Pkcs11RootKey(lib, session, key, opts.modulePath), created };
  } catch (e) {
    if (session) {
      try {
        lib.C_CloseSession(session);
      } catch {
        /* closing after a failure */
      }
    }
    releaseModule(opts.modulePath);
    if (e instanceof RootKeyError) throw e;
    throw new RootKeyError(`the HSM could not be used: ${ckrName(e)}`);
  }
}

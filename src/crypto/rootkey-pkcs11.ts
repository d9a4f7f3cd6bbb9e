/**
 * The `pkcs11` root-key provider: the root key is a non-extractable AES-256 key inside an HSM, and
 * wrapping and unwrapping (AES-GCM with the caller's AAD) happen inside the HSM. Custos never holds
 * the root key's bytes; it holds logged-in sessions and the key's handle.
 *
 * Wrapped format: version byte 0x01 (AES-256-GCM, 96-bit IV, 128-bit tag) | IV (12) | ciphertext | tag (16).
 */
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { DecryptError } from './aead.js';
import { RootKeyError, type RootKeyProvider } from './rootkey.js';

const VERSION_AES_256_GCM = 0x01;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Sessions per provider: each runs one operation at a time; more operations wait for a free one. */
const MAX_SESSIONS = 4;

export interface Pkcs11RootKeyOptions {
  /** Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  modulePath: string;
  tokenLabel: string;
  keyLabel: string;
  /** The user PIN, read by the caller from the environment variable named `pinEnv`. */
  pin: string | undefined;
  /** Only the variable's name, for messages; the PIN itself never appears in one. */
  pinEnv: string;
  /**
   * Whether a missing key may be generated. Only on an installation's first start: later, a missing
   * key means a wrong label or token, and a fresh key would not open anything already stored.
   */
  create: boolean;
}

/** The CKR_* name of a PKCS#11 failure, the only part of it that goes into messages. */
function ckr(e: unknown): string {
  const m = /CKR_[A-Z_]+/.exec(String((e as Error | undefined)?.message ?? e));
  return m ? m[0] : 'an HSM error';
}

/**
 * Failures of the HSM's GCM decryption when the ciphertext or AAD is wrong. SoftHSMv2 answers a bad
 * tag with CKR_GENERAL_ERROR; PKCS#11 3.0 tokens answer CKR_AEAD_DECRYPT_FAILED.
 */
const AUTHENTICATION_FAILURES = new Set(['CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_AEAD_DECRYPT_FAILED', 'CKR_GENERAL_ERROR']);

/** The session (or the login, or the key handle) is gone, e.g. a network HSM restarted: open a new one and retry. */
const SESSION_LOST = new Set([
  'CKR_SESSION_HANDLE_INVALID', 'CKR_SESSION_CLOSED', 'CKR_USER_NOT_LOGGED_IN', 'CKR_OBJECT_HANDLE_INVALID',
  'CKR_KEY_HANDLE_INVALID', 'CKR_DEVICE_REMOVED', 'CKR_TOKEN_NOT_PRESENT',
]);

/**
 * A PKCS#11 module is initialised once per process, and its login state is per token and process:
 * C_Finalize ends every session of every user of the module, and closing a token's last session logs
 * the user out. So the module is finalised, and the user logged out, only by the last provider using them.
 */
interface LoadedModule {
  lib: pkcs11js.PKCS11;
  refs: number;
  /** False when something else in the process had initialised it: then it is not ours to finalise. */
  ownsInit: boolean;
  /** Initialised for concurrent use from several threads (the async calls run on libuv's pool). */
  threadSafe: boolean;
  /** Open providers per token (slot handle as hex). */
  tokenUsers: Map<string, number>;
}
const modules = new Map<string, LoadedModule>();

function acquireModule(modulePath: string): LoadedModule {
  const loaded = modules.get(modulePath);
  if (loaded) {
    loaded.refs++;
    return loaded;
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(modulePath);
  } catch (e) {
    // The loader's message names the file and why (missing, wrong architecture, missing symbol).
    const why = String((e as Error).message ?? e).split('\n')[0];
    throw new RootKeyError(`cannot load the PKCS#11 module ${modulePath} (pkcs11Module): ${why}`);
  }
  let ownsInit = true;
  let threadSafe = true;
  const initialise = (args?: pkcs11js.InitializationOptions) => {
    try {
      lib.C_Initialize(args);
    } catch (e) {
      if (ckr(e) === 'CKR_CRYPTOKI_ALREADY_INITIALIZED') ownsInit = false;
      else throw e;
    }
  };
  try {
    try {
      initialise({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      if (ckr(e) !== 'CKR_CANT_LOCK') throw e;
      // The module cannot be used from several threads: every call then stays on the main thread.
      threadSafe = false;
      initialise();
    }
  } catch (e) {
    try {
      lib.close();
    } catch {
      /* unloading after a failure */
    }
    throw new RootKeyError(`the PKCS#11 module ${modulePath} did not initialise (${ckr(e)})`);
  }
  const m: LoadedModule = { lib, refs: 1, ownsInit, threadSafe, tokenUsers: new Map() };
  modules.set(modulePath, m);
  return m;
}

function releaseModule(modulePath: string): void {
  const m = modules.get(modulePath);
  if (!m || --m.refs > 0) return;
  modules.delete(modulePath);
  if (!m.ownsInit) return;
  try {
    m.lib.C_Finalize();
  } catch {
    /* already finalized */
  }
}

function readUlong(v: Buffer | undefined): number {
  return v && v.length > 0 ? v.readUIntLE(0, Math.min(v.length, 6)) : -1;
}
function readBool(v: Buffer | undefined): boolean {
  return v !== undefined && v.length > 0 && v[0] !== 0;
}

class Pkcs11RootKey implements RootKeyProvider {
  readonly kind = 'pkcs11' as const;
  readonly development = false;
  #closed = false;
  #key: Buffer;
  /** Kept to log in again if the HSM drops the login (all sessions lost); never put in a message. */
  #pin: string;
  #idle: Buffer[] = [];
  #open = 0;
  #waiters: { resolve: (s: Buffer) => void; reject: (e: unknown) => void }[] = [];
  /** Set when the HSM lost our sessions: the next session logs in again and looks the key up again. */
  #stale = false;
  /** Operations under way; close() waits for them, since finalising the module under a running call is unsafe. */
  #inUse = 0;
  #drained: (() => void) | null = null;

  constructor(
    private readonly module: LoadedModule,
    private readonly slot: Buffer,
    private readonly opts: Pkcs11RootKeyOptions,
    firstSession: Buffer,
    key: Buffer,
  ) {
    this.#key = key;
    this.#pin = opts.pin!;
    this.#idle.push(firstSession);
    this.#open = 1;
  }

  /** Sessions this provider holds open now (SoftHSMv2 does not report a token's session count). */
  get openSessions(): number {
    return this.#open;
  }

  private get lib(): pkcs11js.PKCS11 {
    return this.module.lib;
  }

  private gcm(iv: Buffer, aad: Buffer): pkcs11js.Mechanism {
    const parameter: pkcs11js.AesGCM = { type: pkcs11js.CK_PARAMS_AES_GCM, iv, aad, ivBits: IV_BYTES * 8, tagBits: TAG_BYTES * 8 };
    return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
  }

  async wrap(plaintext: Buffer, aad: Buffer): Promise<Buffer> {
    return this.#withSession('wrap', async (session) => {
      // A fresh random IV per wrap: the root key wraps few keys (system keys, CMK versions), far
      // below GCM's 2^32 random-IV bound.
      const iv = randomBytes(IV_BYTES);
      this.lib.C_EncryptInit(session, this.gcm(iv, aad), this.#key);
      const out = Buffer.alloc(plaintext.length + TAG_BYTES + 16);
      const sealed = this.module.threadSafe ? await this.lib.C_EncryptAsync(session, plaintext, out) : this.lib.C_Encrypt(session, plaintext, out);
      return Buffer.concat([Buffer.from([VERSION_AES_256_GCM]), iv, sealed]);
    });
  }

  async unwrap(wrapped: Buffer, aad: Buffer): Promise<Buffer> {
    if (wrapped.length < 1 + IV_BYTES + TAG_BYTES || wrapped[0] !== VERSION_AES_256_GCM) throw new DecryptError();
    const iv = Buffer.from(wrapped.subarray(1, 1 + IV_BYTES));
    const body = Buffer.from(wrapped.subarray(1 + IV_BYTES));
    return this.#withSession('unwrap', async (session) => {
      this.lib.C_DecryptInit(session, this.gcm(iv, aad), this.#key);
      // Sized to the input: large enough for the plaintext, so the call never fails for want of room.
      const out = Buffer.alloc(body.length);
      try {
        // The result is a view of `out`: zeroing it (the caller's duty) zeroes the plaintext.
        return this.module.threadSafe ? await this.lib.C_DecryptAsync(session, body, out) : this.lib.C_Decrypt(session, body, out);
      } catch (e) {
        out.fill(0);
        if (AUTHENTICATION_FAILURES.has(ckr(e))) throw new DecryptError();
        throw e;
      }
    });
  }

  /**
   * Runs one operation on a session of its own. A session that failed in any other way than a
   * failed authentication is closed, not reused (it may hold an unfinished operation); when the HSM
   * lost the session, the operation is retried once on a fresh one (wrap and unwrap are idempotent).
   */
  async #withSession<T>(what: 'wrap' | 'unwrap', op: (session: Buffer) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const session = await this.#acquire();
      try {
        const result = await op(session);
        this.#release(session, true);
        return result;
      } catch (e) {
        if (e instanceof DecryptError) {
          this.#release(session, true);
          throw e;
        }
        this.#release(session, false);
        const code = ckr(e);
        if (SESSION_LOST.has(code)) {
          this.#stale = true;
          this.#discardIdle();
          if (attempt === 0) continue;
        }
        if (e instanceof RootKeyError) throw e;
        throw new RootKeyError(`the HSM could not ${what} (${code})`);
      }
    }
  }

  async #acquire(): Promise<Buffer> {
    const session = await this.#take();
    if (this.#closed) {
      // Handed over just as close() ran: close() no longer knows of it.
      this.#closeSession(session);
      this.#open--;
      throw new RootKeyError('the HSM root key is closed');
    }
    this.#inUse++;
    return session;
  }

  #take(): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new RootKeyError('the HSM root key is closed'));
    const idle = this.#idle.pop();
    if (idle) return Promise.resolve(idle);
    if (this.#open < MAX_SESSIONS) {
      this.#open++;
      try {
        return Promise.resolve(this.#openSession());
      } catch (e) {
        this.#open--;
        return Promise.reject(e);
      }
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #release(session: Buffer, healthy: boolean): void {
    this.#inUse--;
    if (this.#closed) {
      // close() logs out and closes what is left once the last operation is done.
      this.#idle.push(session);
      if (this.#inUse === 0) this.#drained?.();
      return;
    }
    if (!healthy) {
      this.#closeSession(session);
      this.#open--;
      const waiter = this.#waiters.shift();
      if (waiter) this.#take().then(waiter.resolve, waiter.reject);
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(session);
    else this.#idle.push(session);
  }

  #discardIdle(): void {
    for (const s of this.#idle.splice(0)) {
      this.#closeSession(s);
      this.#open--;
    }
  }

  #closeSession(session: Buffer): void {
    try {
      this.lib.C_CloseSession(session);
    } catch {
      /* the HSM may have dropped it already */
    }
  }

  #openSession(): Buffer {
    let session: Buffer;
    try {
      session = this.lib.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION);
    } catch (e) {
      throw new RootKeyError(`cannot open a session on HSM token "${this.opts.tokenLabel}" (${ckr(e)})`);
    }
    try {
      login(this.lib, session, this.#pin, this.opts.pinEnv);
      if (this.#stale) {
        const key = findKey(this.lib, session, this.opts);
        if (!key) throw new RootKeyError(`the key "${this.opts.keyLabel}" is no longer in HSM token "${this.opts.tokenLabel}"`);
        this.#key = key;
        this.#stale = false;
      }
      return session;
    } catch (e) {
      this.#closeSession(session);
      throw e instanceof RootKeyError ? e : new RootKeyError(`the HSM could not be used again after losing its session (${ckr(e)})`);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w.reject(new RootKeyError('the HSM root key is closed'));
    if (this.#inUse > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
    const idle = this.#idle.splice(0);
    const slotKey = this.slot.toString('hex');
    const users = (this.module.tokenUsers.get(slotKey) ?? 1) - 1;
    if (users > 0) this.module.tokenUsers.set(slotKey, users);
    else {
      this.module.tokenUsers.delete(slotKey);
      // The last provider on this token: end the login explicitly, not only by closing the sessions.
      if (idle[0]) {
        try {
          this.lib.C_Logout(idle[0]);
        } catch {
          /* already logged out */
        }
      }
    }
    for (const s of idle) {
      this.#closeSession(s);
      this.#open--;
    }
    this.#pin = '';
    releaseModule(this.opts.modulePath);
  }
}

function login(lib: pkcs11js.PKCS11, session: Buffer, pin: string, pinEnv: string): void {
  try {
    lib.C_Login(session, pkcs11js.CKU_USER, pin);
  } catch (e) {
    const code = ckr(e);
    // The login is per token and process: another session of this process may have logged in already.
    if (code === 'CKR_USER_ALREADY_LOGGED_IN') return;
    if (code === 'CKR_PIN_INCORRECT' || code === 'CKR_PIN_INVALID' || code === 'CKR_PIN_LEN_RANGE') {
      throw new RootKeyError(`the HSM refused the login with the PIN from ${pinEnv} (${code})`);
    }
    if (code === 'CKR_PIN_LOCKED') throw new RootKeyError(`the HSM token's user PIN is locked (${code}): unlock it with the security officer PIN`);
    throw new RootKeyError(`the HSM refused the login (${code})`);
  }
}

function findKey(lib: pkcs11js.PKCS11, session: Buffer, opts: Pkcs11RootKeyOptions): Buffer | undefined {
  lib.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_LABEL, value: opts.keyLabel },
  ]);
  let found: Buffer[];
  try {
    found = lib.C_FindObjects(session, 2);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
  if (found.length > 1) throw new RootKeyError(`more than one key labelled "${opts.keyLabel}" in HSM token "${opts.tokenLabel}": keep one, or give pkcs11KeyLabel another label`);
  return found[0];
}

/** Refuses a key that is not an AES-256 key locked inside the token, e.g. one provisioned by hand as extractable. */
function checkKey(lib: pkcs11js.PKCS11, session: Buffer, key: Buffer, opts: Pkcs11RootKeyOptions): void {
  const [type, len, sensitive, extractable, encrypt, decrypt] = lib
    .C_GetAttributeValue(session, key, [
      { type: pkcs11js.CKA_KEY_TYPE },
      { type: pkcs11js.CKA_VALUE_LEN },
      { type: pkcs11js.CKA_SENSITIVE },
      { type: pkcs11js.CKA_EXTRACTABLE },
      { type: pkcs11js.CKA_ENCRYPT },
      { type: pkcs11js.CKA_DECRYPT },
    ])
    .map((a) => a.value as Buffer | undefined);
  const problems: string[] = [];
  if (readUlong(type) !== pkcs11js.CKK_AES || readUlong(len) !== 32) problems.push('it is not an AES-256 key');
  if (!readBool(sensitive)) problems.push('CKA_SENSITIVE is false');
  if (readBool(extractable)) problems.push('CKA_EXTRACTABLE is true');
  if (!readBool(encrypt) || !readBool(decrypt)) problems.push('it does not allow CKA_ENCRYPT and CKA_DECRYPT');
  if (problems.length > 0) {
    throw new RootKeyError(`the key "${opts.keyLabel}" in HSM token "${opts.tokenLabel}" cannot be the root key: ${problems.join('; ')}`);
  }
}

/**
 * Opens the token, logs in and finds the root key by label, generating it inside the token when
 * `create` allows (CKA_SENSITIVE, not CKA_EXTRACTABLE: it can never leave the HSM).
 */
export function openPkcs11RootKey(opts: Pkcs11RootKeyOptions): { provider: RootKeyProvider; created: boolean } {
  if (!opts.pin) throw new RootKeyError(`the HSM needs its user PIN: set ${opts.pinEnv}`);
  const module = acquireModule(opts.modulePath);
  const { lib } = module;
  let session: Buffer | null = null;
  let slotKey: string | null = null;
  try {
    const labels: string[] = [];
    const slots = lib.C_GetSlotList(true).filter((s) => {
      const label = lib.C_GetTokenInfo(s).label.trim();
      labels.push(`"${label}"`);
      return label === opts.tokenLabel;
    });
    if (slots.length === 0) throw new RootKeyError(`no HSM token labelled "${opts.tokenLabel}" (pkcs11TokenLabel) in ${opts.modulePath}; tokens present: ${labels.join(', ') || 'none'}`);
    if (slots.length > 1) throw new RootKeyError(`more than one HSM token labelled "${opts.tokenLabel}": give each token a distinct label`);
    const slot = slots[0]!;
    try {
      const info = lib.C_GetMechanismInfo(slot, pkcs11js.CKM_AES_GCM);
      if ((info.flags & pkcs11js.CKF_ENCRYPT) === 0 || (info.flags & pkcs11js.CKF_DECRYPT) === 0) throw new Error('CKR_MECHANISM_INVALID');
    } catch {
      throw new RootKeyError(`HSM token "${opts.tokenLabel}" does not offer AES-GCM encryption (CKM_AES_GCM), which the root key needs`);
    }
    // Read-write: generating the key creates a token object. This session becomes the first of the pool.
    session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    slotKey = slot.toString('hex');
    module.tokenUsers.set(slotKey, (module.tokenUsers.get(slotKey) ?? 0) + 1);
    login(lib, session, opts.pin, opts.pinEnv);
    let key = findKey(lib, session, opts);
    let created = false;
    if (key) checkKey(lib, session, key, opts);
    else if (!opts.create) {
      throw new RootKeyError(
        `no key labelled "${opts.keyLabel}" (pkcs11KeyLabel) in HSM token "${opts.tokenLabel}", and this installation already holds keys wrapped by its root key: ` +
          'check the token and key labels (Custos generates the key only on the first start)',
      );
    } else {
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
    return { provider: new Pkcs11RootKey(module, slot, opts, session, key), created };
  } catch (e) {
    if (session) {
      try {
        lib.C_CloseSession(session);
      } catch {
        /* closing after a failure */
      }
    }
    if (slotKey) {
      const users = (module.tokenUsers.get(slotKey) ?? 1) - 1;
      if (users > 0) module.tokenUsers.set(slotKey, users);
      else module.tokenUsers.delete(slotKey);
    }
    releaseModule(opts.modulePath);
    if (e instanceof RootKeyError) throw e;
    throw new RootKeyError(`HSM token "${opts.tokenLabel}" could not be used (${ckr(e)})`);
  }
}

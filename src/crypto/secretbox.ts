import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { openAesGcm, sealAesGcm } from './aead.js';
import type { RootKeyProvider } from './rootkey.js';

type SystemKeyTables = {
  system_keys: { name: string; wrapped: string; created_at: number };
};

/**
 * Seals small service secrets (secret access keys, TOTP seeds) under a named 256-bit key that the
 * root key wraps. The named key is unwrapped once at start-up, so an HSM is asked once, not per request.
 */
export class SecretBox {
  private constructor(
    readonly name: string,
    private readonly key: Buffer,
  ) {}

  static async open(db: Kysely<object>, root: RootKeyProvider, name: string): Promise<SecretBox> {
    const kdb = db.withTables<SystemKeyTables>();
    const aad = Buffer.from(`custos system key ${name}`);
    let row = await kdb.selectFrom('system_keys').select('wrapped').where('name', '=', name).executeTakeFirst();
    if (!row) {
      const fresh = randomBytes(32);
      const wrapped = (await root.wrap(fresh, aad)).toString('base64');
      fresh.fill(0);
      // Two nodes starting together race here; the first insert wins and both use its key.
      await kdb
        .insertInto('system_keys')
        .values({ name, wrapped, created_at: Date.now() })
        .onConflict((oc) => oc.column('name').doNothing())
        .execute();
      row = await kdb.selectFrom('system_keys').select('wrapped').where('name', '=', name).executeTakeFirstOrThrow();
    }
    return new SecretBox(name, await root.unwrap(Buffer.from(row.wrapped, 'base64'), aad));
  }

  /** `context` binds the ciphertext to its owner (e.g. the access key id) so it cannot be moved. */
  seal(plaintext: Buffer | string, context: string): string {
    return 'v1.' + sealAesGcm(this.key, Buffer.from(plaintext), Buffer.from(context)).toString('base64');
  }

  open(sealed: string, context: string): Buffer {
    if (!sealed.startsWith('v1.')) throw new Error('unknown sealed-secret version');
    return openAesGcm(this.key, Buffer.from(sealed.slice(3), 'base64'), Buffer.from(context));
  }
}

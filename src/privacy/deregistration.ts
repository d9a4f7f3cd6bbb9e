/**
 * Account deregistration. An account administrator, signed in with MFA, asks to close the account:
 * it is frozen at once (users still sign in, but reach nothing but the deregistration) for a
 * retention period during which the request can be cancelled; then a job destroys the account's
 * content — vault collections and records, buckets and every object version, every KMS key
 * (crypto-shredding what might linger), consent and request records, IAM users and credentials —
 * and keeps only a destruction certificate, signed with Ed25519, listing what went and when.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as signBytes } from 'node:crypto';
import { sql } from 'kysely';
import type { SecretBox } from '../crypto/secretbox.js';
import type { IamService, Principal } from '../iam/iam.js';
import { OPERATOR_ACCOUNT } from '../iam/iam.js';
import type { KmsService } from '../kms/kms.js';
import type { ObsService } from '../obs/obs.js';
import type { Dialect } from '../store/db.js';
import type { VaultService } from '../vault/vault.js';
import { PrivacyError, type PrivacyRightsService } from './rights.js';
import type { RightsDb, RightsTables } from './rights-store.js';

export type DeregistrationRow = RightsTables['privacy_deregistrations'];
const KEY_SETTING = 'privacy.certificate.key';
const STALE_DESTROY_MS = 10 * 60_000;

export interface DeregistrationDeps {
  iam: IamService;
  kms: KmsService;
  obs: ObsService;
  vault: VaultService;
  rights: PrivacyRightsService;
  secrets: SecretBox;
  dialect: Dialect;
  retentionDays: number;
  now?: () => number;
}

/** The canonical bytes of a certificate: JSON with keys sorted at every level. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

export class DeregistrationService {
  private readonly now: () => number;
  readonly stats = { destroyed: 0 };

  constructor(
    private readonly db: RightsDb,
    private readonly d: DeregistrationDeps,
  ) {
    this.now = d.now ?? Date.now;
  }

  async get(accountId: string): Promise<DeregistrationRow | undefined> {
    return this.db.selectFrom('privacy_deregistrations').selectAll().where('account_id', '=', accountId).executeTakeFirst();
  }

  async request(p: Principal, confirmName: string): Promise<DeregistrationRow> {
    if (p.accountName === OPERATOR_ACCOUNT) throw new PrivacyError(403, 'OperatorAccount', 'the platform operator account cannot be deregistered');
    if (p.agency) throw new PrivacyError(403, 'AgencyNotAllowed', 'an account is deregistered by its own administrators, not through an agency');
    if (!p.mfa) throw new PrivacyError(403, 'MfaRequired', 'deregistering an account needs a session signed in with MFA (password and TOTP)');
    if (confirmName !== p.accountName) throw new PrivacyError(400, 'ConfirmationMismatch', 'confirm with the account\'s name');
    const existing = await this.get(p.accountId);
    if (existing && existing.status !== 'cancelled') throw new PrivacyError(409, 'AlreadyRequested', `the account is already ${existing.status}`);
    const now = this.now();
    const row: DeregistrationRow = {
      account_id: p.accountId, account_name: p.accountName, status: 'frozen', requested_at: now, requested_by: p.userName, destroy_after: now + this.d.retentionDays * 86_400_000,
      cancelled_at: null, cancelled_by: null, destroying_since: null, destroyed_at: null, certificate_json: null, signature: null, key_id: null,
    };
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('privacy_deregistrations').where('account_id', '=', p.accountId).where('status', '=', 'cancelled').execute();
      await trx.insertInto('privacy_deregistrations').values(row).execute();
    });
    await this.d.iam.setAccountStatus(p.accountId, 'deregistering');
    return row;
  }

  async cancel(p: Principal): Promise<DeregistrationRow> {
    const now = this.now();
    const r = await this.db.updateTable('privacy_deregistrations').set({ status: 'cancelled', cancelled_at: now, cancelled_by: p.userName })
      .where('account_id', '=', p.accountId).where('status', '=', 'frozen').where('destroy_after', '>', now).executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new PrivacyError(409, 'NotCancellable', 'there is no deregistration in its retention period to cancel');
    await this.d.iam.setAccountStatus(p.accountId, 'active');
    return (await this.get(p.accountId))!;
  }

  /** Destroys every account whose retention period ended; a claim in the database makes one node do each. */
  async runDue(): Promise<string[]> {
    const now = this.now();
    const due = await this.db.selectFrom('privacy_deregistrations').selectAll()
      .where((eb) => eb.or([eb.and([eb('status', '=', 'frozen'), eb('destroy_after', '<=', now)]), eb.and([eb('status', '=', 'destroying'), eb('destroying_since', '<', now - STALE_DESTROY_MS)])]))
      .limit(20).execute();
    const done: string[] = [];
    for (const r of due) {
      const claim = await this.db.updateTable('privacy_deregistrations').set({ status: 'destroying', destroying_since: now })
        .where('account_id', '=', r.account_id).where('status', '=', r.status).where((eb) => (r.destroying_since === null ? eb('destroying_since', 'is', null) : eb('destroying_since', '=', r.destroying_since))).executeTakeFirst();
      if (Number(claim.numUpdatedRows) !== 1) continue;
      await this.destroy(r);
      done.push(r.account_id);
    }
    return done;
  }

  /** Every step is idempotent: a node that dies midway leaves the rest to the next claim. */
  private async destroy(r: DeregistrationRow): Promise<void> {
    const a = r.account_id;
    const vault = await this.d.vault.destroyAccount(a);
    const privacy = await this.d.rights.destroyAccountData(a);
    const obs = await this.d.obs.destroyAccount(a);
    const keys = await this.d.kms.destroyAccountKeys(a);
    const iam = await this.d.iam.destroyAccountPrincipals(a);
    await this.scrub();
    const destroyedAt = this.now();
    const certificate = {
      format: 'custos-destruction-certificate-v1',
      account: { id: a, name: r.account_name },
      requested: { at: new Date(r.requested_at).toISOString(), by: r.requested_by },
      retention_ended: new Date(r.destroy_after).toISOString(),
      destroyed_at: new Date(destroyedAt).toISOString(),
      destroyed: {
        vault: { collections: vault.collections, records: vault.records },
        object_storage: { buckets: obs.buckets, object_versions: obs.versions, multipart_uploads: obs.uploads, blobs: obs.blobs },
        kms: { keys_destroyed: keys.length, key_ids: keys },
        privacy: { consent_records: privacy.consents, requests: privacy.requests },
        iam,
      },
      kept: ['this certificate', 'the account\'s audit trail until its retention ends (accountability; it holds no content)', 'the account\'s id and name, marked destroyed'],
    };
    const { key, keyId } = await this.signingKey();
    const signature = signBytes(null, Buffer.from(canonicalJson(certificate)), key).toString('base64');
    await this.db.updateTable('privacy_deregistrations').set({ status: 'destroyed', destroyed_at: destroyedAt, certificate_json: JSON.stringify(certificate), signature, key_id: keyId })
      .where('account_id', '=', a).execute();
    this.stats.destroyed++;
  }

  /**
   * Deleted rows may linger in the database's free space: SQLite zeroes them (secure_delete) but the
   * WAL still holds the old pages until a checkpoint; PostgreSQL keeps dead tuples until a vacuum.
   */
  private async scrub(): Promise<void> {
    if (this.d.dialect === 'sqlite') {
      // A TRUNCATE checkpoint gives up (busy) while another connection holds the WAL, such as the
      // store's background checkpointer in the middle of its own pass: then the old pages stay. Try
      // again until one completes; never report a destruction whose pages may still be readable.
      for (let attempt = 0; ; attempt++) {
        const { rows } = await sql<{ busy: number }>`pragma wal_checkpoint(TRUNCATE)`.execute(this.db);
        if (Number(rows[0]?.busy ?? 0) === 0) return;
        if (attempt >= 100) throw new Error('the WAL could not be truncated after the destruction (another connection kept it busy); retrying later');
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    for (const t of ['kms_key_versions', 'kms_keys', 'vault_records', 'vault_index', 'vault_tokens', 'vault_collections', 'obs_objects', 'iam_access_keys', 'iam_users', 'privacy_consents', 'privacy_archives']) {
      await sql`vacuum ${sql.table(t)}`.execute(this.db);
    }
  }

  async certificate(accountId: string): Promise<{ certificate: unknown; signature: string; key_id: string } | undefined> {
    const r = await this.get(accountId);
    if (!r?.certificate_json || !r.signature || !r.key_id) return undefined;
    return { certificate: JSON.parse(r.certificate_json), signature: r.signature, key_id: r.key_id };
  }

  /** The public key certificates verify with (SPKI PEM) and its id. */
  async publicKey(): Promise<{ key_id: string; algorithm: 'Ed25519'; public_key: string }> {
    const { key, keyId } = await this.signingKey();
    return { key_id: keyId, algorithm: 'Ed25519', public_key: createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString() };
  }

  private async signingKey() {
    let row = await this.db.selectFrom('settings').select('value').where('name', '=', KEY_SETTING).executeTakeFirst();
    if (!row) {
      const { privateKey } = generateKeyPairSync('ed25519');
      const sealed = this.d.secrets.seal(privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), KEY_SETTING);
      await this.db.insertInto('settings').values({ name: KEY_SETTING, value: sealed }).onConflict((oc) => oc.column('name').doNothing()).execute();
      row = await this.db.selectFrom('settings').select('value').where('name', '=', KEY_SETTING).executeTakeFirstOrThrow();
    }
    const key = createPrivateKey(this.d.secrets.open(row.value, KEY_SETTING).toString());
    const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
    return { key, keyId: createHash('sha256').update(spki).digest('hex').slice(0, 16) };
  }
}

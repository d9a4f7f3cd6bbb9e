/**
 * Privacy operations on top of the vault: the account's purposes and their legal bases, consent per
 * subject and purpose, and data-subject requests (access, rectification, erasure, restriction,
 * objection, portability, consent withdrawal) with the legal deadline: answered within 30 days,
 * extendable once by up to two months with a reason before the first deadline, or refused with a
 * reason. A request runs only after the subject's identity was verified.
 */
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { strToU8, zipSync } from 'fflate';
import { stringify } from 'csv-stringify/sync';
import { sql } from 'kysely';
import { openAesGcm, sealAesGcm } from '../crypto/aead.js';
import type { SecretBox } from '../crypto/secretbox.js';
import { ServiceError } from '../errors.js';
import type { KeyScope, KmsService } from '../kms/kms.js';
import { ObsError, type ObsService } from '../obs/obs.js';
import type { KeyRow } from '../kms/store.js';
import { isUniqueViolation } from '../store/db.js';
import { durationMs } from '../vault/schema.js';
import type { ProcessingGate, VaultService } from '../vault/vault.js';
import type { RequestRow, RightsDb } from './rights-store.js';
import { checkWebhookTarget, InternalAddressError, postWebhook } from './webhook-delivery.js';

export class PrivacyError extends ServiceError {
  constructor(status: number, code: string, message: string) {
    super('PRIVACY', status, code, message);
  }
}

export const LEGAL_BASES = ['consent', 'contract', 'legal_obligation', 'vital_interests', 'public_task', 'legitimate_interests'] as const;
export type LegalBasis = (typeof LEGAL_BASES)[number];
export const REQUEST_TYPES = ['access', 'rectification', 'erasure', 'restriction', 'objection', 'portability', 'consent_withdrawal'] as const;
export type RequestType = (typeof REQUEST_TYPES)[number];
export type RequestStatus = 'received' | 'verified' | 'in_progress' | 'completed' | 'refused';
/** The one purpose a restriction still allows processing for. */
export const LEGAL_CLAIMS = 'legal_claims';
const OPEN: RequestStatus[] = ['received', 'verified', 'in_progress'];
/** Open and not running: what may still be extended or refused (a running request finishes first). */
const PENDING: RequestStatus[] = ['received', 'verified'];
const SUBJECT_ID = /^[A-Za-z0-9._:@-]{1,128}$/;
export const ARCHIVE_KEY_ALIAS = 'privacy/default';
/** What the details of a rectification show in place of a corrected value (held sealed). */
const SEALED = '(sealed)';
/** Objects an archive may hold in all (it is built in memory). */
const MAX_ARCHIVE_OBJECT_BYTES = 256 * 1024 * 1024;
/** What makes a transfer of personal data to another region lawful, as the transfer record states it. */
export const SAFEGUARDS = ['adequacy_decision', 'standard_contractual_clauses', 'binding_corporate_rules', 'certification', 'explicit_consent', 'security_assessment'] as const;
export type Safeguard = (typeof SAFEGUARDS)[number];

/** Checks a cross-region copy against its transfer record (the vault's copy route asks it). */
export interface TransferCheck {
  requireTransfer(accountId: string, transferId: string | undefined, what: { kind: 'collection' | 'bucket'; name: string; sourceRegion: string; destinationRegion: string }): Promise<void>;
}

export interface RequestDetails {
  /** objection, consent_withdrawal: the purposes concerned. */
  purposes?: string[];
  /** rectification: the corrected values, per collection. */
  rectify?: { collection: string; fields: Record<string, unknown> }[];
  /** Free text from the subject (what they asked for), kept with the request. */
  note?: string;
}

/**
 * A pluggable identity check. The built-in `attestation` records that a privacy officer checked the
 * subject's identity (and how); deployments add verifiers that check evidence themselves.
 */
export interface IdentityVerifier {
  name: string;
  verify(request: RequestRow, evidence: Record<string, string>): Promise<{ ok: boolean; detail: string }>;
}
export const attestationVerifier: IdentityVerifier = {
  name: 'attestation',
  async verify(_req, evidence) {
    const how = evidence.method?.trim();
    const ref = evidence.reference?.trim();
    if (!how || !ref) return { ok: false, detail: 'an attestation names how identity was checked (method) and a reference to the evidence' };
    return { ok: true, detail: `${how} (${ref})` };
  },
};

export interface RequestView {
  id: string;
  subject_id: string;
  type: RequestType;
  status: RequestStatus;
  received_at: number;
  due_at: number;
  /** The deadline in force: the extended one when there is one. */
  effective_due_at: number;
  extended: boolean;
  extension_reason: string | null;
  overdue: boolean;
  verified_at: number | null;
  verification: { verifier: string; detail: string; by: string } | null;
  refusal_reason: string | null;
  completed_at: number | null;
  details: RequestDetails;
  result: Record<string, unknown> | null;
}

export interface RightsOptions {
  now?: () => number;
  verifiers?: IdentityVerifier[];
  /** How long an access/portability archive's link works (default 7 days). */
  archiveTtlMs?: number;
  /**
   * Whether webhooks may target internal addresses (loopback, private networks, link-local, ...);
   * by default they may not (webhook-delivery.ts).
   */
  allowInternalWebhooks?: boolean;
  onAlert?: (message: string) => void;
}

export class PrivacyRightsService implements ProcessingGate, TransferCheck {
  private readonly now: () => number;
  private readonly verifiers: Map<string, IdentityVerifier>;
  private readonly archiveTtlMs: number;
  readonly stats = { requestsCompleted: 0, overdueAlerts: 0, webhooksDelivered: 0, webhookFailures: 0 };

  constructor(
    private readonly db: RightsDb,
    private readonly vault: VaultService,
    private readonly kms: KmsService,
    private readonly obs: ObsService,
    private readonly secrets: SecretBox,
    private readonly opts: RightsOptions = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.verifiers = new Map([attestationVerifier, ...(opts.verifiers ?? [])].map((v) => [v.name, v]));
    this.archiveTtlMs = opts.archiveTtlMs ?? 7 * 86_400_000;
  }

  // ------------------------------------------------------------------ purposes

  async putPurpose(accountId: string, name: string, legalBasis: LegalBasis, description: string) {
    const now = this.now();
    await this.db.insertInto('privacy_purposes').values({ account_id: accountId, name, legal_basis: legalBasis, description, created_at: now })
      .onConflict((oc) => oc.columns(['account_id', 'name']).doUpdateSet({ legal_basis: legalBasis, description })).execute();
    return (await this.db.selectFrom('privacy_purposes').selectAll().where('account_id', '=', accountId).where('name', '=', name).executeTakeFirstOrThrow());
  }
  async listPurposes(accountId: string) {
    return this.db.selectFrom('privacy_purposes').selectAll().where('account_id', '=', accountId).orderBy('name').execute();
  }
  async deletePurpose(accountId: string, name: string): Promise<void> {
    const r = await this.db.deleteFrom('privacy_purposes').where('account_id', '=', accountId).where('name', '=', name).executeTakeFirst();
    if (!Number(r.numDeletedRows)) throw new PrivacyError(404, 'NotFound', 'purpose not found');
  }

  // ------------------------------------------------------------------ consent

  /**
   * A consent given or withdrawn, appended to the subject's history. Withdrawal takes effect at once
   * for new processing (vault reads for the purpose are refused) and fires the vault's
   * `consent_withdrawn` event, so values whose deletion rule waits for it go.
   */
  async recordConsent(accountId: string, subjectId: string, input: { purpose: string; status: 'granted' | 'withdrawn'; source: string; noticeVersion: string }) {
    checkSubject(subjectId);
    const purpose = await this.db.selectFrom('privacy_purposes').selectAll().where('account_id', '=', accountId).where('name', '=', input.purpose).executeTakeFirst();
    if (!purpose) throw new PrivacyError(400, 'UnknownPurpose', `the purpose ${input.purpose} is not in the account's catalogue`);
    if (purpose.legal_basis !== 'consent') throw new PrivacyError(400, 'NotConsentBased', `the purpose ${input.purpose} rests on ${purpose.legal_basis}, not on consent`);
    const now = this.now();
    let row;
    for (let attempt = 0; ; attempt++) {
      const last = await this.db.selectFrom('privacy_consents').select('seq').where('account_id', '=', accountId).where('subject_id', '=', subjectId).where('purpose', '=', input.purpose).orderBy('seq', 'desc').limit(1).executeTakeFirst();
      row = { id: randomUUID(), account_id: accountId, subject_id: subjectId, purpose: input.purpose, status: input.status, source: input.source, notice_version: input.noticeVersion, recorded_at: now, seq: (last?.seq ?? 0) + 1 };
      try {
        await this.db.insertInto('privacy_consents').values(row).execute();
        break;
      } catch (e) {
        // Another change to the same consent took this position: take the next one.
        if (!isUniqueViolation(e) || attempt >= 4) throw e;
      }
    }
    let event = null;
    if (input.status === 'withdrawn') event = await this.vault.recordEvent(accountId, subjectId, 'consent_withdrawn');
    return { consent: row, ...(event ? { vault: event } : {}) };
  }

  async consents(accountId: string, subjectId: string) {
    checkSubject(subjectId);
    const history = await this.db.selectFrom('privacy_consents').selectAll().where('account_id', '=', accountId).where('subject_id', '=', subjectId).orderBy('recorded_at').orderBy('purpose').orderBy('seq').execute();
    const current = new Map<string, (typeof history)[number]>();
    for (const h of history) current.set(h.purpose, h);
    return { current: [...current.values()], history };
  }

  // ------------------------------------------------------------------ the processing gate

  /**
   * The gate's probe, evaluated inside the vault's record query: a subject with no active restriction
   * or objection, read for a purpose that is not consent-based or that the subject's latest consent
   * grants, is clear. Anything else goes to `blocked`, which gives the reason.
   */
  probe(accountId: string, purpose: string, subjectColumn: string) {
    const subject = sql.ref(subjectColumn);
    // One column, 1 when the subject needs the full check: an active restriction or objection, or a
    // consent-based purpose whose latest consent is not a grant (evaluated only for such purposes).
    const check = sql<number>`case when exists (select 1 from privacy_limits l where l.account_id = ${accountId} and l.subject_id = ${subject} and l.lifted_at is null) then 1
      when (select p.legal_basis from privacy_purposes p where p.account_id = ${accountId} and p.name = ${purpose}) = 'consent'
        and coalesce((select c.status from privacy_consents c where c.account_id = ${accountId} and c.subject_id = ${subject} and c.purpose = ${purpose} order by c.seq desc limit 1), '') <> 'granted' then 1
      else 0 end`;
    return { columns: [check.as('gate_check')], clear: (row: Record<string, unknown>) => Number(row.gate_check) === 0 };
  }

  async blocked(accountId: string, subjectIds: string[], purpose: string): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (!subjectIds.length) return out;
    const limits = await this.db.selectFrom('privacy_limits').selectAll().where('account_id', '=', accountId).where('subject_id', 'in', subjectIds).where('lifted_at', 'is', null).execute();
    for (const l of limits) {
      const purposes = JSON.parse(l.purposes_json) as string[];
      if (l.kind === 'restriction' && purpose !== LEGAL_CLAIMS) out.set(l.subject_id, 'processing is restricted at the data subject\'s request (only legal claims)');
      if (l.kind === 'objection' && purposes.includes(purpose)) out.set(l.subject_id, `the data subject objected to processing for ${purpose}`);
    }
    const p = await this.db.selectFrom('privacy_purposes').select('legal_basis').where('account_id', '=', accountId).where('name', '=', purpose).executeTakeFirst();
    if (p?.legal_basis === 'consent') {
      const rows = await this.db.selectFrom('privacy_consents').select(['subject_id', 'status', 'seq']).where('account_id', '=', accountId).where('purpose', '=', purpose).where('subject_id', 'in', subjectIds).orderBy('seq').execute();
      const last = new Map<string, string>();
      for (const r of rows) last.set(r.subject_id, r.status);
      for (const s of subjectIds) if (last.get(s) !== 'granted' && !out.has(s)) out.set(s, last.get(s) === 'withdrawn' ? `consent for ${purpose} was withdrawn` : `no consent for ${purpose}`);
    }
    return out;
  }

  // ------------------------------------------------------------------ requests

  async createRequest(accountId: string, actor: string, input: { subjectId: string; type: RequestType; details: RequestDetails; receivedAt?: number | undefined }): Promise<RequestView> {
    checkSubject(input.subjectId);
    const now = this.now();
    const received = input.receivedAt ?? now;
    if (received > now + 60_000) throw new PrivacyError(400, 'InvalidRequest', 'a request cannot be received in the future');
    if (input.type === 'objection' && !input.details.purposes?.length) throw new PrivacyError(400, 'InvalidRequest', 'an objection names the purposes it objects to');
    if (input.type === 'rectification' && !input.details.rectify?.length) throw new PrivacyError(400, 'InvalidRequest', 'a rectification request carries the corrected values (details.rectify)');
    if (!(await this.subjectKnown(accountId, input.subjectId))) throw new PrivacyError(404, 'UnknownSubject', 'nothing is held about this data subject (no vault record, tagged object or consent record)');
    const open = await this.db.selectFrom('privacy_requests').select('id').where('account_id', '=', accountId).where('subject_id', '=', input.subjectId).where('type', '=', input.type).where('status', 'in', OPEN).limit(1).executeTakeFirst();
    if (open) throw new PrivacyError(409, 'DuplicateRequest', `an open ${input.type} request for this subject exists already (${open.id})`);
    const id = randomUUID();
    const row: RequestRow = {
      id, account_id: accountId, subject_id: input.subjectId, type: input.type, status: 'received', details_json: JSON.stringify(this.storedDetails(id, input.details)),
      received_at: received, due_at: received + durationMs('P30D', received), extended_due_at: null, extension_reason: null, verified_at: null,
      verification_json: null, refusal_reason: null, completed_at: null, result_json: null, overdue_alerted_at: null, updated_at: now,
    };
    await this.db.transaction().execute(async (trx) => {
      await trx.insertInto('privacy_requests').values(row).execute();
      await this.event(trx, row, 'received', actor, `${input.type} request received`);
    });
    return this.view(row);
  }

  /** Whether the account holds anything about the subject: vault records, tagged objects, consent records. */
  private async subjectKnown(accountId: string, subjectId: string): Promise<boolean> {
    if (await this.db.selectFrom('privacy_consents').select('id').where('account_id', '=', accountId).where('subject_id', '=', subjectId).limit(1).executeTakeFirst()) return true;
    if (await this.vault.subjectKnown(accountId, subjectId)) return true;
    return (await this.obs.subjectObjects(accountId, subjectId)).length > 0;
  }

  async getRequest(accountId: string, id: string): Promise<RequestRow | undefined> {
    return this.db.selectFrom('privacy_requests').selectAll().where('account_id', '=', accountId).where('id', '=', id).executeTakeFirst();
  }

  async listRequests(accountId: string, filter: { status?: string | undefined; overdue?: boolean | undefined; subjectId?: string | undefined }): Promise<RequestView[]> {
    let q = this.db.selectFrom('privacy_requests').selectAll().where('account_id', '=', accountId);
    if (filter.status) q = q.where('status', '=', filter.status);
    if (filter.subjectId) q = q.where('subject_id', '=', filter.subjectId);
    const rows = (await q.orderBy('received_at').limit(1000).execute()).map((r) => this.view(r));
    return filter.overdue === undefined ? rows : rows.filter((r) => r.overdue === filter.overdue);
  }

  async history(id: string) {
    return this.db.selectFrom('privacy_request_events').select(['seq', 'at', 'event', 'actor', 'note']).where('request_id', '=', id).orderBy('seq').execute();
  }

  /**
   * A rectification's corrected values are personal data: they are kept sealed under the service's
   * system key (bound to the request), and the details show only which properties change. They are
   * dropped once the request is carried out or refused, or the subject's data erased.
   */
  private storedDetails(requestId: string, d: RequestDetails): RequestDetails & { rectify_sealed?: string } {
    if (!d.rectify) return d;
    return {
      ...d,
      rectify: d.rectify.map((x) => ({ collection: x.collection, fields: Object.fromEntries(Object.keys(x.fields).map((k) => [k, SEALED])) })),
      rectify_sealed: this.secrets.seal(JSON.stringify(d.rectify), `privacy-rectify:${requestId}`),
    };
  }
  private rectifyValues(r: RequestRow): NonNullable<RequestDetails['rectify']> {
    const d = JSON.parse(r.details_json) as RequestDetails & { rectify_sealed?: string };
    if (!d.rectify_sealed) throw new PrivacyError(409, 'InvalidState', 'the corrected values of this request are no longer held');
    return JSON.parse(this.secrets.open(d.rectify_sealed, `privacy-rectify:${r.id}`).toString('utf8')) as NonNullable<RequestDetails['rectify']>;
  }
  /** details_json without the sealed corrected values. */
  private static withoutSealed(detailsJson: string): string {
    const { rectify_sealed: _dropped, ...rest } = JSON.parse(detailsJson) as RequestDetails & { rectify_sealed?: string };
    return JSON.stringify(rest);
  }

  view(r: RequestRow): RequestView {
    const effective = r.extended_due_at ?? r.due_at;
    return {
      id: r.id, subject_id: r.subject_id, type: r.type as RequestType, status: r.status as RequestStatus, received_at: r.received_at, due_at: r.due_at,
      effective_due_at: effective, extended: r.extended_due_at !== null, extension_reason: r.extension_reason,
      overdue: OPEN.includes(r.status as RequestStatus) && this.now() > effective, verified_at: r.verified_at,
      verification: r.verification_json ? (JSON.parse(r.verification_json) as RequestView['verification']) : null, refusal_reason: r.refusal_reason,
      completed_at: r.completed_at, details: JSON.parse(PrivacyRightsService.withoutSealed(r.details_json)) as RequestDetails, result: r.result_json ? (JSON.parse(r.result_json) as Record<string, unknown>) : null,
    };
  }

  /**
   * Moves a request from one status to another, only if no one else moved it meanwhile; the history
   * entry and the webhook notification are written in the same transaction.
   */
  private async transition(r: RequestRow, to: RequestStatus, set: Partial<RequestRow>, actor: string, note: string): Promise<RequestRow> {
    const now = this.now();
    const next = { ...r, ...set, status: to, updated_at: now };
    await this.db.transaction().execute(async (trx) => {
      const u = await trx.updateTable('privacy_requests').set({ ...set, status: to, updated_at: now }).where('id', '=', r.id).where('status', '=', r.status).where('updated_at', '=', r.updated_at).executeTakeFirst();
      if (Number(u.numUpdatedRows) !== 1) throw new PrivacyError(409, 'ConcurrentChange', 'the request changed meanwhile; read it again');
      await this.event(trx, next, to === r.status ? 'updated' : to, actor, note);
    });
    return next;
  }

  /** A history entry (the request's row is locked by the caller's update, so seq cannot collide) and its notification. */
  private async event(db: RightsDb, r: RequestRow, event: string, actor: string, note: string): Promise<void> {
    const last = await db.selectFrom('privacy_request_events').select('seq').where('request_id', '=', r.id).orderBy('seq', 'desc').limit(1).executeTakeFirst();
    const at = this.now();
    await db.insertInto('privacy_request_events').values({ request_id: r.id, seq: (last?.seq ?? 0) + 1, at, event, actor, note: note.slice(0, 1024) }).execute();
    const hook = await db.selectFrom('privacy_webhooks').select('account_id').where('account_id', '=', r.account_id).executeTakeFirst();
    if (!hook) return;
    const v = this.view(r);
    const payload = {
      event: `privacy.request.${event}`, occurred_at: new Date(at).toISOString(), account_id: r.account_id,
      request: { id: v.id, subject_id: v.subject_id, type: v.type, status: v.status, received_at: new Date(v.received_at).toISOString(), due_at: new Date(v.effective_due_at).toISOString(), extended: v.extended, overdue: v.overdue },
      note: note.slice(0, 1024),
    };
    await db.insertInto('privacy_outbox').values({ id: randomUUID(), account_id: r.account_id, event: payload.event, payload_json: JSON.stringify(payload), created_at: at, attempts: 0, next_attempt_at: at, delivered_at: null, failed_at: null, last_error: null }).execute();
  }

  async verify(r: RequestRow, actor: string, verifierName: string, evidence: Record<string, string>): Promise<RequestView> {
    if (r.status !== 'received') throw new PrivacyError(409, 'InvalidState', `a ${r.status} request cannot be verified`);
    const v = this.verifiers.get(verifierName);
    if (!v) throw new PrivacyError(400, 'UnknownVerifier', `no identity verifier ${verifierName}; available: ${[...this.verifiers.keys()].join(', ')}`);
    const res = await v.verify(r, evidence);
    if (!res.ok) {
      await this.event(this.db, r, 'verification_failed', actor, res.detail);
      throw new PrivacyError(400, 'VerificationFailed', res.detail);
    }
    return this.view(await this.transition(r, 'verified', { verified_at: this.now(), verification_json: JSON.stringify({ verifier: v.name, detail: res.detail, by: actor }) }, actor, `identity verified by ${v.name}`));
  }

  /** One extension, by up to two months, with a reason, before the first deadline passes. */
  async extend(r: RequestRow, actor: string, months: number, reason: string): Promise<RequestView> {
    if (!PENDING.includes(r.status as RequestStatus)) throw new PrivacyError(409, 'InvalidState', `a ${r.status} request cannot be extended`);
    if (r.extended_due_at !== null) throw new PrivacyError(409, 'AlreadyExtended', 'a request can be extended once');
    if (this.now() > r.due_at) throw new PrivacyError(409, 'DeadlinePassed', 'the extension had to be given before the first deadline');
    if (!Number.isInteger(months) || months < 1 || months > 2) throw new PrivacyError(400, 'InvalidExtension', 'an extension is one or two months');
    const until = r.due_at + durationMs(`P${months}M`, r.due_at);
    return this.view(await this.transition(r, r.status as RequestStatus, { extended_due_at: until, extension_reason: reason }, actor, `deadline extended by ${months} month(s): ${reason}`));
  }

  async refuse(r: RequestRow, actor: string, reason: string): Promise<RequestView> {
    if (!PENDING.includes(r.status as RequestStatus)) throw new PrivacyError(409, 'InvalidState', `a ${r.status} request cannot be refused`);
    return this.view(await this.transition(r, 'refused', { refusal_reason: reason, completed_at: this.now(), details_json: PrivacyRightsService.withoutSealed(r.details_json) }, actor, `refused: ${reason}`));
  }

  /** Carries a verified request out over everything the account holds about the subject. */
  async execute(r: RequestRow, actor: string, scope: KeyScope): Promise<RequestView> {
    if (r.status === 'received') throw new PrivacyError(409, 'NotVerified', 'the data subject\'s identity must be verified before the request runs');
    if (r.status !== 'verified') throw new PrivacyError(409, 'InvalidState', `a ${r.status} request cannot run`);
    let cur = await this.transition(r, 'in_progress', {}, actor, 'execution started');
    const details = JSON.parse(r.details_json) as RequestDetails;
    let result: Record<string, unknown>;
    try {
      result = await this.carryOut(cur, details, actor, scope);
    } catch (e) {
      // Back to verified, so it can be retried; the failure is in the history.
      cur = await this.transition(cur, 'verified', {}, actor, `execution failed: ${(e as Error).message}`);
      throw e;
    }
    this.stats.requestsCompleted++;
    return this.view(await this.transition(cur, 'completed', { completed_at: this.now(), result_json: JSON.stringify(result), details_json: PrivacyRightsService.withoutSealed(r.details_json) }, actor, 'completed'));
  }

  private async carryOut(r: RequestRow, d: RequestDetails, actor: string, scope: KeyScope): Promise<Record<string, unknown>> {
    const account = r.account_id;
    const now = this.now();
    switch (r.type as RequestType) {
      case 'access':
      case 'portability':
        return this.buildArchive(r, scope);
      case 'erasure': {
        const legal = new Map((await this.listPurposes(account)).filter((p) => p.legal_basis === 'legal_obligation').map((p) => [p.name, p]));
        const res = await this.vault.eraseSubject(account, r.subject_id, (_c, p) => {
          const kept = p.purposes.find((x) => legal.has(x));
          return kept ? `kept under a legal obligation (${kept}${legal.get(kept)!.description ? `: ${legal.get(kept)!.description}` : ''}) until its own deletion rule` : null;
        });
        // Objects tagged with the subject: every version goes, unless object lock keeps it.
        const objects = { deleted_versions: 0, kept: [] as { bucket: string; key: string; version_id: string; reason: string }[] };
        for (const o of await this.obs.subjectObjects(account, r.subject_id)) {
          try {
            await this.obs.deleteObject(o.bucket, o.row.key, o.row.version_id);
            objects.deleted_versions++;
          } catch (e) {
            if (!(e instanceof ObsError) || e.status !== 403) throw e;
            objects.kept.push({ bucket: o.bucket.name, key: o.row.key, version_id: o.row.version_id, reason: `object lock: ${e.message}` });
          }
        }
        // What earlier requests hold of the subject's data goes too: access and portability archives,
        // corrected values a rectification still waits to apply. The requests themselves stay (their
        // history is the proof the subject's rights were handled).
        const others = this.db.selectFrom('privacy_requests').select('id').where('account_id', '=', account).where('subject_id', '=', r.subject_id);
        const archives = await this.db.deleteFrom('privacy_archives').where('request_id', 'in', others).executeTakeFirst();
        for (const p of await this.db.selectFrom('privacy_requests').select(['id', 'details_json']).where('account_id', '=', account).where('subject_id', '=', r.subject_id).where('id', '!=', r.id).execute()) {
          if (p.details_json.includes('"rectify_sealed"')) await this.db.updateTable('privacy_requests').set({ details_json: PrivacyRightsService.withoutSealed(p.details_json) }).where('id', '=', p.id).execute();
        }
        return { ...res, kept: res.kept.map((k) => ({ ...k, until: k.until === null ? null : new Date(k.until).toISOString() })), objects, archives_deleted: Number(archives.numDeletedRows), consent_records: 'kept as proof of lawful processing' };
      }
      case 'rectification': {
        let records = 0;
        const rectify = this.rectifyValues(r);
        for (const x of rectify) records += await this.vault.rectifySubject(account, r.subject_id, x.collection, x.fields);
        return { records_rectified: records, collections: rectify.map((x) => x.collection) };
      }
      case 'restriction':
      case 'objection': {
        const purposes = r.type === 'restriction' ? ['*'] : d.purposes!;
        await this.db.insertInto('privacy_limits').values({ id: randomUUID(), account_id: account, subject_id: r.subject_id, kind: r.type, purposes_json: JSON.stringify(purposes), request_id: r.id, since: now, lifted_at: null }).execute();
        return r.type === 'restriction' ? { restricted: true, still_allowed: [LEGAL_CLAIMS] } : { objected_purposes: purposes };
      }
      case 'consent_withdrawal': {
        const state = await this.consents(account, r.subject_id);
        const targets = d.purposes?.length ? d.purposes : state.current.filter((c) => c.status === 'granted').map((c) => c.purpose);
        for (const p of targets) await this.recordConsent(account, r.subject_id, { purpose: p, status: 'withdrawn', source: `data-subject request ${r.id}`, noticeVersion: 'n/a' });
        return { withdrawn: targets, by: actor };
      }
    }
  }

  async liftLimit(accountId: string, subjectId: string, kind: 'restriction' | 'objection'): Promise<number> {
    const r = await this.db.updateTable('privacy_limits').set({ lifted_at: this.now() }).where('account_id', '=', accountId).where('subject_id', '=', subjectId).where('kind', '=', kind).where('lifted_at', 'is', null).executeTakeFirst();
    return Number(r.numUpdatedRows);
  }

  // ------------------------------------------------------------------ archives

  /**
   * Access and portability: everything held about the subject — vault records, consent history and
   * this account's requests — as one ZIP (JSON and CSV files), encrypted under the account's
   * privacy key, offered through a link that expires.
   */
  private async buildArchive(r: RequestRow, scope: KeyScope): Promise<Record<string, unknown>> {
    const vault = await this.vault.subjectData(r.account_id, r.subject_id);
    const objects = await this.obs.subjectObjects(r.account_id, r.subject_id);
    const consent = await this.consents(r.account_id, r.subject_id);
    const requests = await this.listRequests(r.account_id, { subjectId: r.subject_id });
    const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
    const doc = {
      format: 'custos-subject-archive-v1', subject_id: r.subject_id, generated_at: iso(this.now()), request_id: r.id,
      vault: vault.map((v) => ({ ...v, created_at: iso(v.created_at), updated_at: iso(v.updated_at) })),
      objects: objects.map((o) => ({ bucket: o.bucket.name, region: o.bucket.region, key: o.row.key, version_id: o.row.version_id, size: o.row.size, content_type: o.row.content_type, created_at: iso(o.row.created_at), current: o.row.is_latest === 1, file: `objects/${o.bucket.name}/${o.row.version_id}/${encodeURIComponent(o.row.key)}` })),
      consents: consent.history.map((c) => ({ purpose: c.purpose, status: c.status, source: c.source, notice_version: c.notice_version, recorded_at: iso(c.recorded_at) })),
      requests: requests.map((q) => ({ id: q.id, type: q.type, status: q.status, received_at: iso(q.received_at), due_at: iso(q.effective_due_at), completed_at: iso(q.completed_at) })),
    };
    const vaultCsv = stringify([['collection', 'region', 'record_id', 'property', 'value'], ...vault.flatMap((v) => Object.entries(v.fields).map(([k, val]) => [v.collection, v.region, v.record_id, k, String(val)]))]);
    const consentCsv = stringify([['purpose', 'status', 'source', 'notice_version', 'recorded_at'], ...doc.consents.map((c) => [c.purpose, c.status, c.source, c.notice_version, c.recorded_at])]);
    const requestCsv = stringify([['id', 'type', 'status', 'received_at', 'due_at', 'completed_at'], ...doc.requests.map((q) => [q.id, q.type, q.status, q.received_at, q.due_at, q.completed_at])]);
    const files: Record<string, Uint8Array> = {
      'subject.json': strToU8(JSON.stringify(doc, null, 2)), 'vault.csv': strToU8(vaultCsv), 'consents.csv': strToU8(consentCsv), 'requests.csv': strToU8(requestCsv),
    };
    let objectBytes = 0;
    for (const [i, o] of objects.entries()) {
      objectBytes += o.row.size;
      if (objectBytes > MAX_ARCHIVE_OBJECT_BYTES) throw new PrivacyError(413, 'ArchiveTooLarge', `the subject's objects exceed ${MAX_ARCHIVE_OBJECT_BYTES / 1024 / 1024} MiB; export them from object storage instead`);
      files[doc.objects[i]!.file] = await this.obs.readWhole(o.bucket, o.row);
    }
    const zip = Buffer.from(zipSync(files));
    const key = await this.archiveKey(scope);
    const dk = await this.kms.generateDataKey(key, 32, { 'privacy:archive': r.id });
    const content = sealAesGcm(dk.plaintext, zip, Buffer.from(`custos-privacy-archive\u0000${r.account_id}\u0000${r.id}`));
    dk.plaintext.fill(0);
    const secret = randomBytes(32).toString('base64url');
    const now = this.now();
    const expires = now + this.archiveTtlMs;
    await this.db.insertInto('privacy_archives').values({
      request_id: r.id, account_id: r.account_id, kms_key_id: key.id, project_id: scope.projectId, region: scope.region, data_key: dk.ciphertext.toString('base64'),
      content: content.toString('base64'), link_secret_hash: createHash('sha256').update(secret).digest('hex'), expires_at: expires, created_at: now,
    }).onConflict((oc) => oc.column('request_id').doNothing()).execute();
    return {
      archive: `/v1/privacy/archives/${r.id}?token=${secret}`, expires_at: new Date(expires).toISOString(), bytes: zip.length,
      records: vault.length, objects: objects.length, values: vault.reduce((n, v) => n + Object.keys(v.fields).length, 0), consents: doc.consents.length, requests: doc.requests.length,
    };
  }

  private archiveKey(scope: KeyScope): Promise<KeyRow> {
    return this.kms.defaultKey(scope, ARCHIVE_KEY_ALIAS, 'default key of data-subject request archives');
  }

  /** The archive behind a link: the token must match (constant time) and the link must not have expired. */
  async openArchive(requestId: string, token: string): Promise<Buffer> {
    const a = await this.db.selectFrom('privacy_archives').selectAll().where('request_id', '=', requestId).executeTakeFirst();
    const given = createHash('sha256').update(token).digest();
    if (!a || !timingSafeEqual(given, Buffer.from(a.link_secret_hash, 'hex'))) throw new PrivacyError(404, 'NotFound', 'no such archive');
    if (this.now() >= a.expires_at) throw new PrivacyError(410, 'Expired', 'the archive link has expired; run the request again for a new one');
    const key = await this.kms.getKey({ accountId: a.account_id, projectId: a.project_id, region: a.region }, a.kms_key_id);
    const dek = await this.kms.decrypt(key, Buffer.from(a.data_key, 'base64'), { 'privacy:archive': requestId });
    try {
      return openAesGcm(dek, Buffer.from(a.content, 'base64'), Buffer.from(`custos-privacy-archive\u0000${a.account_id}\u0000${requestId}`));
    } finally {
      dek.fill(0);
    }
  }

  // ------------------------------------------------------------------ cross-border transfers

  async recordTransfer(accountId: string, actor: string, t: { kind: 'collection' | 'bucket'; name: string; sourceRegion: string; destinationProjectId: string; destinationRegion: string; purpose: string; safeguard: Safeguard; notes: string }) {
    if (t.sourceRegion === t.destinationRegion) throw new PrivacyError(400, 'SameRegion', `the source and the destination are both in ${t.sourceRegion}: no transfer to record`);
    const row = {
      id: randomUUID(), account_id: accountId, source_kind: t.kind, source_name: t.name, source_region: t.sourceRegion, destination_project_id: t.destinationProjectId,
      destination_region: t.destinationRegion, purpose: t.purpose, safeguard: t.safeguard, notes: t.notes, created_by: actor, created_at: this.now(), used_at: null,
    };
    await this.db.insertInto('privacy_transfers').values(row).execute();
    return row;
  }
  async listTransfers(accountId: string) {
    return this.db.selectFrom('privacy_transfers').selectAll().where('account_id', '=', accountId).orderBy('created_at').limit(1000).execute();
  }

  async requireTransfer(accountId: string, transferId: string | undefined, what: { kind: 'collection' | 'bucket'; name: string; sourceRegion: string; destinationRegion: string }): Promise<void> {
    if (what.sourceRegion === what.destinationRegion) return;
    const t = transferId ? await this.db.selectFrom('privacy_transfers').selectAll().where('account_id', '=', accountId).where('id', '=', transferId).executeTakeFirst() : undefined;
    if (!t || t.source_kind !== what.kind || t.source_name !== what.name || t.source_region !== what.sourceRegion || t.destination_region !== what.destinationRegion) {
      throw new PrivacyError(403, 'TransferNotRecorded', `copying ${what.kind} ${what.name} from ${what.sourceRegion} to ${what.destinationRegion} needs a transfer record for exactly that (POST /v1/privacy/transfers), named by transfer_id`);
    }
    await this.db.updateTable('privacy_transfers').set({ used_at: this.now() }).where('id', '=', t.id).execute();
  }

  // ------------------------------------------------------------------ webhooks

  /** Sets the account's endpoint; the signing secret is returned once and stored sealed. */
  async setWebhook(accountId: string, url: string): Promise<{ url: string; secret: string }> {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new PrivacyError(400, 'InvalidWebhook', 'the webhook is not a valid URL');
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new PrivacyError(400, 'InvalidWebhook', 'a webhook is an http or https URL');
    if (u.username || u.password) throw new PrivacyError(400, 'InvalidWebhook', 'a webhook URL carries no credentials; requests are signed instead');
    // Refused now when the host is, or resolves to, an internal address; checked again at every delivery.
    const allowInternal = this.opts.allowInternalWebhooks === true;
    try {
      await checkWebhookTarget(u, allowInternal);
    } catch (e) {
      if (e instanceof InternalAddressError) throw new PrivacyError(400, 'InvalidWebhook', `${e.message} (an operator may allow them with privacyWebhookInternalTargets)`);
      throw e;
    }
    const secret = `whsec_${randomBytes(32).toString('base64url')}`;
    const sealed = this.secrets.seal(secret, `privacy-webhook:${accountId}`);
    await this.db.insertInto('privacy_webhooks').values({ account_id: accountId, url: u.toString(), secret_sealed: sealed, created_at: this.now() })
      .onConflict((oc) => oc.column('account_id').doUpdateSet({ url: u.toString(), secret_sealed: sealed })).execute();
    return { url: u.toString(), secret };
  }
  async getWebhook(accountId: string): Promise<{ url: string } | undefined> {
    return this.db.selectFrom('privacy_webhooks').select('url').where('account_id', '=', accountId).executeTakeFirst();
  }
  async deleteWebhook(accountId: string): Promise<boolean> {
    return Number((await this.db.deleteFrom('privacy_webhooks').where('account_id', '=', accountId).executeTakeFirst()).numDeletedRows) === 1;
  }
  async outbox(accountId: string) {
    return this.db.selectFrom('privacy_outbox').select(['id', 'event', 'created_at', 'attempts', 'next_attempt_at', 'delivered_at', 'failed_at', 'last_error']).where('account_id', '=', accountId).orderBy('created_at').limit(1000).execute();
  }

  /**
   * Delivers due notifications: POST of the JSON payload with `X-Custos-Signature: t=<unix>,v1=<hex
   * HMAC-SHA256(secret, t + "." + body)>`. A 2xx is delivered; anything else is retried with
   * exponential backoff (30 s doubling, at most 6 h) and given up after 12 attempts. A row is claimed
   * by a conditional update first, so two nodes never send it at the same time.
   */
  async runOutbox(): Promise<{ delivered: number; failed: number }> {
    // One run at a time on this node: a run that outlasts the timer's interval is not overlapped.
    if (this.outboxRun) return { delivered: 0, failed: 0 };
    this.outboxRun = this.deliverDue();
    try {
      return await this.outboxRun;
    } finally {
      this.outboxRun = null;
    }
  }

  private outboxRun: Promise<{ delivered: number; failed: number }> | null = null;

  private async deliverDue(): Promise<{ delivered: number; failed: number }> {
    const now = this.now();
    const due = await this.db.selectFrom('privacy_outbox').selectAll().where('delivered_at', 'is', null).where('failed_at', 'is', null).where('next_attempt_at', '<=', now).orderBy('next_attempt_at').limit(100).execute();
    let delivered = 0;
    let failed = 0;
    for (const row of due) {
      const claim = await this.db.updateTable('privacy_outbox').set({ next_attempt_at: this.now() + 60_000 }).where('id', '=', row.id).where('next_attempt_at', '=', row.next_attempt_at).where('delivered_at', 'is', null).executeTakeFirst();
      if (Number(claim.numUpdatedRows) !== 1) continue;
      const hook = await this.db.selectFrom('privacy_webhooks').selectAll().where('account_id', '=', row.account_id).executeTakeFirst();
      let error: string | null = null;
      if (!hook) error = 'no webhook configured';
      else {
        const secret = this.secrets.open(hook.secret_sealed, `privacy-webhook:${row.account_id}`);
        const t = Math.floor(now / 1000);
        const sig = createHmac('sha256', secret).update(`${t}.${row.payload_json}`).digest('hex');
        secret.fill(0);
        try {
          // No redirect is followed: a 3xx is a failed delivery.
          const res = await postWebhook(hook.url, row.payload_json, {
            'content-type': 'application/json', 'user-agent': 'Custos-Webhook/1', 'x-custos-event': row.event, 'x-custos-delivery': row.id, 'x-custos-signature': `t=${t},v1=${sig}`,
          }, { allowInternal: this.opts.allowInternalWebhooks === true, timeoutMs: 5000 });
          if (res.status < 200 || res.status >= 300) error = `HTTP ${res.status}`;
        } catch (e) {
          error = e instanceof InternalAddressError ? `refused: ${e.message}` : (e as Error).name === 'TimeoutError' ? 'timed out after 5 s' : 'connection failed';
        }
      }
      const attempts = row.attempts + 1;
      if (!error) {
        delivered++;
        this.stats.webhooksDelivered++;
        await this.db.updateTable('privacy_outbox').set({ attempts, delivered_at: this.now(), last_error: null }).where('id', '=', row.id).execute();
      } else {
        failed++;
        this.stats.webhookFailures++;
        const giveUp = attempts >= 12;
        await this.db.updateTable('privacy_outbox').set({ attempts, last_error: error, next_attempt_at: now + Math.min(30_000 * 2 ** (attempts - 1), 6 * 3_600_000), ...(giveUp ? { failed_at: this.now() } : {}) }).where('id', '=', row.id).execute();
        if (giveUp) this.opts.onAlert?.(`privacy webhook delivery ${row.id} (account ${row.account_id}) given up after ${attempts} attempts: ${error}`);
      }
    }
    return { delivered, failed };
  }

  /** Account destruction: purposes, consent, requests, limits, archives, transfers, webhook and outbox. */
  async destroyAccountData(accountId: string): Promise<{ consents: number; requests: number }> {
    const reqs = (await this.db.selectFrom('privacy_requests').select('id').where('account_id', '=', accountId).execute()).map((r) => r.id);
    if (reqs.length) await this.db.deleteFrom('privacy_request_events').where('request_id', 'in', reqs).execute();
    const consents = await this.db.deleteFrom('privacy_consents').where('account_id', '=', accountId).executeTakeFirst();
    for (const t of ['privacy_requests', 'privacy_limits', 'privacy_archives', 'privacy_transfers', 'privacy_webhooks', 'privacy_outbox', 'privacy_purposes'] as const) {
      await this.db.deleteFrom(t).where('account_id', '=', accountId).execute();
    }
    return { consents: Number(consents.numDeletedRows), requests: reqs.length };
  }

  // ------------------------------------------------------------------ jobs

  /** Overdue requests raise one alert each (history, log, metric); expired archives are deleted. */
  async runDueJobs(): Promise<{ overdue: number; archivesDeleted: number }> {
    const now = this.now();
    const open = await this.db.selectFrom('privacy_requests').selectAll().where('status', 'in', OPEN).where('overdue_alerted_at', 'is', null).where('due_at', '<', now).limit(1000).execute();
    let overdue = 0;
    for (const r of open) {
      if ((r.extended_due_at ?? r.due_at) >= now) continue;
      const u = await this.db.updateTable('privacy_requests').set({ overdue_alerted_at: now }).where('id', '=', r.id).where('overdue_alerted_at', 'is', null).executeTakeFirst();
      if (Number(u.numUpdatedRows) !== 1) continue;
      overdue++;
      this.stats.overdueAlerts++;
      await this.event(this.db, r, 'overdue', 'system', `the deadline ${new Date(r.extended_due_at ?? r.due_at).toISOString()} passed without an answer`);
      this.opts.onAlert?.(`data-subject request ${r.id} (${r.type}, account ${r.account_id}) is overdue`);
    }
    const del = await this.db.deleteFrom('privacy_archives').where('expires_at', '<=', now).executeTakeFirst();
    return { overdue, archivesDeleted: Number(del.numDeletedRows) };
  }
}

function checkSubject(id: string): void {
  if (!SUBJECT_ID.test(id)) throw new PrivacyError(400, 'InvalidSubject', 'a subject id is 1–128 letters, digits or ._:@-');
}

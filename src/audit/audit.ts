/**
 * The audit service (CTS): appends every request's trace to its account's hash chain before the
 * response leaves, signs digests at an interval, answers queries, clears traces past retention
 * and exports trails for offline verification.
 */
import { generateKeyPairSync, createPrivateKey, sign as signBytes, type KeyObject } from 'node:crypto';
import { randomBytes } from '../crypto/random.js';
import { mkdir, readdir, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { gzip } from 'node:zlib';
import { CompiledQuery, sql, type Kysely } from 'kysely';
import type { SecretBox } from '../crypto/secretbox.js';
import { ServiceError } from '../errors.js';
import { multiRowInsertSql, type Dialect } from '../store/db.js';
import { WorkerWriteGate } from '../store/write-gate.js';
import type { AppendReply, AppendRequest } from './append-worker.js';
import {
  canonicalDigest, DIGEST_FORMAT, genesisHash, KEYS_FORMAT, keyIdOf, MIN_RETENTION_DAYS, RANGE_FORMAT, TRACES_FORMAT, type Digest, type PublicKeyInfo, type StoredTrace,
} from './chain.js';
import { auditHmac, byTrail, chainRows, fromRow, TRACE_COLUMNS } from './rows.js';
import type { AuditTables } from './store.js';
import type { AuditRecorder, RequestTrace } from './trace.js';

const gzipAsync = promisify(gzip);

export const MAX_RETENTION_DAYS = 3650;
const DAY_MS = 86_400_000;
const MAX_BATCH = 400;
/** Trail positions one unindexed query may scan per call. */
const SCAN_WINDOW = 50_000;
const TIME_SLACK = 10_000;
/** Digests whose delivery failed that one later digest delivers before its own (the rest follow with the next). */
const MAX_REDELIVERIES = 100;

/** CTS error codes: CTS.0001 bad marker, CTS.0002 bad retention, CTS.0003 bad query. */
export class AuditError extends ServiceError {
  constructor(status: number, code: string, message: string) {
    super('CTS', status, code, message);
  }
}

export interface AuditOptions {
  dialect: Dialect;
  digestIntervalSeconds: number;
  /** Where each digest and the traces it covers are also written as gzip'd JSON; null for none. */
  exportDir?: string | null;
  now?: () => number;
  onError?: (message: string) => void;
  /** Trail positions one unindexed query may scan per call (default 50,000). */
  scanWindow?: number;
  /**
   * Resolves once committed changes survive a power loss (Store.durable): awaited after a digest is
   * written, so a signed digest (and every trace it covers) is never lost while it may be exported.
   */
  durable?: () => Promise<void>;
  /**
   * SQLite (Store.sqlite): traces are appended by a writer thread on a connection of its own to this
   * file, taking turns with the event loop's connection through the gate. Without it (PostgreSQL, whose
   * work happens in the server anyway) they are appended on the event loop.
   */
  sqlite?: { file: string; gate: SharedArrayBuffer };
}

export interface TraceQuery {
  traceType: 'management' | 'data';
  from: number;
  to: number;
  limit: number;
  next?: string;
  projectId?: string;
  serviceType?: string;
  resourceType?: string;
  resourceId?: string;
  resourceName?: string;
  traceName?: string;
  traceRating?: string;
  user?: string;
  traceId?: string;
}

interface Pending {
  trace: RequestTrace;
  resolve: () => void;
  reject: (e: unknown) => void;
}

type Db = Kysely<AuditTables>;
type Trx = Kysely<AuditTables>;

export class AuditService implements AuditRecorder {
  private queue: Pending[] = [];
  private flushing: Promise<void> | null = null;
  private readonly now: () => number;
  /** False after a failed write until the next one succeeds; the edge then refuses mutations up front. */
  healthy = true;
  readonly stats = { traces: 0, batches: 0, failures: 0 };
  private lastProbe = 0;

  private constructor(
    private readonly db: Db,
    private readonly secrets: SecretBox,
    private readonly hmacKey: Buffer,
    private readonly opts: AuditOptions,
  ) {
    this.now = opts.now ?? Date.now;
  }

  static async open(db: Kysely<object>, secrets: SecretBox, opts: AuditOptions): Promise<AuditService> {
    const adb = db.withTables<AuditTables>();
    const hmacKey = await loadOrCreateSetting(adb, 'audit.hmac-key', () => secrets.seal(randomBytes(32), 'audit-hmac-key'));
    const svc = new AuditService(adb, secrets, secrets.open(hmacKey, 'audit-hmac-key'), opts);
    await svc.ensureSigningKey();
    return svc;
  }

  // ------------------------------------------------------------------ writing

  /**
   * Resolves once the trace is committed. Traces arriving while a batch commits wait for the next
   * batch (group commit), so the database sees one transaction per batch, not per request.
   */
  record(trace: RequestTrace): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ trace, resolve, reject });
      // The writer thread is idle: it can start on this trace now.
      if (this.opts.sqlite && this.inFlight.size === 0 && !this.flushing) return this.handOver();
      // Start the batch on the next turn of the event loop, so the traces of requests finishing
      // together share one transaction.
      this.flushing ??= new Promise<void>((r) => setImmediate(r)).then(() => this.flushLoop());
    });
  }

  /** Whether the edge should let a mutating request run: yes when healthy, or once a second to probe. */
  admitMutation(): boolean {
    if (this.healthy) return true;
    const t = Date.now();
    if (t - this.lastProbe >= 1000) {
      this.lastProbe = t;
      return true;
    }
    return false;
  }

  private async flushLoop(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH);
      if (this.opts.sqlite) this.handOver(batch);
      else await this.settle(batch, this.append(batch.map((b) => b.trace)));
    }
    this.flushing = null;
  }

  /**
   * SQLite: hands the batch (by default, the queue) to the writer thread without waiting for its commit.
   * The thread queues what it is handed while it commits and appends all of it in its next
   * transaction, so the next batch goes as soon as it is formed instead of after this one's commit.
   */
  private handOver(batch = this.queue.splice(0, MAX_BATCH)): void {
    const settled = this.settle(batch, this.appendInWorker(batch.map((b) => b.trace), this.now()));
    this.unsettled.add(settled);
    void settled.finally(() => this.unsettled.delete(settled));
  }

  private readonly unsettled = new Set<Promise<void>>();

  private async settle(batch: Pending[], appended: Promise<void>): Promise<void> {
    try {
      await appended;
      this.healthy = true;
      this.stats.traces += batch.length;
      for (const b of batch) b.resolve();
    } catch (e) {
      this.healthy = false;
      this.lastProbe = Date.now();
      this.stats.failures += batch.length;
      this.opts.onError?.(`audit append failed: ${(e as Error).message}`);
      for (const b of batch) b.reject(e);
    }
  }

  private async append(traces: RequestTrace[]): Promise<void> {
    const recordTime = this.now();
    await this.writeTransaction(async (trx) => {
      for (const [trail, list] of byTrail(traces)) {
        const head = await this.lockHead(trx, trail);
        const { rows, seq, hash } = chainRows(trail, head, list, recordTime, (v) => this.hmac(v));
        // Up to 100 rows a statement, as SQL text (it runs for every request).
        for (let i = 0; i < rows.length; i += 100) {
          const chunk = rows.slice(i, i + 100);
          const params: unknown[] = [];
          for (const r of chunk) for (const c of TRACE_COLUMNS) params.push(r[c]);
          await trx.executeQuery(CompiledQuery.raw(multiRowInsertSql(this.opts.dialect === 'postgres', 'audit_traces', TRACE_COLUMNS, chunk.length), params));
        }
        await sql`update audit_heads set seq = ${seq}, hash = ${hash}, updated_at = ${recordTime} where trail = ${trail}`.execute(trx);
      }
    });
    for (const t of traces) if (this.knownTrails.size < 100_000) this.knownTrails.add(t.accountId ?? '');
    this.stats.batches += 1;
  }

  private worker: Worker | null = null;
  private closed = false;
  private nextBatchId = 1;
  private readonly inFlight = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

  /** Hands the batch to the writer thread (started on first use, again after it failed) and waits for its commit. */
  private appendInWorker(traces: RequestTrace[], recordTime: number): Promise<void> {
    let worker: Worker;
    try {
      if (this.closed) throw new Error('the audit trail is closed');
      worker = this.worker ??= this.startWorker(this.opts.sqlite!);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    const id = this.nextBatchId++;
    return new Promise<void>((resolve, reject) => {
      this.inFlight.set(id, { resolve, reject });
      worker.postMessage({ id, traces, recordTime } satisfies AppendRequest);
    });
  }

  private startWorker(sqlite: { file: string; gate: SharedArrayBuffer }): Worker {
    const worker = new Worker(new URL('./append-worker.js', import.meta.url), { workerData: { file: sqlite.file, gate: sqlite.gate, hmacKey: new Uint8Array(this.hmacKey) } });
    worker.on('message', (m: AppendReply) => {
      if (!m.ids) return;
      if (m.error === undefined) this.stats.batches += 1;
      for (const id of m.ids) {
        const p = this.inFlight.get(id);
        if (!p) continue;
        this.inFlight.delete(id);
        if (m.error === undefined) p.resolve();
        else p.reject(new Error(m.error));
      }
    });
    const failed = (e: Error) => {
      if (this.worker !== worker) return;
      this.worker = null;
      // It may have died holding the gate; the event loop's connection must not wait for it forever.
      WorkerWriteGate.reset(sqlite.gate);
      for (const p of this.inFlight.values()) p.reject(e);
      this.inFlight.clear();
    };
    worker.on('error', failed);
    worker.on('exit', (code) => failed(new Error(`audit writer thread exited with code ${code}`)));
    worker.unref();
    return worker;
  }

  /** Waits for queued traces to commit, then stops the writer thread (shutdown). */
  async close(): Promise<void> {
    await this.drain();
    // After this no writer thread is started again (appendInWorker refuses).
    this.closed = true;
    const worker = this.worker;
    if (!worker) return;
    this.worker = null;
    worker.ref();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      worker.once('exit', () => resolve());
      worker.on('message', (m: { stopped?: boolean }) => {
        if (m.stopped) {
          clearTimeout(timer);
          resolve();
        }
      });
      worker.postMessage({ stop: true });
    });
    await worker.terminate();
    WorkerWriteGate.reset(this.opts.sqlite!.gate);
  }

  /**
   * A write transaction. SQLite takes the write lock at BEGIN IMMEDIATE, so two processes on one file
   * queue on the busy timeout instead of failing when a read lock would have to be upgraded.
   */
  private async writeTransaction<T>(fn: (trx: Trx) => Promise<T>): Promise<T> {
    if (this.opts.dialect === 'postgres') return this.db.transaction().execute(fn);
    return this.db.connection().execute(async (conn) => {
      await sql`begin immediate`.execute(conn);
      try {
        const r = await fn(conn);
        await sql`commit`.execute(conn);
        return r;
      } catch (e) {
        await sql`rollback`.execute(conn).catch(() => undefined);
        throw e;
      }
    });
  }

  /** The chain head, locked for this transaction so concurrent appenders on any node queue behind it. */
  private readonly knownTrails = new Set<string>();

  private async lockHead(trx: Trx, trail: string): Promise<{ seq: number; hash: string }> {
    // A head row, once there, is never removed: it is created (if missing) until a transaction that
    // appended to the trail has committed (append() then marks it known), so a rolled-back
    // transaction that made the row does not leave the trail marked known without one.
    if (!this.knownTrails.has(trail)) await this.insertHead(trx, trail);
    const lock = this.opts.dialect === 'postgres' ? sql` for update` : sql``;
    const { rows } = await sql<{ seq: number | string; hash: string }>`select seq, hash from audit_heads where trail = ${trail}${lock}`.execute(trx);
    if (!rows[0]) {
      this.knownTrails.delete(trail);
      throw new Error(`audit trail head ${trail} missing`);
    }
    return { seq: Number(rows[0].seq), hash: rows[0].hash };
  }

  private async insertHead(trx: Trx, trail: string): Promise<void> {
    await trx.insertInto('audit_heads').values({ trail, seq: 0, hash: genesisHash(trail), updated_at: this.now() }).onConflict((oc) => oc.column('trail').doNothing()).execute();
  }

  /** HMAC-SHA256 under the audit key: lets an auditor find a value's traces without the trail holding the value. */
  hmac(value: string): string {
    return auditHmac(this.hmacKey, value);
  }

  // ------------------------------------------------------------------ keys and digests

  private async ensureSigningKey(): Promise<void> {
    const current = await this.db.selectFrom('settings').select('value').where('name', '=', 'audit.signing-key').executeTakeFirst();
    if (current) return;
    const created = await this.createKey();
    await this.db.insertInto('settings').values({ name: 'audit.signing-key', value: created }).onConflict((oc) => oc.column('name').doNothing()).execute();
    const winner = await this.db.selectFrom('settings').select('value').where('name', '=', 'audit.signing-key').executeTakeFirstOrThrow();
    // Another node won the race: its key signs; ours is never used, so it is not published as active.
    if (winner.value !== created) await this.db.updateTable('audit_keys').set({ status: 'unused' }).where('key_id', '=', created).execute();
  }

  private async createKey(): Promise<string> {
    const { publicKey, privateKey } = generateKeyPairSync('ed25519');
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const keyId = keyIdOf(spki);
    const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'der' });
    await this.db
      .insertInto('audit_keys')
      .values({
        key_id: keyId, algorithm: 'Ed25519', public_key: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
        private_key: this.secrets.seal(pkcs8, `audit-key:${keyId}`), status: 'active', created_at: this.now(), retired_at: null,
      })
      .execute();
    pkcs8.fill(0);
    return keyId;
  }

  /** A new signing key for the digests from now on; earlier digests keep verifying with the old public key. */
  async rotateSigningKey(): Promise<PublicKeyInfo> {
    const keyId = await this.createKey();
    // The switch and the old key's retirement in one transaction: a key is never left out of service
    // without a retirement time, and two rotations at once retire each key once.
    await this.writeTransaction(async (trx) => {
      let q = trx.selectFrom('settings').select('value').where('name', '=', 'audit.signing-key');
      if (this.opts.dialect === 'postgres') q = q.forUpdate();
      const old = await q.executeTakeFirst();
      await trx.updateTable('settings').set({ value: keyId }).where('name', '=', 'audit.signing-key').execute();
      if (old) await trx.updateTable('audit_keys').set({ status: 'retired', retired_at: this.now() }).where('key_id', '=', old.value).where('retired_at', 'is', null).execute();
    });
    return (await this.publicKeys()).find((k) => k.key_id === keyId)!;
  }

  private async signingKey(trx: Trx): Promise<{ keyId: string; key: KeyObject }> {
    const ptr = await trx.selectFrom('settings').select('value').where('name', '=', 'audit.signing-key').executeTakeFirstOrThrow();
    const row = await trx.selectFrom('audit_keys').select(['key_id', 'private_key']).where('key_id', '=', ptr.value).executeTakeFirstOrThrow();
    const der = this.secrets.open(row.private_key, `audit-key:${row.key_id}`);
    const key = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    der.fill(0);
    return { keyId: row.key_id, key };
  }

  /** Every key that ever signed a digest, so any retained digest can be verified. */
  async publicKeys(): Promise<PublicKeyInfo[]> {
    const ptr = await this.db.selectFrom('settings').select('value').where('name', '=', 'audit.signing-key').executeTakeFirst();
    const rows = await this.db.selectFrom('audit_keys').select(['key_id', 'algorithm', 'public_key', 'status', 'created_at', 'retired_at']).orderBy('created_at').orderBy('key_id').execute();
    return rows
      .filter((r) => r.status !== 'unused')
      .map((r) => {
        const active = r.key_id === ptr?.value;
        return {
          key_id: r.key_id, algorithm: 'Ed25519' as const, public_key: r.public_key, status: active ? ('active' as const) : ('retired' as const), created_at: Number(r.created_at),
          retired_at: active || r.retired_at === null ? null : Number(r.retired_at),
        };
      });
  }

  /**
   * Writes a digest for every trail whose last digest is older than the interval (or for all trails
   * with `force`). Any node may call this; the head lock makes exactly one of them write each digest.
   */
  async writeDueDigests(opts: { force?: boolean } = {}): Promise<Digest[]> {
    const trails = await this.db.selectFrom('audit_heads').select('trail').orderBy('trail').execute();
    const written: Digest[] = [];
    for (const { trail } of trails) {
      const d = await this.writeDigest(trail, opts.force ?? false);
      if (d) written.push(d);
    }
    return written;
  }

  private async writeDigest(trail: string, force: boolean): Promise<Digest | null> {
    const digest = await this.writeTransaction(async (trx) => {
      const head = await this.lockHead(trx, trail);
      const last = await trx.selectFrom('audit_digests').selectAll().where('trail', '=', trail).orderBy('digest_seq', 'desc').limit(1).executeTakeFirst();
      const t = this.now();
      const interval = this.opts.digestIntervalSeconds * 1000;
      if (!force) {
        if (last && last.created_at + interval > t) return null;
        if (!last) {
          if (head.seq === 0) return null;
          const first = await trx.selectFrom('audit_traces').select('record_time').where('trail', '=', trail).where('seq', '=', 1).executeTakeFirst();
          if (first && first.record_time + interval > t) return null;
        }
      }
      const startSeq = (last?.end_seq ?? 0) + 1;
      const count = head.seq - startSeq + 1;
      let endRecordTime = last?.end_record_time ?? null;
      if (count > 0) {
        const end = await trx.selectFrom('audit_traces').select('record_time').where('trail', '=', trail).where('seq', '=', head.seq).executeTakeFirstOrThrow();
        endRecordTime = end.record_time;
      }
      const { keyId, key } = await this.signingKey(trx);
      const unsigned: Omit<Digest, 'signature'> = {
        trail, digest_seq: (last?.digest_seq ?? 0) + 1, created_at: t, start_seq: startSeq, end_seq: head.seq, trace_count: Math.max(0, count),
        start_prev_hash: last?.end_hash ?? genesisHash(trail), end_hash: head.hash, end_record_time: endRecordTime,
        prev_signature: last?.signature ?? null, key_id: keyId,
      };
      const d: Digest = { ...unsigned, signature: signBytes(null, canonicalDigest(unsigned), key).toString('base64') };
      await trx.insertInto('audit_digests').values(d).execute();
      return d;
    });
    if (digest) await this.opts.durable?.();
    if (digest && this.opts.exportDir) await this.deliver(this.opts.exportDir, digest);
    return digest;
  }

  /**
   * Delivers the trail's digests up to `upTo` that have not reached the export directory yet, oldest
   * first, with their traces: the one just written, and any whose delivery failed before (retried
   * with each later digest, which is written every interval even when no trace came). Progress is
   * kept per trail in the database, so any node carries on; delivering a digest twice (two nodes at
   * once) writes the same files. A trail never delivered starts at `upTo`.
   */
  private async deliver(dir: string, upTo: Digest): Promise<void> {
    const trail = upTo.trail;
    let current = upTo.digest_seq;
    try {
      const progress = () => this.db.selectFrom('audit_deliveries').select('delivered_seq').where('trail', '=', trail).executeTakeFirst();
      let row = await progress();
      if (!row) {
        await this.db.insertInto('audit_deliveries').values({ trail, delivered_seq: upTo.digest_seq - 1, updated_at: this.now() }).onConflict((oc) => oc.column('trail').doNothing()).execute();
        // Read back: another node may have made the row first (with an earlier digest still to deliver).
        row = await progress();
      }
      let done = Number(row!.delivered_seq);
      const pending = done < upTo.digest_seq - 1 ? await this.digests(trail, done + 1, Math.min(upTo.digest_seq - 1 - done, MAX_REDELIVERIES)) : [];
      for (const d of [...pending, upTo]) {
        if (d.digest_seq <= done) continue;
        if (d.digest_seq !== done + 1) {
          // Past MAX_REDELIVERIES behind, the rest (and this digest) go next time. A hole in the
          // digests themselves (they are never cleared) would stop the export: say so.
          if (pending.length < MAX_REDELIVERIES) this.opts.onError?.(`audit export of trail ${trail} is stopped: digest ${done + 1} is missing from the database`);
          break;
        }
        current = d.digest_seq;
        await this.exportDigestRange(dir, d);
        done = d.digest_seq;
        try {
          await this.db.updateTable('audit_deliveries').set({ delivered_seq: done, updated_at: this.now() }).where('trail', '=', trail).where('delivered_seq', '<', done).execute();
        } catch (e) {
          this.opts.onError?.(`audit export of trail ${trail}: digest ${done} was delivered but its progress not recorded (it is delivered again next time): ${(e as Error).message}`);
          return;
        }
      }
    } catch (e) {
      this.opts.onError?.(`audit export of digest ${current} of trail ${trail} failed (retried with the trail's next digest): ${(e as Error).message}`);
    }
  }

  // ------------------------------------------------------------------ query

  async digests(trail: string, fromSeq: number, limit: number): Promise<Digest[]> {
    const rows = await this.db.selectFrom('audit_digests').selectAll().where('trail', '=', trail).where('digest_seq', '>=', fromSeq).orderBy('digest_seq').limit(limit).execute();
    return rows.map((r) => ({ ...r, digest_seq: Number(r.digest_seq), created_at: Number(r.created_at), start_seq: Number(r.start_seq), end_seq: Number(r.end_seq), trace_count: Number(r.trace_count), end_record_time: r.end_record_time === null ? null : Number(r.end_record_time) }));
  }

  /**
   * Newest first. A filter with its own index (resource, user, action, trace id) walks that index. Any
   * other query scans at most SCAN_WINDOW positions of the trail per call, bounded by the time range
   * (found through the time index): when the window is used up before the page is full, the page
   * comes back short with a marker to continue from, so no request scans a whole large trail.
   */
  async search(trail: string, q: TraceQuery): Promise<{ traces: StoredTrace[]; marker: string | null }> {
    let qb = this.db
      .selectFrom('audit_traces')
      .selectAll()
      .where('trail', '=', trail)
      .where('trace_type', '=', q.traceType)
      .where('time', '>=', q.from)
      .where('time', '<=', q.to);
    let upper = Number.POSITIVE_INFINITY;
    if (q.next !== undefined) {
      const m = await this.db.selectFrom('audit_traces').select('seq').where('trail', '=', trail).where('trace_id', '=', q.next).executeTakeFirst();
      if (!m) throw new AuditError(400, 'CTS.0001', 'the next marker does not name a trace of this account');
      upper = Number(m.seq);
      qb = qb.where('seq', '<', upper);
    }
    const selective = Boolean(q.resourceId || q.user || q.traceName || q.traceId);
    let lower: number | null = null;
    let floor = 0;
    if (!selective) {
      // Positions bracketing the time range; the slack covers nodes whose clocks disagree a little.
      const atTo = await this.db.selectFrom('audit_traces').select('seq').where('trail', '=', trail).where('time', '<=', q.to).orderBy('time', 'desc').limit(1).executeTakeFirst();
      const atFrom = await this.db.selectFrom('audit_traces').select('seq').where('trail', '=', trail).where('time', '>=', q.from).orderBy('time', 'asc').limit(1).executeTakeFirst();
      const head = await this.db.selectFrom('audit_heads').select('seq').where('trail', '=', trail).executeTakeFirst();
      if (!atTo || !atFrom) return { traces: [], marker: null };
      const top = Math.min(upper, Number(atTo.seq) + TIME_SLACK + 1, head ? Number(head.seq) + 1 : Number.POSITIVE_INFINITY);
      floor = Math.max(0, Number(atFrom.seq) - TIME_SLACK - 1);
      lower = Math.max(floor, top - 1 - (this.opts.scanWindow ?? SCAN_WINDOW));
      qb = qb.where('seq', '<', top).where('seq', '>', lower);
    }
    if (q.projectId) qb = qb.where((eb) => eb.or([eb('project_id', '=', q.projectId!), eb('project_id', 'is', null)]));
    if (q.serviceType) qb = qb.where('service_type', '=', q.serviceType);
    if (q.resourceType) qb = qb.where('resource_type', '=', q.resourceType);
    if (q.resourceId) qb = qb.where('resource_id', '=', q.resourceId);
    if (q.resourceName) qb = qb.where('resource_name', '=', q.resourceName);
    if (q.traceName) qb = qb.where('trace_name', '=', q.traceName);
    if (q.traceRating) qb = qb.where('trace_rating', '=', q.traceRating);
    if (q.user) qb = qb.where('user_name', '=', q.user);
    if (q.traceId) qb = qb.where('trace_id', '=', q.traceId);
    const rows = await qb.orderBy('seq', 'desc').limit(q.limit + 1).execute();
    const traces = rows.slice(0, q.limit).map(fromRow);
    if (rows.length > q.limit) return { traces, marker: traces[traces.length - 1]!.trace_id };
    if (lower !== null && lower > floor) {
      // The window is used up: continue below its lowest trace.
      const edge = await this.db.selectFrom('audit_traces').select('trace_id').where('trail', '=', trail).where('seq', '>', lower).orderBy('seq', 'asc').limit(1).executeTakeFirst();
      return { traces, marker: edge?.trace_id ?? null };
    }
    return { traces, marker: null };
  }

  // ------------------------------------------------------------------ retention

  async retentionDays(accountId: string): Promise<number> {
    const row = await this.db.selectFrom('audit_settings').select('retention_days').where('trail', '=', accountId).executeTakeFirst();
    return row?.retention_days ?? MIN_RETENTION_DAYS;
  }

  async setRetentionDays(accountId: string, days: number): Promise<void> {
    if (!Number.isInteger(days) || days < MIN_RETENTION_DAYS || days > MAX_RETENTION_DAYS) {
      throw new AuditError(400, 'CTS.0002', `retention must be between ${MIN_RETENTION_DAYS} and ${MAX_RETENTION_DAYS} days`);
    }
    await this.db
      .insertInto('audit_settings')
      .values({ trail: accountId, retention_days: days, cleared_through_seq: 0, updated_at: this.now() })
      .onConflict((oc) => oc.column('trail').doUpdateSet({ retention_days: days, updated_at: this.now() }))
      .execute();
  }

  /**
   * Removes traces older than each trail's retention, whole digest ranges at a time, so what remains
   * starts at a digest boundary and still verifies. Digests are kept.
   */
  async clearExpired(): Promise<{ trail: string; removed: number; throughSeq: number }[]> {
    const out: { trail: string; removed: number; throughSeq: number }[] = [];
    const trails = await this.db.selectFrom('audit_heads').select('trail').execute();
    for (const { trail } of trails) {
      const settings = await this.db.selectFrom('audit_settings').selectAll().where('trail', '=', trail).executeTakeFirst();
      const cutoff = this.now() - (settings?.retention_days ?? MIN_RETENTION_DAYS) * DAY_MS;
      const d = await this.db
        .selectFrom('audit_digests')
        .select(['end_seq'])
        .where('trail', '=', trail)
        .where('trace_count', '>', 0)
        .where('end_record_time', '<', cutoff)
        .orderBy('digest_seq', 'desc')
        .limit(1)
        .executeTakeFirst();
      const through = settings?.cleared_through_seq ?? 0;
      if (!d || d.end_seq <= through) continue;
      const r = await this.db.deleteFrom('audit_traces').where('trail', '=', trail).where('seq', '<=', d.end_seq).executeTakeFirst();
      await this.db
        .insertInto('audit_settings')
        .values({ trail, retention_days: settings?.retention_days ?? MIN_RETENTION_DAYS, cleared_through_seq: d.end_seq, updated_at: this.now() })
        .onConflict((oc) => oc.column('trail').doUpdateSet({ cleared_through_seq: d.end_seq, updated_at: this.now() }))
        .execute();
      out.push({ trail, removed: Number(r.numDeletedRows), throughSeq: d.end_seq });
    }
    return out;
  }

  // ------------------------------------------------------------------ export

  async trails(): Promise<string[]> {
    return (await this.db.selectFrom('audit_heads').select('trail').orderBy('trail').execute()).map((r) => r.trail);
  }

  /**
   * Writes trails to `dir` as gzip'd JSON that `custos audit verify` checks offline: the public keys,
   * every digest of each trail, and the retained traces (optionally from the digest range holding `from`).
   */
  async exportTo(dir: string, opts: { trails?: string[]; from?: number; onProgress?: (msg: string) => void } = {}): Promise<{ trail: string; traces: number; digests: number }[]> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await writeAtomic(path.join(dir, 'public-keys.json'), Buffer.from(JSON.stringify({ format: KEYS_FORMAT, keys: await this.publicKeys() }, null, 2)));
    const summary: { trail: string; traces: number; digests: number }[] = [];
    for (const trail of opts.trails ?? (await this.trails())) {
      const tdir = path.join(dir, trailDirName(trail));
      await mkdir(tdir, { recursive: true, mode: 0o700 });
      const digests = (await this.db.selectFrom('audit_digests').selectAll().where('trail', '=', trail).orderBy('digest_seq').execute()) as Digest[];
      await writeAtomic(path.join(tdir, 'digests.json.gz'), await gzipAsync(JSON.stringify({ format: DIGEST_FORMAT, digests })));
      let fromSeq = 1;
      if (opts.from !== undefined) {
        // Start at the digest boundary at or before `from`, so the exported range is anchored.
        const before = digests.filter((d) => d.end_record_time !== null && d.end_record_time < opts.from!).pop();
        fromSeq = before ? before.end_seq + 1 : 1;
      }
      // Where this export means to start: the verifier tells traces left out on purpose from removed ones.
      await writeRange(tdir, trail, fromSeq);
      let count = 0;
      let cursor = fromSeq - 1;
      for (;;) {
        const rows = await this.db.selectFrom('audit_traces').selectAll().where('trail', '=', trail).where('seq', '>', cursor).orderBy('seq').limit(10_000).execute();
        if (rows.length === 0) break;
        const traces = rows.map(fromRow);
        const first = traces[0]!.seq;
        const last = traces[traces.length - 1]!.seq;
        await writeAtomic(path.join(tdir, `traces-${pad(first)}-${pad(last)}.json.gz`), await gzipAsync(JSON.stringify({ format: TRACES_FORMAT, trail, traces })));
        count += traces.length;
        cursor = last;
        opts.onProgress?.(`${trailDirName(trail)}: ${count} traces exported`);
      }
      summary.push({ trail, traces: count, digests: digests.length });
    }
    return summary;
  }

  private async exportDigestRange(dir: string, d: Digest): Promise<void> {
    const tdir = path.join(dir, trailDirName(d.trail));
    await mkdir(tdir, { recursive: true, mode: 0o700 });
    if (d.trace_count > 0) {
      const rows = await this.db.selectFrom('audit_traces').selectAll().where('trail', '=', d.trail).where('seq', '>=', d.start_seq).where('seq', '<=', d.end_seq).orderBy('seq').execute();
      await writeAtomic(path.join(tdir, `traces-${pad(d.start_seq)}-${pad(d.end_seq)}.json.gz`), await gzipAsync(JSON.stringify({ format: TRACES_FORMAT, trail: d.trail, traces: rows.map(fromRow) })));
    }
    await writeAtomic(path.join(tdir, `digest-${pad(d.digest_seq)}.json.gz`), await gzipAsync(JSON.stringify({ format: DIGEST_FORMAT, digests: [d] })));
    await writeAtomic(path.join(dir, 'public-keys.json'), Buffer.from(JSON.stringify({ format: KEYS_FORMAT, keys: await this.publicKeys() }, null, 2)));
    if (!(await fileExists(path.join(tdir, RANGE_FILE)))) {
      // No range yet (a new directory, one filled before ranges existed, or a delivery cut short): the
      // digest chain must be whole (the verifier refuses one not starting at 1), so the earlier digests
      // come along; the traces start at the earliest delivered here. Written last, and never moved on.
      if (d.digest_seq > 1) {
        const earlier = (await this.db.selectFrom('audit_digests').selectAll().where('trail', '=', d.trail).where('digest_seq', '<', d.digest_seq).orderBy('digest_seq').execute()) as Digest[];
        await writeAtomic(path.join(tdir, `digests-before-${pad(d.digest_seq)}.json.gz`), await gzipAsync(JSON.stringify({ format: DIGEST_FORMAT, digests: earlier })));
      }
      let from = d.start_seq;
      for (const f of await readdir(tdir)) {
        const m = /^traces-(\d+)-\d+\.json\.gz$/.exec(f);
        if (m) from = Math.min(from, Number(m[1]));
      }
      await writeRange(tdir, d.trail, from);
    }
  }

  /** Waits for queued traces to commit (shutdown). */
  async drain(): Promise<void> {
    while (this.flushing || this.unsettled.size > 0) {
      if (this.flushing) await this.flushing;
      await Promise.all(this.unsettled);
    }
  }
}

function pad(n: number): string {
  return String(n).padStart(12, '0');
}
export function trailDirName(trail: string): string {
  return trail === '' ? 'platform' : trail;
}

const RANGE_FILE = 'range.json';

/** Where a trail's export starts (RANGE_FORMAT), read by the offline verifier. */
async function writeRange(tdir: string, trail: string, fromSeq: number): Promise<void> {
  await writeAtomic(path.join(tdir, RANGE_FILE), Buffer.from(JSON.stringify({ format: RANGE_FORMAT, trail, from_seq: fromSeq })));
}

async function fileExists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

async function writeAtomic(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, data, { mode: 0o600 });
  await rename(tmp, file);
}

async function loadOrCreateSetting(db: Db, name: string, create: () => string): Promise<string> {
  const row = await db.selectFrom('settings').select('value').where('name', '=', name).executeTakeFirst();
  if (row) return row.value;
  await db.insertInto('settings').values({ name, value: create() }).onConflict((oc) => oc.column('name').doNothing()).execute();
  return (await db.selectFrom('settings').select('value').where('name', '=', name).executeTakeFirstOrThrow()).value;
}

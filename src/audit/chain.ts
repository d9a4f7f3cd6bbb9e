/**
 * The audit trail's tamper evidence, as pure functions shared by the service that writes the
 * trail and the offline verifier (`custos audit verify`), which has nothing but exported files
 * and the public keys.
 *
 * Each trail is a hash chain: hash(n) = SHA-256(hash(n-1) ‖ canonical(trace n)). At an interval a
 * digest covering the traces since the previous digest is signed with Ed25519; each digest holds
 * the previous digest's signature, so digests form a chain of their own (CloudTrail's digest-file
 * pattern). Retention removes whole digest ranges of traces; the digests stay, so what remains
 * still links to a signed digest.
 */
import { createHash, createPublicKey, hash as oneShotHash, verify as verifySig } from 'node:crypto';

export const TRACES_FORMAT = 'custos-audit-traces/1';
export const DIGEST_FORMAT = 'custos-audit-digest/1';
export const KEYS_FORMAT = 'custos-audit-public-keys/1';
/** Per trail in an export: the first position the export meant to hold (`--from` starts later than 1). */
export const RANGE_FORMAT = 'custos-audit-range/1';

/** The shortest retention a trail can have: retention never clears traces younger than this. */
export const MIN_RETENTION_DAYS = 180;
const DAY_MS = 86_400_000;

export interface VerifyOptions {
  /** The verifier's clock (ms): traces missing from a trail's start must be older than the shortest retention. */
  now?: number;
  /** Per trail, the first position the export meant to hold (RANGE_FORMAT files); 1 when not given. */
  exportedFrom?: Record<string, number>;
  /**
   * How long traces may span with no digest covering them (default 48 h, twice the longest digest
   * interval; digests are written every interval while a node runs): a longer unsigned stretch means
   * digests were removed.
   */
  maxUnsignedMs?: number;
}

export const DEFAULT_MAX_UNSIGNED_MS = 48 * 3_600_000;

function hours(ms: number): string {
  const h = ms / 3_600_000;
  return h >= 10 ? h.toFixed(0) : h.toFixed(2).replace(/\.?0+$/, '');
}

/** A trace as stored and exported. `trail` is the owning account's id, '' for unattributed requests. */
export interface StoredTrace {
  trail: string;
  seq: number;
  trace_id: string;
  time: number;
  record_time: number;
  trace_name: string;
  trace_type: 'management' | 'data';
  trace_rating: 'normal' | 'warning' | 'incident';
  service_type: string;
  resource_type: string | null;
  resource_id: string | null;
  resource_name: string | null;
  project_id: string | null;
  region: string | null;
  user: TraceUser;
  source_ip: string;
  user_agent: string | null;
  request_id: string;
  http_method: string;
  api_path: string;
  code: number;
  error_code: string | null;
  /** HMAC-SHA256 of values that must be correlatable but never stored, e.g. an attempted user name. */
  correlation: Record<string, string> | null;
  /** Names of what a data operation touched (record, properties, purpose); absent on older traces. */
  detail?: Record<string, string> | null;
  prev_hash: string;
  hash: string;
}

export interface TraceUser {
  account_id: string | null;
  account_name: string | null;
  user_id: string | null;
  user_name: string | null;
  access_key_id: string | null;
  agency: { id: string; name: string; source_account_id: string; source_account_name: string } | null;
  auth_method: 'token' | 'aksk' | 'none';
}

export interface Digest {
  trail: string;
  digest_seq: number;
  created_at: number;
  /** First trace covered; when the digest covers no trace, end_seq = start_seq - 1. */
  start_seq: number;
  end_seq: number;
  trace_count: number;
  /** The chain hash just before start_seq, linking this digest's traces to the previous ones. */
  start_prev_hash: string;
  end_hash: string;
  end_record_time: number | null;
  prev_signature: string | null;
  key_id: string;
  signature: string;
}

export interface PublicKeyInfo {
  key_id: string;
  algorithm: 'Ed25519';
  /** SPKI, PEM. */
  public_key: string;
  status: 'active' | 'retired';
  created_at: number;
  /**
   * When the key stopped signing (null while active). A digest it signed later, or one covering
   * traces recorded later, is refused. Absent in key files exported before it existed: not checked.
   */
  retired_at?: number | null;
}

/** Clock disagreement between nodes tolerated when a retired key's digest is compared with its traces' times. */
export const RETIRED_KEY_SLACK_MS = 5 * 60_000;

export function genesisHash(trail: string): string {
  return createHash('sha256').update(`custos-audit-genesis:${trail}`).digest('hex');
}

/** Every field but the hashes, in a fixed order, so the hash does not depend on JSON key order. */
export function canonicalTrace(t: Omit<StoredTrace, 'prev_hash' | 'hash'>): string {
  const u = t.user;
  return JSON.stringify([
    1, t.trail, t.seq, t.trace_id, t.time, t.record_time, t.trace_name, t.trace_type, t.trace_rating, t.service_type,
    t.resource_type, t.resource_id, t.resource_name, t.project_id, t.region,
    [u.account_id, u.account_name, u.user_id, u.user_name, u.access_key_id, u.agency ? [u.agency.id, u.agency.name, u.agency.source_account_id, u.agency.source_account_name] : null, u.auth_method],
    t.source_ip, t.user_agent, t.request_id, t.http_method, t.api_path, t.code, t.error_code,
    t.correlation ? Object.keys(t.correlation).sort().map((k) => [k, t.correlation![k]]) : null,
    // Appended only when present, so traces written before the field existed keep their hashes.
    ...(t.detail ? [Object.keys(t.detail).sort().map((k) => [k, t.detail![k]])] : []),
  ]);
}

export function traceHash(prevHash: string, t: Omit<StoredTrace, 'prev_hash' | 'hash'>): string {
  return oneShotHash('sha256', `${prevHash}\n${canonicalTrace(t)}`, 'hex');
}

/** The bytes a digest's signature covers. */
export function canonicalDigest(d: Omit<Digest, 'signature'>): Buffer {
  return Buffer.from(
    JSON.stringify([1, d.trail, d.digest_seq, d.created_at, d.start_seq, d.end_seq, d.trace_count, d.start_prev_hash, d.end_hash, d.end_record_time, d.prev_signature, d.key_id]),
  );
}

export function keyIdOf(spkiDer: Buffer): string {
  return createHash('sha256').update(spkiDer).digest('hex').slice(0, 32);
}

export interface TraceProblem {
  kind: 'missing' | 'altered' | 'reordered' | 'inserted' | 'unanchored' | 'unsigned';
  trail: string;
  seq: number;
  trace_id: string | null;
  message: string;
}
export interface DigestProblem {
  kind: 'bad-signature' | 'unknown-key' | 'retired-key' | 'missing-digest' | 'broken-link' | 'mismatch';
  trail: string;
  digest_seq: number;
  message: string;
}
export interface TrailReport {
  trail: string;
  traces: number;
  digests: number;
  /** Traces after the newest digest: chained, but not yet covered by a signature. */
  unsigned_tail: number;
  /**
   * The first position this report vouches for: 1, or where the export says it starts (its range.json,
   * which the export's maker can change: an auditor expecting the whole trail checks this is 1).
   */
  verified_from: number;
  first_trace_problem: TraceProblem | null;
  first_digest_problem: DigestProblem | null;
}
export interface VerifyReport {
  ok: boolean;
  trails: TrailReport[];
}

/**
 * Verifies traces and digests, each trail on its own. Traces are checked in the order given
 * (the order they were exported in), so a moved trace shows as reordered.
 */
/**
 * What verification needs of a trace once its content has been checked against its hash (which a
 * worker thread can do, see verify-parallel.ts): its position, its links, and whether it was intact.
 */
export interface TraceLink {
  trail: string;
  seq: number;
  trace_id: string;
  /** When the trail recorded it (covered by its hash): a digest's end_record_time must match it. */
  record_time: number;
  prev_hash: string;
  hash: string;
  intact: boolean;
}

export function toLink(t: StoredTrace): TraceLink {
  return { trail: t.trail, seq: t.seq, trace_id: t.trace_id, record_time: t.record_time, prev_hash: t.prev_hash, hash: t.hash, intact: traceHash(t.prev_hash, t) === t.hash };
}

export function verifyTrail(traces: (StoredTrace | TraceLink)[], digests: Digest[], keys: PublicKeyInfo[], onProgress?: (done: number) => void, opts: VerifyOptions = {}): VerifyReport {
  const now = opts.now ?? Date.now();
  const trails = new Set<string>([...traces.map((t) => t.trail), ...digests.map((d) => d.trail)]);
  const keyObjects = new Map(keys.map((k) => [k.key_id, createPublicKey(k.public_key)]));
  const retiredAt = new Map(keys.filter((k) => typeof k.retired_at === 'number').map((k) => [k.key_id, k.retired_at as number]));
  const createdAt = new Map(keys.map((k) => [k.key_id, k.created_at]));
  const reports: TrailReport[] = [];
  let done = 0;
  for (const trail of [...trails].sort()) {
    const ts = traces.filter((t) => t.trail === trail);
    const ds = digests.filter((d) => d.trail === trail).sort((a, b) => a.digest_seq - b.digest_seq);
    const from = Math.max(1, Math.floor(opts.exportedFrom?.[trail] ?? 1));
    const report: TrailReport = { trail, traces: ts.length, digests: ds.length, unsigned_tail: 0, verified_from: from, first_trace_problem: null, first_digest_problem: null };
    const digestProblem = (p: DigestProblem) => (report.first_digest_problem ??= p);
    const traceProblem = (p: TraceProblem) => (report.first_trace_problem ??= p);

    // 1. The digests: each signed by a published key, numbered without gaps, each holding its predecessor's signature.
    for (let i = 0; i < ds.length; i++) {
      const d = ds[i]!;
      const key = keyObjects.get(d.key_id);
      const { signature, ...unsigned } = d;
      if (!key) digestProblem({ kind: 'unknown-key', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} is signed with key ${d.key_id}, which is not among the public keys` });
      else if (!verifySig(null, canonicalDigest(unsigned), key, Buffer.from(signature, 'base64'))) {
        digestProblem({ kind: 'bad-signature', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq}'s signature does not verify: the digest was altered` });
      } else {
        // A retired key vouches for nothing newer than its retirement: not a digest made after it, nor
        // one covering traces recorded after it (the covered traces' own times are checked in step 3),
        // nor one that follows a digest signed by a newer key. Times allow for clocks that disagree.
        const retired = retiredAt.get(d.key_id);
        const newerBefore = retired !== undefined && ds.slice(0, i).some((e) => e.key_id !== d.key_id && (createdAt.get(e.key_id) ?? 0) > (createdAt.get(d.key_id) ?? 0));
        if (retired !== undefined && (newerBefore || d.created_at > retired + RETIRED_KEY_SLACK_MS || (d.end_record_time !== null && d.end_record_time > retired + RETIRED_KEY_SLACK_MS))) {
          digestProblem({ kind: 'retired-key', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} is signed with key ${d.key_id}, retired at ${new Date(retired).toISOString()}, but made, or covering traces, after that` });
        }
      }
      const prev = ds[i - 1];
      if (prev) {
        if (d.digest_seq !== prev.digest_seq + 1) digestProblem({ kind: 'missing-digest', trail, digest_seq: prev.digest_seq + 1, message: `digest ${prev.digest_seq + 1} is missing` });
        else if (d.prev_signature !== prev.signature || d.start_seq !== prev.end_seq + 1 || d.start_prev_hash !== prev.end_hash) {
          digestProblem({ kind: 'broken-link', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} does not continue digest ${prev.digest_seq}` });
        }
      } else if (d.digest_seq === 1 && (d.prev_signature !== null || d.start_seq !== 1 || d.start_prev_hash !== genesisHash(trail))) {
        digestProblem({ kind: 'broken-link', trail, digest_seq: 1, message: 'the first digest does not start the trail' });
      }
    }

    // Every export holds all of a trail's digests (they are never cleared), so the chain starts at 1:
    // without this, removing the oldest digests with their traces would leave a trail that verifies.
    if (ds.length > 0 && ds[0]!.digest_seq !== 1) {
      const k = ds[0]!.digest_seq;
      digestProblem({ kind: 'missing-digest', trail, digest_seq: 1, message: `digest${k > 2 ? `s 1..${k - 1} are` : ' 1 is'} missing: the trail's first digests were removed` });
    }

    // 2. The traces: contiguous, each hashing to its stored hash and linking to the one before.
    const anchors = new Map<number, string>(); // seq -> the hash the trace at seq must carry as prev_hash
    anchors.set(1, genesisHash(trail));
    for (const d of ds) {
      anchors.set(d.start_seq, d.start_prev_hash);
      // An export may also start just after the newest digest (--from later than it).
      anchors.set(d.end_seq + 1, d.end_hash);
    }
    const present = new Set(ts.map((t) => t.seq));
    let prev: StoredTrace | TraceLink | null = null;
    for (const t of ts) {
      done++;
      if (onProgress && done % 10_000 === 0) onProgress(done);
      const { prev_hash } = t;
      const intact = 'intact' in t ? t.intact : traceHash(prev_hash, t) === t.hash;
      if (!intact) {
        traceProblem({ kind: 'altered', trail, seq: t.seq, trace_id: t.trace_id, message: `trace ${t.seq} (${t.trace_id}) was altered: its content does not match its hash` });
      }
      if (prev) {
        if (t.seq <= prev.seq) {
          traceProblem({ kind: t.seq === prev.seq ? 'inserted' : 'reordered', trail, seq: t.seq, trace_id: t.trace_id, message: t.seq === prev.seq ? `a second trace claims position ${t.seq} (${t.trace_id}): inserted` : `trace ${t.seq} (${t.trace_id}) comes after trace ${prev.seq}: reordered` });
        } else if (t.seq > prev.seq + 1 && present.has(prev.seq + 1)) {
          traceProblem({ kind: 'reordered', trail, seq: t.seq, trace_id: t.trace_id, message: `trace ${t.seq} (${t.trace_id}) comes before trace ${prev.seq + 1}: reordered` });
        } else if (t.seq > prev.seq + 1) {
          traceProblem({ kind: 'missing', trail, seq: prev.seq + 1, trace_id: null, message: `trace ${prev.seq + 1}${t.seq > prev.seq + 2 ? `..${t.seq - 1}` : ''} is missing` });
        } else if (prev_hash !== prev.hash) {
          traceProblem({ kind: 'inserted', trail, seq: t.seq, trace_id: t.trace_id, message: `trace ${t.seq} (${t.trace_id}) does not link to trace ${prev.seq}: a trace was inserted or replaced` });
        }
      } else {
        const anchor = anchors.get(t.seq);
        if (anchor === undefined) {
          traceProblem({ kind: 'unanchored', trail, seq: t.seq, trace_id: t.trace_id, message: `the range starts at trace ${t.seq}, which no digest starts at; export from a digest boundary` });
        } else if (anchor !== prev_hash) {
          traceProblem({ kind: 'inserted', trail, seq: t.seq, trace_id: t.trace_id, message: `trace ${t.seq} (${t.trace_id}) does not link to the signed digest before it` });
        }
      }
      prev = t;
    }

    // 3. Each digest whose range the export holds must match the traces: the right count and end hash.
    const first = ts.reduce((m, t) => Math.min(m, t.seq), Number.POSITIVE_INFINITY);
    if (ts.length > 0) {
      const bySeq = new Map(ts.map((t) => [t.seq, t]));
      const last = ts.reduce((m, t) => Math.max(m, t.seq), 0);
      for (const d of ds) {
        const before = bySeq.get(d.start_seq - 1);
        if (before && before.hash !== d.start_prev_hash) {
          digestProblem({ kind: 'mismatch', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} does not follow trace ${d.start_seq - 1}: the traces before it were changed` });
        }
        if (d.end_seq < first || d.trace_count === 0) continue;
        const end = bySeq.get(d.end_seq);
        if (d.end_seq > last || !end) {
          traceProblem({ kind: 'missing', trail, seq: Math.min(d.end_seq, last + 1), trace_id: null, message: `digest ${d.digest_seq} covers traces up to ${d.end_seq}, but trace ${Math.min(d.end_seq, last + 1)} is missing` });
        } else if (end.hash !== d.end_hash) {
          digestProblem({ kind: 'mismatch', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} does not match trace ${d.end_seq}: the traces it covers were changed` });
        } else if (d.end_record_time !== null && end.record_time !== d.end_record_time) {
          digestProblem({ kind: 'mismatch', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} states another time for trace ${d.end_seq} than the trace holds` });
        } else if (retiredAt.has(d.key_id) && end.record_time > retiredAt.get(d.key_id)! + RETIRED_KEY_SLACK_MS) {
          digestProblem({ kind: 'retired-key', trail, digest_seq: d.digest_seq, message: `digest ${d.digest_seq} is signed with key ${d.key_id}, retired before trace ${d.end_seq} was recorded` });
        }
      }
      const lastDigestEnd = ds.length ? ds[ds.length - 1]!.end_seq : 0;
      const unsigned = ts.filter((t) => t.seq > lastDigestEnd);
      report.unsigned_tail = unsigned.length;
      // Digests are written every interval while a node runs: traces spanning much longer with none
      // covering them (a trail with no digest at all, re-chained from genesis) had their digests removed.
      if (unsigned.length > 1) {
        let lo = Number.POSITIVE_INFINITY;
        let hi = Number.NEGATIVE_INFINITY;
        for (const t of unsigned) {
          if (t.record_time < lo) lo = t.record_time;
          if (t.record_time > hi) hi = t.record_time;
        }
        const span = hi - lo;
        const limit = opts.maxUnsignedMs ?? DEFAULT_MAX_UNSIGNED_MS;
        if (span > limit) {
          traceProblem({
            kind: 'unsigned', trail, seq: unsigned[0]!.seq, trace_id: unsigned[0]!.trace_id,
            message: `traces ${unsigned[0]!.seq}.. span ${hours(span)} hours with no digest covering them (more than ${hours(limit)}): digests were removed, or no node ran to write them (custos audit digest writes those due)`,
          });
        }
      }
    }

    // 4. Traces missing before the first one held (all of them, when none is) were cleared by retention
    // only if whole digest ranges went, each ending more than the shortest retention ago; anything
    // younger, or never signed, was removed by someone else.
    const firstHeld = ts.length ? first : ds.length ? ds[ds.length - 1]!.end_seq + 1 : 1;
    if (firstHeld > from) {
      const oldest = now - MIN_RETENTION_DAYS * DAY_MS;
      const covering = ds.filter((d) => d.trace_count > 0 && d.end_seq >= from && d.start_seq < firstHeld);
      const signedThrough = covering.reduce((m, d) => Math.max(m, d.end_seq), from - 1);
      const young = covering.find((d) => d.end_record_time === null || d.end_record_time > oldest);
      if (young || signedThrough < firstHeld - 1) {
        const range = firstHeld - 1 > from ? `traces ${from}..${firstHeld - 1} are` : `trace ${from} is`;
        traceProblem({
          kind: 'missing', trail, seq: from, trace_id: null,
          message: young
            ? `${range} missing, though digest ${young.digest_seq} covering them ends less than ${MIN_RETENTION_DAYS} days (the shortest retention) ago: they were removed, not cleared`
            : `${range} missing, and no digest covers them all: they were removed, not cleared`,
        });
      }
    }
    reports.push(report);
  }
  return { ok: reports.every((r) => !r.first_trace_problem && !r.first_digest_problem), trails: reports };
}

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Kysely } from 'kysely';

/**
 * Per-node cache of what authenticating and authorizing a request reads: token rows, access keys
 * with their unsealed secrets, principals, users looked up as targets, and the parsed policy sets in
 * force for a principal in a project (with the decisions taken with a set that has no conditions).
 *
 * Correctness rules, because a stale answer here is a security bug:
 * - Every IAM mutation on this node clears the cache when it completes (IamService wraps its
 *   mutating methods), and while one is in flight nothing new is cached, so a read racing an
 *   uncommitted write cannot be kept. A load that started before an invalidation is not kept either.
 * - Every mutation also rewrites a shared epoch row in the database before it returns. A cached entry
 *   is served only while this node has read that row within `maxStalenessMs` (default 1 s): the first
 *   request after that reads it again (one query, shared by the requests waiting for it) and the
 *   cache is emptied when it changed or could not be read. The server also polls it every 500 ms, so
 *   requests rarely wait. A change made on another node is therefore honoured by every request that
 *   starts more than `maxStalenessMs` after the mutating call returned there, whatever the timers do.
 * - Entries also expire `ttlMs` (30 s) after they were loaded, the bound that remains if a node
 *   cannot write the epoch row after a mutation (it keeps retrying for that long).
 * - Expiry times (tokens, temporary keys, agencies) are checked against the service clock on every
 *   use, never cached away. Cache times use a monotonic clock, not the (injectable) service clock.
 * - Memory is bounded: at most `maxEntries` per space, least recently used dropped first.
 * - Keys never hold a secret: tokens are keyed by their SHA-256, access keys by their public id.
 */
export interface IamCacheOptions {
  /** Entries per space (tokens, access keys, principals, users, policy sets). */
  maxEntries: number;
  /** An entry is reloaded this long after it was loaded, whatever the epoch says. */
  ttlMs: number;
  /** Entries are served only while the shared epoch was read at most this long ago. */
  maxStalenessMs: number;
  /** Monotonic milliseconds. */
  clock: () => number;
}

/** The bound on how long another node's IAM change may go unseen here (see above). */
export const IAM_MAX_STALENESS_MS = 1_000;

export const DEFAULT_IAM_CACHE: IamCacheOptions = {
  maxEntries: 10_000,
  ttlMs: 30_000,
  maxStalenessMs: IAM_MAX_STALENESS_MS,
  clock: () => performance.now(),
};

export interface IamCacheStats {
  hits: number;
  misses: number;
  /** Times the whole cache was emptied (mutations, epoch changes, unreadable epoch). */
  invalidations: number;
  epochReads: number;
  epochReadFailures: number;
}

interface Entry<T> {
  value: T;
  loadedAt: number;
}

export class IamCache {
  readonly opts: IamCacheOptions;
  readonly stats: IamCacheStats = { hits: 0, misses: 0, invalidations: 0, epochReads: 0, epochReadFailures: 0 };
  private generation = 0;
  private inFlight = 0;
  private readonly spaces: CacheSpace<unknown>[] = [];
  /** The epoch this node last read or wrote; undefined before the first read. */
  private epoch: string | null | undefined = undefined;
  /** When the last successful epoch read started (monotonic ms). */
  private confirmedAt = Number.NEGATIVE_INFINITY;
  private polling: Promise<void> | null = null;

  constructor(
    private readonly readEpoch: () => Promise<string | null>,
    opts: Partial<IamCacheOptions> = {},
  ) {
    this.opts = { ...DEFAULT_IAM_CACHE, ...opts };
  }

  space<T>(name: string): CacheSpace<T> {
    const s = new CacheSpace<T>(this, name);
    this.spaces.push(s as CacheSpace<unknown>);
    return s;
  }

  /** True while cached entries may be served: the shared epoch was confirmed recently enough. */
  isFresh(now = this.opts.clock()): boolean {
    return now - this.confirmedAt <= this.opts.maxStalenessMs;
  }

  /**
   * Undefined when the cache may be used right away; otherwise a promise that settles once the epoch
   * was read again. It never rejects: when the epoch cannot be read the cache is emptied and stays
   * unconfirmed, so every read goes to the database (which reports the outage itself).
   */
  ensureFresh(): Promise<void> | undefined {
    if (this.isFresh()) return undefined;
    return this.poll().catch(() => undefined);
  }

  /** Reads the shared epoch (one read at a time); a change made elsewhere empties the cache. */
  poll(): Promise<void> {
    if (!this.polling) {
      this.polling = this.readAndCompare().finally(() => {
        this.polling = null;
      });
    }
    return this.polling;
  }

  private async readAndCompare(): Promise<void> {
    // Taken before the read: the read sees every epoch write that committed before this moment.
    const startedAt = this.opts.clock();
    this.stats.epochReads++;
    let value: string | null;
    try {
      value = await this.readEpoch();
    } catch (e) {
      this.stats.epochReadFailures++;
      this.invalidate();
      throw e;
    }
    if (value !== this.epoch) {
      this.epoch = value;
      this.invalidate();
    }
    if (startedAt > this.confirmedAt) this.confirmedAt = startedAt;
  }

  /**
   * This node wrote the epoch, so its own polls need not react to that value. Its write may have
   * replaced another node's value this node never read, so what it cached so far is forgotten too.
   */
  noteOwnEpoch(value: string): void {
    this.epoch = value;
    this.invalidate();
  }

  /** Wraps a mutation: nothing is cached while it runs, and everything is forgotten when it ends. */
  async mutation<T>(run: () => Promise<T>): Promise<T> {
    this.inFlight++;
    this.invalidate();
    try {
      return await run();
    } finally {
      this.inFlight--;
      this.invalidate();
    }
  }

  invalidate(): void {
    this.generation++;
    this.stats.invalidations++;
    for (const s of this.spaces) s.clear();
  }

  size(): number {
    let n = 0;
    for (const s of this.spaces) n += s.size;
    return n;
  }

  /** @internal the state a load must still find when it completes for its result to be kept. */
  loadTicket(): number {
    return this.inFlight === 0 ? this.generation : -1;
  }
  /** @internal */
  mayKeep(ticket: number): boolean {
    return ticket >= 0 && ticket === this.generation && this.inFlight === 0;
  }
}

/** One kind of cached value. Values handed out are shared between requests: callers must not change them. */
export class CacheSpace<T> {
  private readonly map = new Map<string, Entry<T>>();

  constructor(
    private readonly owner: IamCache,
    readonly name: string,
  ) {}

  get size(): number {
    return this.map.size;
  }

  clear(): void {
    this.map.clear();
  }

  /** The cached value, if there is one that may still be served. Synchronous, for the hot path. */
  get(key: string): T | undefined {
    const hit = this.map.get(key);
    if (hit === undefined) return undefined;
    const o = this.owner;
    const now = o.opts.clock();
    if (!o.isFresh(now)) return undefined;
    if (now - hit.loadedAt > o.opts.ttlMs) {
      this.map.delete(key);
      return undefined;
    }
    // Re-insert so the map's order is least recently used first.
    this.map.delete(key);
    this.map.set(key, hit);
    o.stats.hits++;
    return hit.value;
  }

  /** Loads a value and keeps it unless a mutation or an invalidation happened meanwhile. */
  async load(key: string, loader: () => Promise<T | undefined>): Promise<T | undefined> {
    const o = this.owner;
    o.stats.misses++;
    const ticket = o.loadTicket();
    const loadedAt = o.opts.clock();
    const value = await loader();
    if (value !== undefined && o.mayKeep(ticket)) {
      this.map.delete(key);
      if (this.map.size >= o.opts.maxEntries) this.map.delete(this.map.keys().next().value as string);
      this.map.set(key, { value, loadedAt });
    }
    return value;
  }
}

/** Freezes a parsed JSON value and everything in it, so a shared cached value cannot be changed. */
export function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v as object)) deepFreeze(x);
  }
  return v;
}

/**
 * The shared epoch row (in `settings`) behind an IamCache: a service writes it after every mutation
 * so other nodes forget what they cached (they read it at least once per staleness bound). Used by
 * IAM (`iam.epoch`) and KMS (`kms.epoch`, key rows).
 */
export class SharedEpoch {
  constructor(
    private readonly db: Kysely<{ settings: { name: string; value: string } }>,
    private readonly name: string,
    private readonly cache: () => IamCache,
  ) {}

  async read(): Promise<string | null> {
    const row = await this.db.selectFrom('settings').select('value').where('name', '=', this.name).executeTakeFirst();
    return row?.value ?? null;
  }

  /**
   * Tells the other nodes that something changed. A failed write is retried; if it keeps failing, other
   * nodes may keep what they cached before the change until their entries expire (the TTL), so it is
   * retried in the background for that long.
   */
  async bump(): Promise<void> {
    const value = randomBytes(8).toString('hex');
    const write = async () => {
      await this.db
        .insertInto('settings')
        .values({ name: this.name, value })
        .onConflict((oc) => oc.column('name').doUpdateSet({ value }))
        .execute();
      this.cache().noteOwnEpoch(value);
    };
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        return await write();
      } catch {
        if (attempt < 3) await new Promise((r) => setTimeout(r, 20 * attempt));
      }
    }
    const giveUpAt = Date.now() + this.cache().opts.ttlMs;
    const retry = () => {
      write().catch(() => {
        if (Date.now() < giveUpAt) setTimeout(retry, 1_000).unref();
      });
    };
    setTimeout(retry, 1_000).unref();
  }
}

/**
 * Per-node cache of what authenticating and authorizing a request reads: token rows, access keys
 * with their unsealed secrets, principals and parsed policy sets.
 *
 * Correctness rules, because a stale answer here is a security bug:
 * - Every IAM mutation on this node clears the cache when it completes (IamService wraps its
 *   mutating methods), and while one is in flight nothing new is cached, so a read racing an
 *   uncommitted write cannot be kept.
 * - Every mutation also changes a shared epoch row in the database; each node polls it (default every
 *   500 ms) and clears its cache when it changes. Across nodes a change is therefore seen within the
 *   poll interval; on the node that made it, at once.
 * - Entries also expire after `ttlMs` whatever happens, and expiry times (tokens, temporary keys,
 *   agencies) are checked against the clock on every use, never cached away.
 */
export class IamCache {
  private generation = 0;
  private inFlight = 0;
  private readonly maps = new Map<string, Map<string, { value: unknown; at: number }>>();

  constructor(
    private readonly opts: { maxEntries: number; ttlMs: number; now: () => number } = { maxEntries: 10_000, ttlMs: 60_000, now: Date.now },
  ) {}

  /** Returns the cached value, or loads it and caches it when no mutation interfered. */
  async through<T>(ns: string, key: string, load: () => Promise<T | undefined>): Promise<T | undefined> {
    let map = this.maps.get(ns);
    if (!map) {
      map = new Map();
      this.maps.set(ns, map);
    }
    const hit = map.get(key);
    const t = this.opts.now();
    if (hit && t - hit.at < this.opts.ttlMs) {
      // Refresh the entry's place so the map's insertion order is least-recently-used first.
      map.delete(key);
      map.set(key, hit);
      return hit.value as T;
    }
    if (hit) map.delete(key);
    const generation = this.generation;
    const value = await load();
    if (value !== undefined && this.inFlight === 0 && generation === this.generation) {
      if (map.size >= this.opts.maxEntries) map.delete(map.keys().next().value as string);
      map.set(key, { value, at: t });
    }
    return value;
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
    for (const m of this.maps.values()) m.clear();
  }

  size(): number {
    let n = 0;
    for (const m of this.maps.values()) n += m.size;
    return n;
  }
}

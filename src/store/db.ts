import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import SQLite from 'better-sqlite3';
import pg from 'pg';
import {
  CompiledQuery, Kysely, Migrator, PostgresDialect, SelectQueryNode, SqliteDialect, sql,
  type DatabaseConnection, type PostgresPool, type PostgresPoolClient, type Driver, type Migration, type MigrationProvider, type QueryResult, type TransactionSettings,
} from 'kysely';
import { migrations } from './migrations/index.js';
import { MainWriteGate, newWriteGate } from './write-gate.js';

export type Dialect = 'sqlite' | 'postgres';

/**
 * The one query layer. Services narrow it with `db.withTables<TheirTables>()` in their own store.ts,
 * so each service sees only the tables it owns.
 */
export interface Store {
  db: Kysely<object>;
  dialect: Dialect;
  /**
   * Resolves once every transaction committed before the call survives a power loss, not only a
   * crash of this process. PostgreSQL's commits already do (synchronous_commit); SQLite's, in WAL
   * mode with synchronous=NORMAL, reach the disk only at the next checkpoint, so this fsyncs the WAL
   * file off the event loop, one fsync for all the callers that arrive while one is running.
   */
  durable(): Promise<void>;
  /** fsyncs of the SQLite WAL made for durable(), and background checkpoints (both 0 on PostgreSQL). */
  readonly stats: { walSyncs: number; checkpoints: number };
  /**
   * SQLite only: the database file, and the gate (write-gate.ts) through which another thread of this
   * process that opens its own connection to it takes turns writing with the event loop's connection.
   */
  sqlite?: { file: string; gate: SharedArrayBuffer };
  close(): Promise<void>;
}

// int8 columns hold epoch milliseconds and counters, which fit in a double; pg returns them as strings otherwise.
pg.types.setTypeParser(20, (v) => Number(v));

export function openStore(opts: { databaseUrl?: string; dataDir: string }): Store {
  if (opts.databaseUrl) {
    const pool = new pg.Pool({ connectionString: opts.databaseUrl, max: 10 });
    // An idle client losing its connection must not crash the process; the next query reconnects.
    pool.on('error', () => undefined);
    const db = new Kysely<object>({ dialect: new PostgresDialect({ pool: preparingPool(pool) }) });
    return { db, dialect: 'postgres', durable: async () => undefined, stats: { walSyncs: 0, checkpoints: 0 }, close: () => db.destroy() };
  }
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const file = path.join(opts.dataDir, 'custos.db');
  const database = new SQLite(file);
  database.pragma('journal_mode = WAL');
  configureWriter(database);
  const checkpointer = new Worker(new URL('./checkpoint-worker.js', import.meta.url), {
    workerData: { file, intervalMs: 100 },
  });
  const stats = { walSyncs: 0, checkpoints: 0 };
  checkpointer.on('message', (m: { checkpoints?: number }) => {
    if (m.checkpoints) stats.checkpoints = m.checkpoints;
  });
  // A worker that fails leaves the backstop; the store keeps working.
  checkpointer.on('error', () => undefined);
  checkpointer.unref();
  const gate = newWriteGate();
  const db = new Kysely<object>({ dialect: new GatedSqliteDialect(withStatementCache(database), database, new MainWriteGate(gate)) });
  return {
    db, dialect: 'sqlite', durable: walSyncer(`${file}-wal`, stats), stats, sqlite: { file, gate },
    async close() {
      await stopWorker(checkpointer);
      await db.destroy();
    },
  };
}

/**
 * The settings of every connection of this process that writes to the SQLite file (the event loop's,
 * and the audit trail's writer thread's).
 */
export function configureWriter(database: SQLite.Database): void {
  database.pragma('synchronous = NORMAL');
  database.pragma('busy_timeout = 5000');
  database.pragma('foreign_keys = ON');
  // Deleted content is overwritten with zeros, not left in free pages: destroyed keys, erased
  // personal data and deleted credentials must not be recoverable from the file.
  database.pragma('secure_delete = ON');
  // 64 MiB of page cache (the default is 2 MiB): the audit trail's indexes take random inserts.
  database.pragma('cache_size = -65536');
  // A checkpoint inside a commit copies the WAL's pages into the database file and fsyncs it on the
  // event loop, which held every request up for tens of milliseconds (encrypt-data p99.9 35-47 ms).
  // So a worker thread (checkpoint-worker.ts) copies them in the background, and a writer's own
  // checkpoint, every ~40 MiB of WAL, finds (nearly) nothing left to copy: it is what lets the WAL
  // start over from its beginning, which a background checkpoint racing a busy writer never sees.
  // Every writing connection keeps it, so the WAL starts over whichever of them writes most.
  database.pragma('wal_autocheckpoint = 10000');
}

/** Stops the checkpoint worker: it closes its connection, then exits. Holds the process open meanwhile. */
async function stopWorker(w: Worker): Promise<void> {
  w.ref();
  let timer: NodeJS.Timeout | undefined;
  const stopped = new Promise<void>((resolve) => {
    w.once('exit', () => resolve());
    w.on('message', (m: { stopped?: boolean }) => m.stopped && resolve());
    timer = setTimeout(resolve, 2000);
  });
  w.postMessage({ stop: true });
  await stopped;
  clearTimeout(timer);
  await w.terminate();
}

/**
 * durable() for SQLite: fdatasync of the WAL file. A commit's frames are written to the WAL before
 * it returns, so a sync that starts after the commit covers it (and every frame before it, the WAL
 * header included); a sync already running when a caller arrives may not, so that caller waits for
 * the next one, which also serves everyone else who arrived meanwhile. When a checkpoint has already
 * moved the frames into the database file, SQLite synced that file before it reused the WAL.
 */
function walSyncer(walFile: string, stats: { walSyncs: number }): () => Promise<void> {
  let running: Promise<void> | null = null;
  let next: Promise<void> | null = null;
  const syncOnce = async () => {
    let handle;
    try {
      handle = await open(walFile, 'r+');
    } catch (e) {
      // No WAL file: the last connection checkpointed it into the database file and synced that.
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    try {
      await handle.datasync();
      stats.walSyncs++;
    } finally {
      await handle.close();
    }
  };
  const start = (): Promise<void> => {
    running = syncOnce().finally(() => {
      running = null;
    });
    return running;
  };
  return () => {
    if (!running) return start();
    next ??= running.catch(() => undefined).then(() => {
      next = null;
      return start();
    });
    return next;
  };
}

/**
 * Kysely prepares every query anew; preparing costs more than running most of ours. Statements are
 * reusable, so keep the most recent ones by SQL text (Kysely never iterates two at once per connection).
 */
function withStatementCache(database: SQLite.Database, max = 500): SQLite.Database {
  const cache = new Map<string, SQLite.Statement>();
  const prepare = (source: string) => {
    let stmt = cache.get(source);
    if (stmt) {
      cache.delete(source);
    } else {
      stmt = database.prepare(source);
      if (cache.size >= max) cache.delete(cache.keys().next().value as string);
    }
    cache.set(source, stmt);
    return stmt;
  };
  return new Proxy(database, {
    get(target, prop, receiver) {
      if (prop === 'prepare') return prepare;
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

/**
 * SQLite through Kysely, taking turns writing with this process's other SQLite thread (the audit
 * trail's writer) through the write gate: a query that writes, begins or ends a transaction, or sets
 * a pragma first waits for the gate (without blocking the event loop; other requests go on, other
 * queries queue on Kysely's one connection as always), and gives it back once no transaction is open.
 * A transaction takes it at `begin`, even a deferred one: once it has read, a commit by the other
 * thread would leave it unable to write (SQLITE_BUSY_SNAPSHOT).
 */
class GatedSqliteDialect extends SqliteDialect {
  constructor(
    cached: SQLite.Database,
    private readonly raw: SQLite.Database,
    private readonly gate: MainWriteGate,
  ) {
    super({ database: cached });
  }

  override createDriver(): Driver {
    return new GatedDriver(super.createDriver(), this.raw, this.gate);
  }
}

/** Reads: a SELECT built by Kysely, or raw SQL that starts with SELECT or EXPLAIN. Anything else takes the gate. */
function writes(q: CompiledQuery): boolean {
  if (SelectQueryNode.is(q.query)) return false;
  return !/^\s*(select|explain)\b/i.test(q.sql);
}

class GatedConnection implements DatabaseConnection {
  constructor(
    readonly inner: DatabaseConnection,
    private readonly raw: SQLite.Database,
    private readonly gate: MainWriteGate,
  ) {}

  async executeQuery<R>(q: CompiledQuery): Promise<QueryResult<R>> {
    if (!this.gate.held && writes(q)) await this.gate.acquireAsync();
    try {
      return await this.inner.executeQuery<R>(q);
    } finally {
      if (this.gate.held && !this.raw.inTransaction) this.gate.release();
    }
  }

  streamQuery<R>(q: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    if (writes(q)) throw new Error('streamed queries are reads only');
    return this.inner.streamQuery<R>(q, chunkSize);
  }
}

class GatedDriver implements Driver {
  private connection: GatedConnection | null = null;
  constructor(
    private readonly inner: Driver,
    private readonly raw: SQLite.Database,
    private readonly gate: MainWriteGate,
  ) {}

  init(): Promise<void> {
    return this.inner.init();
  }
  async acquireConnection(): Promise<DatabaseConnection> {
    const c = await this.inner.acquireConnection();
    if (this.connection?.inner !== c) this.connection = new GatedConnection(c, this.raw, this.gate);
    return this.connection;
  }
  // Transaction control goes through the connection's executeQuery (begin, commit, rollback,
  // savepoints), so the gated connection passed here takes and gives back the gate.
  beginTransaction(connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    return this.inner.beginTransaction(connection, settings);
  }
  commitTransaction(connection: DatabaseConnection): Promise<void> {
    return this.inner.commitTransaction(connection);
  }
  rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    return this.inner.rollbackTransaction(connection);
  }
  savepoint(connection: DatabaseConnection, name: string, compile: Parameters<NonNullable<Driver['savepoint']>>[2]): Promise<void> {
    return this.inner.savepoint!(connection, name, compile);
  }
  rollbackToSavepoint(connection: DatabaseConnection, name: string, compile: Parameters<NonNullable<Driver['rollbackToSavepoint']>>[2]): Promise<void> {
    return this.inner.rollbackToSavepoint!(connection, name, compile);
  }
  releaseSavepoint(connection: DatabaseConnection, name: string, compile: Parameters<NonNullable<Driver['releaseSavepoint']>>[2]): Promise<void> {
    return this.inner.releaseSavepoint!(connection, name, compile);
  }
  releaseConnection(connection: DatabaseConnection): Promise<void> {
    return this.inner.releaseConnection((connection as GatedConnection).inner ?? connection);
  }
  destroy(): Promise<void> {
    return this.inner.destroy();
  }
}

class StaticProvider implements MigrationProvider {
  async getMigrations(): Promise<Record<string, Migration>> {
    return migrations;
  }
}

/**
 * Applies pending migrations. On PostgreSQL a session advisory lock serialises nodes that start at
 * the same moment (Kysely's own lock table alone races on the first `create table`).
 */
export async function migrate(store: Store): Promise<string[]> {
  const run = async (db: Kysely<object>) => {
    const migrator = new Migrator({ db, provider: new StaticProvider() });
    const { error, results } = await migrator.migrateToLatest();
    if (error) throw error instanceof Error ? error : new Error(String(error));
    return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
  };
  if (store.dialect === 'sqlite') return run(store.db);
  return store.db.connection().execute(async (conn) => {
    await sql`select pg_advisory_lock(7243001)`.execute(conn);
    try {
      return await run(conn);
    } finally {
      await sql`select pg_advisory_unlock(7243001)`.execute(conn);
    }
  });
}

/** Whether the database's placeholders are numbered (`$1`, PostgreSQL) rather than `?` (SQLite): for multiRowInsertSql. */
export function usesNumberedParams(db: Kysely<any>): boolean {
  return sql`select ${0}`.compile(db).sql.includes('$1');
}

const insertSqlCache = new Map<string, string>();
/**
 * `insert into <table> (<columns>) values (…), (…) <suffix>` for `rows` rows, with the database's
 * placeholders (`$n` on PostgreSQL, `?` on SQLite), for a hot path that passes its parameters flat
 * to `CompiledQuery.raw`: building and compiling a many-row insert through the query builder costs
 * more than the database's work on it. The text is made once per shape.
 */
export function multiRowInsertSql(numberedParams: boolean, table: string, columns: readonly string[], rows: number, suffix = ''): string {
  const key = `${numberedParams ? '$' : '?'}|${table}|${rows}|${suffix}`;
  let text = insertSqlCache.get(key);
  if (text === undefined) {
    const tuples: string[] = [];
    for (let r = 0; r < rows; r++) tuples.push(`(${columns.map((_, c) => (numberedParams ? `$${r * columns.length + c + 1}` : '?')).join(', ')})`);
    text = `insert into ${table} (${columns.join(', ')}) values ${tuples.join(', ')}${suffix ? ` ${suffix}` : ''}`;
    if (insertSqlCache.size < 1024) insertSqlCache.set(key, text);
  }
  return text;
}

/** SQL text → the name it is prepared under on PostgreSQL (preparedQuery). */
const preparedNames = new Map<string, string>();
/** At most this many texts are prepared (per connection, on the server); any further run unnamed. */
const MAX_PREPARED = 256;

/**
 * A query for a hot path whose text is one of a few fixed shapes: on PostgreSQL it runs as a named
 * prepared statement, parsed and planned once per connection instead of on every call (for the
 * vault's read with the consent/restriction probe, parsing and planning took three times as long as
 * running it). The text must name its columns: a prepared `select *` fails once a column is added.
 * SQLite keeps every statement prepared already (withStatementCache).
 */
export function preparedQuery<R = unknown>(text: string, parameters: readonly unknown[]): CompiledQuery<R> {
  if (!preparedNames.has(text) && preparedNames.size < MAX_PREPARED) {
    preparedNames.set(text, `custos_${createHash('sha256').update(text).digest('hex').slice(0, 32)}`);
  }
  return CompiledQuery.raw(text, parameters as unknown[]) as CompiledQuery<R>;
}

/**
 * The pool as Kysely sees it: a text registered by preparedQuery runs under its name (node-postgres
 * sends Parse once per connection for a name, then only Bind/Execute); everything else as before.
 */
function preparingPool(pool: pg.Pool): PostgresPool {
  // Kysely keeps its connection objects per client: the same client must come back as the same object.
  const wrapped = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  return {
    async connect() {
      const client = await pool.connect();
      let w = wrapped.get(client);
      if (!w) {
        // Kysely passes either SQL text and parameters, or a cursor (streamed queries) as is.
        const query = (text: string, values: unknown[]) => {
          const name = typeof text === 'string' ? preparedNames.get(text) : undefined;
          return name !== undefined ? client.query({ name, text, values }) : client.query(text, values);
        };
        w = { query: query as unknown as PostgresPoolClient['query'], release: () => client.release() };
        wrapped.set(client, w);
      }
      return w;
    },
    end: () => pool.end(),
  };
}

/** True when the error is a unique-constraint violation on either database. */
export function isUniqueViolation(e: unknown): boolean {
  const err = e as { code?: string; message?: string };
  return err?.code === '23505' || err?.code === 'SQLITE_CONSTRAINT_UNIQUE' || err?.code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

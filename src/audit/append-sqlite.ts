/**
 * Appending traces to the trail on SQLite, synchronously on a connection of its own: what the
 * audit trail's writer thread (append-worker.ts) runs, so that the hashing, the inserts into the
 * trail's indexes and the commit happen beside the event loop instead of on it.
 */
import type SQLite from 'better-sqlite3';
import { multiRowInsertSql } from '../store/db.js';
import type { WorkerWriteGate } from '../store/write-gate.js';
import { genesisHash } from './chain.js';
import { auditHmac, byTrail, chainRows, TRACE_COLUMNS } from './rows.js';
import type { RequestTrace } from './trace.js';

/** Rows per insert statement. */
const CHUNK = 100;

export class SqliteTrailWriter {
  private readonly inserts = new Map<number, SQLite.Statement>();
  private readonly begin: SQLite.Statement;
  private readonly commit: SQLite.Statement;
  private readonly rollback: SQLite.Statement;
  private readonly head: SQLite.Statement;
  private readonly newHead: SQLite.Statement;
  private readonly moveHead: SQLite.Statement;
  /** A head row, once there, is never removed: it is created only the first time a trail is seen. */
  private readonly knownTrails = new Set<string>();

  constructor(
    private readonly database: SQLite.Database,
    private readonly hmacKey: Buffer,
    private readonly gate: WorkerWriteGate,
  ) {
    this.begin = database.prepare('begin immediate');
    this.commit = database.prepare('commit');
    this.rollback = database.prepare('rollback');
    this.head = database.prepare('select seq, hash from audit_heads where trail = ?');
    this.newHead = database.prepare('insert into audit_heads (trail, seq, hash, updated_at) values (?, 0, ?, ?) on conflict (trail) do nothing');
    this.moveHead = database.prepare('update audit_heads set seq = ?, hash = ?, updated_at = ? where trail = ?');
  }

  /** Appends the traces in one transaction, each to its account's chain, in the order given. */
  append(traces: RequestTrace[], recordTime: number): void {
    this.gate.acquire();
    try {
      this.begin.run();
      // Remembered only once the transaction that made their head rows has committed.
      const created: string[] = [];
      try {
        for (const [trail, list] of byTrail(traces)) {
          if (!this.knownTrails.has(trail)) {
            this.newHead.run(trail, genesisHash(trail), recordTime);
            created.push(trail);
          }
          const head = this.head.get(trail) as { seq: number; hash: string } | undefined;
          if (!head) throw new Error(`audit trail head ${trail} missing`);
          const { rows, seq, hash } = chainRows(trail, head, list, recordTime, (v) => auditHmac(this.hmacKey, v));
          for (let i = 0; i < rows.length; i += CHUNK) {
            const chunk = rows.slice(i, i + CHUNK);
            const params: unknown[] = [];
            for (const r of chunk) for (const c of TRACE_COLUMNS) params.push(r[c]);
            this.insert(chunk.length).run(params);
          }
          this.moveHead.run(seq, hash, recordTime, trail);
        }
        this.commit.run();
        for (const trail of created) if (this.knownTrails.size < 100_000) this.knownTrails.add(trail);
      } catch (e) {
        try {
          if (this.database.inTransaction) this.rollback.run();
        } catch {
          // Still in the transaction: the thread running this ends itself (append-worker.ts).
        }
        // A statement prepared before the schema changed is prepared again next time.
        this.inserts.clear();
        throw e;
      }
    } finally {
      this.gate.release();
    }
  }

  private insert(rows: number): SQLite.Statement {
    let stmt = this.inserts.get(rows);
    if (!stmt) {
      // OR FAIL: a failing row leaves the rows before it in place instead of undoing the statement, so
      // SQLite keeps no statement journal of the pages it changes (a third of the insert's cost). The
      // transaction is rolled back on any failure anyway.
      stmt = this.database.prepare(multiRowInsertSql(false, 'audit_traces', TRACE_COLUMNS, rows).replace(/^insert /, 'insert or fail '));
      this.inserts.set(rows, stmt);
    }
    return stmt;
  }
}

// The audit trail's writer thread on SQLite: appends the batches of traces the event loop hands it
// (audit.ts), each in one transaction on a connection of its own, and answers each batch with its
// outcome. It takes turns writing with the event loop's connection through the write gate.
import { parentPort, workerData } from 'node:worker_threads';
import SQLite from 'better-sqlite3';
import { configureWriter } from '../store/db.js';
import { WorkerWriteGate } from '../store/write-gate.js';
import { SqliteTrailWriter } from './append-sqlite.js';
import type { RequestTrace } from './trace.js';

export interface AppendRequest {
  id: number;
  traces: RequestTrace[];
  recordTime: number;
}
/** One reply per transaction, naming the requests it appended. */
export interface AppendReply {
  ids: number[];
  error?: string;
}

const { file, gate, hmacKey } = workerData as { file: string; gate: SharedArrayBuffer; hmacKey: Uint8Array };
const database = new SQLite(file, { fileMustExist: true });
configureWriter(database);
const key = Buffer.from(hmacKey);
hmacKey.fill(0);
const writer = new SqliteTrailWriter(database, key, new WorkerWriteGate(gate));

// Requests that arrive while a transaction runs wait in the port; they are all taken before the
// next transaction starts (on the next turn of this thread's loop) and appended together.
let pending: AppendRequest[] = [];
let scheduled = false;

/** Traces one transaction takes at most: a backlog is committed in several, each holding the gate briefly. */
const MAX_TRACES_PER_TRANSACTION = 2000;

function commitPending(): void {
  scheduled = false;
  if (pending.length === 0 || !database.open) return;
  let count = 0;
  let n = 0;
  while (n < pending.length && (n === 0 || count + pending[n]!.traces.length <= MAX_TRACES_PER_TRANSACTION)) count += pending[n++]!.traces.length;
  const requests = pending.slice(0, n);
  pending = pending.slice(n);
  if (pending.length > 0) {
    scheduled = true;
    setImmediate(commitPending);
  }
  const ids = requests.map((r) => r.id);
  // The clock of the event loop that handed each batch over; the latest of those in the transaction.
  const recordTime = Math.max(...requests.map((r) => r.recordTime));
  let reply: AppendReply;
  try {
    writer.append(requests.length === 1 ? requests[0]!.traces : requests.flatMap((r) => r.traces), recordTime);
    reply = { ids };
  } catch (e) {
    reply = { ids, error: (e as Error).message };
  }
  parentPort!.postMessage(reply);
  // A connection left inside a transaction (its rollback failed) would fail every later batch: end
  // this thread instead; the event loop starts a new one for the next batch.
  if (database.inTransaction) process.exit(1);
}

parentPort!.on('message', (msg: AppendRequest | { stop: true }) => {
  if ('stop' in msg) {
    while (pending.length > 0) commitPending();
    database.close();
    key.fill(0);
    parentPort!.postMessage({ stopped: true });
    return;
  }
  pending.push(msg);
  if (!scheduled) {
    scheduled = true;
    setImmediate(commitPending);
  }
});

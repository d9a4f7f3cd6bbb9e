// Worker thread of the SQLite store: checkpoints the WAL into the database file in the background
// (PASSIVE: it never waits for, nor blocks, the readers and the writer), so the copying and the fsync
// of a checkpoint happen here instead of inside a commit on the event loop.
import { parentPort, workerData } from 'node:worker_threads';
import SQLite from 'better-sqlite3';

const { file, intervalMs } = workerData as { file: string; intervalMs: number };
const db = new SQLite(file, { fileMustExist: true });
db.pragma('busy_timeout = 1000');
// This connection never writes pages itself, and must not checkpoint on its own behalf either.
db.pragma('wal_autocheckpoint = 0');

let checkpoints = 0;
let copied = 0;
const timer = setInterval(() => {
  try {
    // Copies what the WAL holds beyond what was copied before (nothing, cheaply, when idle); frames
    // that readers still need stay. The writer starts the WAL over once everything has been copied.
    const [r] = db.pragma('wal_checkpoint(PASSIVE)') as { checkpointed: number }[];
    if (!r || r.checkpointed === copied) return;
    copied = r.checkpointed;
    checkpoints++;
    parentPort!.postMessage({ checkpoints });
  } catch {
    // Another process's checkpoint is running (SQLITE_BUSY), or the file is being closed: next tick.
  }
}, intervalMs);

parentPort!.on('message', (msg: { stop?: boolean }) => {
  if (!msg.stop) return;
  clearInterval(timer);
  db.close();
  parentPort!.postMessage({ stopped: true });
});

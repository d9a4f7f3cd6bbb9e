/**
 * One SQLite writer at a time between the threads of this process. SQLite allows one write
 * transaction per database file; a second connection that wants to write waits in SQLite's busy
 * handler, which sleeps in steps of at least a millisecond, and a deferred transaction that began
 * reading before another connection committed cannot write at all (SQLITE_BUSY_SNAPSHOT). The
 * event loop's connection (db.ts) and the audit trail's writer thread (audit/append-worker.ts)
 * therefore hand the right to write to each other through shared memory: a thread takes the gate
 * before it begins a transaction or runs a statement that writes, and gives it back when its
 * transaction has ended. Waiting here wakes within microseconds of the release.
 *
 * Another process on the same file (a `custos` CLI command) still meets SQLite's own lock and busy
 * timeout, as before.
 */

const OWNER = 0;
/** 1 while the writer thread waits for the gate. */
const WAITING = 1;
/** Times the event loop took the gate while the writer thread was waiting. */
const PASSED = 2;

const FREE = 0;
const MAIN = 1;
const WORKER = 2;

/** After passing over a waiting writer thread this many times, the event loop lets it go first. */
const MAX_PASSES = 4;

export class WriteGateTimeout extends Error {
  readonly code = 'SQLITE_BUSY';
  constructor(ms: number) {
    super(`database is locked: another thread held the write lock for over ${ms} ms`);
  }
}

export function newWriteGate(): SharedArrayBuffer {
  return new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT);
}

/** The event loop's side: waits asynchronously, at most as long as the other thread's one transaction. */
export class MainWriteGate {
  private readonly cells: Int32Array;
  constructor(buffer: SharedArrayBuffer, private readonly timeoutMs = 5000) {
    this.cells = new Int32Array(buffer);
  }

  get held(): boolean {
    return Atomics.load(this.cells, OWNER) === MAIN;
  }

  /** One attempt: true when the event loop holds the gate now. */
  private tryAcquire(): boolean {
    const c = this.cells;
    if (Atomics.load(c, OWNER) === MAIN) return true;
    const waiting = Atomics.load(c, WAITING) === 1;
    // After passing over a waiting writer thread a few times, let it go first.
    if (waiting && Atomics.load(c, PASSED) >= MAX_PASSES) return false;
    if (Atomics.compareExchange(c, OWNER, FREE, MAIN) !== FREE) return false;
    if (waiting) Atomics.add(c, PASSED, 1);
    return true;
  }

  /** What to wait on until the next attempt: the writer thread giving the gate back, or taking it. */
  private waitTarget(): [number, number] {
    return Atomics.load(this.cells, OWNER) === WORKER ? [OWNER, WORKER] : [WAITING, 1];
  }

  /** Resolves once the gate is held; the event loop serves other work meanwhile. */
  async acquireAsync(): Promise<void> {
    let deadline = 0;
    while (!this.tryAcquire()) {
      deadline ||= Date.now() + this.timeoutMs;
      if (Date.now() > deadline) throw new WriteGateTimeout(this.timeoutMs);
      const [cell, value] = this.waitTarget();
      const r = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t: number): { async: boolean; value: Promise<string> | string } }).waitAsync(this.cells, cell, value, 20);
      if (!r.async) continue;
      // A pending waitAsync does not keep the process alive; a timer does (a CLI command with nothing
      // else to wait for would otherwise exit in the middle of its write).
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([r.value, new Promise((resolve) => (timer = setTimeout(resolve, 25)))]);
      clearTimeout(timer);
    }
  }

  release(): void {
    if (Atomics.compareExchange(this.cells, OWNER, MAIN, FREE) === MAIN) Atomics.notify(this.cells, OWNER);
  }
}

/** The writer thread's side: blocks its own thread until the event loop's transaction has ended. */
export class WorkerWriteGate {
  private readonly cells: Int32Array;
  constructor(buffer: SharedArrayBuffer) {
    this.cells = new Int32Array(buffer);
  }

  acquire(): void {
    const c = this.cells;
    Atomics.store(c, WAITING, 1);
    for (;;) {
      const prev = Atomics.compareExchange(c, OWNER, FREE, WORKER);
      if (prev === FREE) break;
      Atomics.wait(c, OWNER, prev, 50);
    }
    Atomics.store(c, WAITING, 0);
    Atomics.store(c, PASSED, 0);
    Atomics.notify(c, WAITING);
  }

  release(): void {
    Atomics.store(this.cells, OWNER, FREE);
    Atomics.notify(this.cells, OWNER);
  }

  /** For the event loop after it stopped the writer thread, which may have held the gate. */
  static reset(buffer: SharedArrayBuffer): void {
    const c = new Int32Array(buffer);
    Atomics.compareExchange(c, OWNER, WORKER, FREE);
    Atomics.store(c, WAITING, 0);
    Atomics.notify(c, OWNER);
    Atomics.notify(c, WAITING);
  }
}

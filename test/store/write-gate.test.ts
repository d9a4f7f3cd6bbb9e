// SQLite has one writer per file. The event loop's connection and the audit trail's writer thread take
// turns through the write gate (src/store/write-gate.ts): a thread that wants to write waits, with no
// error, until the other's transaction has ended, and the writer thread is not starved by a busy
// event loop. Under a burst of requests that each change something (a transaction on the event loop)
// and are each traced (a transaction on the writer thread), every request succeeds and the trail is
// one unbroken chain.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { sql } from 'kysely';
import { traceHash } from '../../src/audit/chain.js';
import { fromRow, type TraceRow } from '../../src/audit/rows.js';
import { openStore } from '../../src/store/db.js';
import { MainWriteGate, newWriteGate, WorkerWriteGate } from '../../src/store/write-gate.js';
import { DB, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const GATE_MODULE = new URL('../../src/store/write-gate.js', import.meta.url).href;

/** A thread that takes the gate on request, holds it for `holdMs`, and counts its turns in cells[0]. */
function gateThread(gate: SharedArrayBuffer, cells: SharedArrayBuffer): Worker {
  return new Worker(
    `const { parentPort, workerData } = require('node:worker_threads');
     import(workerData.module).then(({ WorkerWriteGate }) => {
       const gate = new WorkerWriteGate(workerData.gate);
       const cells = new Int32Array(workerData.cells);
       parentPort.on('message', ({ holdMs, turns }) => {
         for (let i = 0; i < turns; i++) {
           gate.acquire();
           if (i === 0) parentPort.postMessage('held');
           Atomics.wait(cells, 1, 0, holdMs);
           Atomics.add(cells, 0, 1);
           gate.release();
         }
         parentPort.postMessage('done');
       });
       parentPort.postMessage('ready');
     });`,
    { eval: true, workerData: { module: GATE_MODULE, gate, cells } },
  );
}
const message = (w: Worker, want: string) => new Promise<void>((resolve) => w.on('message', (m) => m === want && resolve()));

/** Runs `fn` with a fresh gate, the event loop's side of it, a gate thread and its turn counter. */
async function withGateThread(fn: (ctx: { w: Worker; main: MainWriteGate; turns: () => number }) => Promise<void>): Promise<void> {
  const buffer = newWriteGate();
  const cells = new SharedArrayBuffer(8);
  const w = gateThread(buffer, cells);
  try {
    await message(w, 'ready');
    await fn({ w, main: new MainWriteGate(buffer), turns: () => Atomics.load(new Int32Array(cells), 0) });
  } finally {
    await w.terminate();
  }
}

describe('write gate between threads', () => {
  test('the event loop waits while the other thread holds the gate, and the other thread while the event loop does', async () => {
    await withGateThread(async ({ w, main, turns }) => {
      const held = message(w, 'held');
      const firstDone = message(w, 'done');
      w.postMessage({ holdMs: 150, turns: 1 });
      await held;
      // Waiting asynchronously: the event loop goes on serving meanwhile.
      let ticks = 0;
      const timer = setInterval(() => ticks++, 10);
      const t0 = performance.now();
      await main.acquireAsync();
      const waited = performance.now() - t0;
      clearInterval(timer);
      assert.ok(ticks >= 5, `the event loop ran meanwhile (${ticks} timer ticks)`);
      assert.equal(turns(), 1, 'the event loop got the gate only after the thread gave it back');
      assert.ok(waited >= 100, `waited ${waited.toFixed(0)} ms for a 150 ms transaction`);
      assert.ok(main.held);
      await firstDone;

      // Now the event loop holds it: the thread's next turn waits for the release.
      const done = message(w, 'done');
      w.postMessage({ holdMs: 0, turns: 1 });
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(turns(), 1, 'the thread did not write while the event loop held the gate');
      main.release();
      await done;
      assert.equal(turns(), 2);
    });
  });

  test('a busy event loop taking the gate again and again still lets a waiting thread have its turns', async () => {
    await withGateThread(async ({ w, main, turns }) => {
      const done = message(w, 'done');
      w.postMessage({ holdMs: 0, turns: 300 });
      // The event loop writes back to back for 500 ms, as a burst of requests does; it is never idle.
      const end = performance.now() + 500;
      let mine = 0;
      while (performance.now() < end) {
        await main.acquireAsync();
        mine++;
        const busy = performance.now() + 0.05;
        while (performance.now() < busy);
        main.release();
      }
      const had = turns();
      await done;
      // The waiting thread is not starved: it is done long before the burst is.
      assert.equal(had, 300, `the thread had all its turns during the burst (${had} of 300)`);
      assert.ok(mine > 100, `the event loop had its turns too (${mine})`);
    });
  });

  test('a thread that died holding the gate is cleared away: the event loop does not wait for it', async () => {
    const buffer = newWriteGate();
    new Int32Array(buffer)[0] = 2; // held by the (dead) writer thread
    WorkerWriteGate.reset(buffer);
    const main = new MainWriteGate(buffer, 200);
    const t0 = performance.now();
    await main.acquireAsync();
    assert.ok(performance.now() - t0 < 50);
  });

  test('the event loop gives up with SQLITE_BUSY after its timeout rather than hang', async () => {
    const buffer = newWriteGate();
    new Int32Array(buffer)[0] = 2;
    const main = new MainWriteGate(buffer, 100);
    await assert.rejects(main.acquireAsync(), (e: Error & { code?: string }) => e.code === 'SQLITE_BUSY' && /write lock/.test(e.message));
  });
});

describe('two connections of one process writing one SQLite file', () => {
  test('transactions on the event loop that read, then write, never fail while another thread commits', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-gate-'));
    const store = openStore({ dataDir });
    let w: Worker | undefined;
    try {
      await sql`create table counters (name text primary key, n integer not null)`.execute(store.db);
      await sql`create table other_writes (id integer primary key, v text not null)`.execute(store.db);
      await sql`insert into counters (name, n) values ('c', 0)`.execute(store.db);
      // A second connection in another thread commits small transactions back to back, taking the gate
      // as the audit trail's writer thread does.
      w = new Worker(
        `const { parentPort, workerData } = require('node:worker_threads');
         const SQLite = require(workerData.sqlite);
         import(workerData.module).then(({ WorkerWriteGate }) => {
           const gate = new WorkerWriteGate(workerData.gate);
           const db = new SQLite(workerData.file);
           db.pragma('busy_timeout = 5000');
           const insert = db.prepare('insert into other_writes (v) values (?)');
           let stop = false;
           parentPort.on('message', () => { stop = true; });
           const loop = () => {
             for (let i = 0; i < 20 && !stop; i++) {
               gate.acquire();
               try { db.prepare('begin immediate').run(); insert.run('x'.repeat(200)); insert.run('y'); db.prepare('commit').run(); } finally { gate.release(); }
             }
             if (stop) { db.close(); parentPort.postMessage('stopped'); } else setImmediate(loop);
           };
           parentPort.postMessage('started');
           loop();
         });`,
        { eval: true, workerData: { module: GATE_MODULE, sqlite: createRequire(import.meta.url).resolve('better-sqlite3'), gate: store.sqlite!.gate, file: store.sqlite!.file } },
      );
      await message(w, 'started');
      // Read-then-write transactions: SQLite refuses the write (SQLITE_BUSY, no waiting) when another
      // connection committed after this transaction's first read, unless the two take turns.
      const db = store.db as unknown as import('kysely').Kysely<{ counters: { name: string; n: number } }>;
      const t0 = performance.now();
      for (let i = 0; i < 300; i++) {
        await db.transaction().execute(async (trx) => {
          const { n } = await trx.selectFrom('counters').select('n').where('name', '=', 'c').executeTakeFirstOrThrow();
          await new Promise((r) => setImmediate(r));
          await trx.updateTable('counters').set({ n: n + 1 }).where('name', '=', 'c').execute();
        });
      }
      const elapsed = performance.now() - t0;
      const stopped = message(w, 'stopped');
      w.postMessage('stop');
      await stopped;
      const { n } = await db.selectFrom('counters').select('n').where('name', '=', 'c').executeTakeFirstOrThrow();
      assert.equal(n, 300, 'every increment landed');
      const other = (await sql<{ c: number }>`select count(*) as c from other_writes`.execute(store.db)).rows[0]!.c;
      assert.ok(other >= 20, `the other thread committed meanwhile (${other} rows)`);
      assert.ok(elapsed < 20_000, `300 transactions took ${elapsed.toFixed(0)} ms`);
    } finally {
      await w?.terminate();
      await store.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('changes and their traces written from two threads', { skip: DB !== 'sqlite' && 'the gate is SQLite-only' }, () => {
  let s: TestServer;
  let a: Tenant;
  before(async () => {
    s = await startTestServer();
    a = await s.createTenant();
  });
  after(() => s?.close());

  test('300 concurrent changes all succeed, and the trail is one unbroken chain with a trace for each', async () => {
    const N = 300;
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        i % 3 === 2
          ? s.api('GET', '/v3/groups', { token: a.token })
          : s.api('POST', '/v3/groups', { token: a.token, body: { group: { name: `g-${i}`, description: 'burst' } } }),
      ),
    );
    const statuses = results.map((r) => r.status);
    assert.deepEqual([...new Set(statuses)].sort(), [200, 201], `every request succeeded: ${results.find((r) => r.status >= 300)?.text ?? ''}`);
    const groups = (await s.api('GET', '/v3/groups', { token: a.token })).json.groups as { name: string }[];
    assert.equal(groups.filter((g) => g.name.startsWith('g-')).length, N - Math.floor(N / 3));

    const rows = (await sql`select * from audit_traces where trail = ${a.accountId} order by seq`.execute(s.custos.store.db)).rows as TraceRow[];
    const created = rows.filter((r) => r.trace_name === 'iam:groups:createGroup' && r.code === 201);
    assert.equal(created.length, N - Math.floor(N / 3), 'a trace for each change');
    let prev: string | null = null;
    for (const [i, r] of rows.entries()) {
      const t = fromRow(r);
      assert.equal(t.seq, i + 1, 'no gap in the trail');
      if (prev !== null) assert.equal(t.prev_hash, prev, `trace ${t.seq} links to the one before`);
      assert.equal(traceHash(t.prev_hash, t), t.hash, `trace ${t.seq} is intact`);
      prev = t.hash;
    }
  });
});

// The audit trail's SQLite writer (the writer thread's half): a batch that fails is rolled back whole,
// and a trail whose first batch was rolled back is appended to normally afterwards (its head row,
// made by the failed batch, went with it and is made again).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import SQLite from 'better-sqlite3';
import { SqliteTrailWriter } from '../../src/audit/append-sqlite.js';
import { genesisHash } from '../../src/audit/chain.js';
import type { RequestTrace } from '../../src/audit/trace.js';
import { configureWriter, migrate, openStore } from '../../src/store/db.js';
import { newWriteGate, WorkerWriteGate } from '../../src/store/write-gate.js';

const trace = (accountId: string, i: number): RequestTrace => ({
  traceName: 'iam:groups:listGroups', traceType: 'management', traceRating: 'normal', serviceType: 'IAM', resourceType: 'group', resourceId: null, resourceName: null,
  accountId, projectId: null, region: null, user: { accountId, accountName: 'acme', userId: 'u1', userName: 'admin', accessKeyId: null, agency: null, authMethod: 'token' },
  sourceIp: '127.0.0.1', userAgent: null, requestId: `r-${i}`, httpMethod: 'GET', apiPath: '/v3/groups', code: 200, errorCode: null, time: Date.now(),
});

test("a trail whose first batch was rolled back is appended to afterwards, from its genesis", async () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-append-'));
  const store = openStore({ dataDir });
  try {
    await migrate(store);
    const db = new SQLite(store.sqlite!.file);
    configureWriter(db);
    const writer = new SqliteTrailWriter(db, Buffer.alloc(32, 7), new WorkerWriteGate(newWriteGate()));
    // The batch fails after the new trail's head row was made (the trace table is unavailable).
    db.exec('alter table audit_traces rename to audit_traces_offline');
    assert.throws(() => writer.append([trace('acct-a', 1), trace('acct-b', 2)], Date.now()), /no such table/);
    db.exec('alter table audit_traces_offline rename to audit_traces');
    assert.equal((db.prepare("select count(*) as n from audit_heads where trail in ('acct-a', 'acct-b')").get() as { n: number }).n, 0, 'the failed batch left nothing behind');
    writer.append([trace('acct-a', 3)], Date.now());
    writer.append([trace('acct-a', 4), trace('acct-b', 5)], Date.now());
    const rows = db.prepare("select trail, seq, prev_hash from audit_traces order by trail, seq").all() as { trail: string; seq: number; prev_hash: string }[];
    assert.deepEqual(rows.map((r) => `${r.trail}#${r.seq}`), ['acct-a#1', 'acct-a#2', 'acct-b#1']);
    assert.equal(rows[0]!.prev_hash, genesisHash('acct-a'));
    assert.equal(rows[2]!.prev_hash, genesisHash('acct-b'));
    db.close();
  } finally {
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

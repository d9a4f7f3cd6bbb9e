// Hot statements run prepared on PostgreSQL (preparedQuery): parsed and planned once per connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CompiledQuery, sql } from 'kysely';
import { openStore, preparedQuery } from '../../src/store/db.js';
import { DB, freshDatabase } from '../helpers.js';

test('a text given to preparedQuery runs as a named prepared statement on PostgreSQL; other queries do not', { skip: DB !== 'postgres' && 'PostgreSQL only (SQLite keeps every statement prepared)' }, async () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-prepared-'));
  const database = await freshDatabase();
  const store = openStore({ dataDir, databaseUrl: database.url! });
  try {
    const hot = `select $1::int + 1 as n /* ${dataDir} */`;
    const cold = `select $1::int + 2 as n /* ${dataDir} */`;
    // One transaction: one connection, whose session's prepared statements pg_prepared_statements lists.
    const seen = await store.db.transaction().execute(async (trx) => {
      for (let i = 0; i < 3; i++) {
        assert.deepEqual((await trx.executeQuery(preparedQuery<{ n: number }>(hot, [i]))).rows, [{ n: i + 1 }]);
        assert.deepEqual((await trx.executeQuery(CompiledQuery.raw(cold, [i]))).rows, [{ n: i + 2 }]);
      }
      return (await sql<{ statement: string }>`select statement from pg_prepared_statements where name like 'custos_%'`.execute(trx)).rows.map((r) => r.statement);
    });
    assert.deepEqual(seen, [hot]);
  } finally {
    await store.close();
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

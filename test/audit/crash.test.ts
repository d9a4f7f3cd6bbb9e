// Crash test: kill -9 a server process under write load, restart it on the same storage, and check
// that the trail verifies and that every request the server acknowledged has its trace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freshDatabase } from '../helpers.js';
import { CLI_MAIN, startServerProcess } from '../process.js';

const run = promisify(execFile);

test('after kill -9 under load the trail verifies and no acknowledged request lacks its trace', { timeout: 120_000 }, async () => {
  const database = await freshDatabase();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-crash-'));
  const exportDir = mkdtempSync(path.join(tmpdir(), 'custos-crash-export-'));
  const dbArgs = database.url ? ['--database-url', database.url] : [];
  try {
    const first = await startServerProcess({ dataDir, ...(database.url ? { databaseUrl: database.url } : {}) });
    const tenant = await first.createTenant('crashco');
    const acked: string[] = [];
    let stop = false;
    let n = 0;
    const worker = async (w: number) => {
      while (!stop) {
        const rid = `crash-${w}-${String(++n).padStart(6, '0')}`;
        try {
          const r = await fetch(`${first.url}/v3/groups`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'x-auth-token': tenant.token, 'x-request-id': rid },
            body: JSON.stringify({ group: { name: `g-${rid}` } }),
          });
          await r.arrayBuffer();
          if (r.status === 201) acked.push(rid);
        } catch {
          return; // the server is gone
        }
      }
    };
    const workers = Array.from({ length: 8 }, (_, w) => worker(w));
    while (acked.length < 150) await new Promise((r) => setTimeout(r, 20));
    await first.kill();
    stop = true;
    await Promise.all(workers);
    assert.ok(acked.length >= 150);

    const second = await startServerProcess({ dataDir, ...(database.url ? { databaseUrl: database.url } : {}) });
    try {
      // Every acknowledged creation is in the trail, read back over the API.
      const projects = (await (await fetch(`${second.url}/v3/auth/projects`, { headers: { 'x-auth-token': tenant.token } })).json()) as { projects: { id: string }[] };
      const seen = new Set<string>();
      let next: string | null = null;
      do {
        const q: URLSearchParams = new URLSearchParams({ trace_type: 'system', from: '0', limit: '200', trace_name: 'iam:groups:createGroup', ...(next ? { next } : {}) });
        const r: Response = await fetch(`${second.url}/v3/${projects.projects[0]!.id}/traces?${q.toString()}`, { headers: { 'x-auth-token': tenant.token } });
        assert.equal(r.status, 200);
        const body = (await r.json()) as { traces: { request_id: string; code: string }[]; meta_data: { marker: string | null } };
        for (const t of body.traces) if (t.code === '201') seen.add(t.request_id);
        next = body.meta_data.marker;
      } while (next);
      const lost = acked.filter((rid) => !seen.has(rid));
      assert.deepEqual(lost, [], `${lost.length} acknowledged requests have no trace`);

      // The whole trail still verifies offline, digests included.
      await run(process.execPath, [CLI_MAIN, 'audit', 'digest', '--force', '--data-dir', dataDir, ...dbArgs]);
      await run(process.execPath, [CLI_MAIN, 'audit', 'export', '--out', exportDir, '--data-dir', dataDir, ...dbArgs]);
      const v = await run(process.execPath, [CLI_MAIN, 'audit', 'verify', exportDir, '-o', 'json']);
      const report = JSON.parse(v.stdout) as { ok: boolean; trails: { traces: number }[] };
      assert.equal(report.ok, true, v.stdout);
      assert.ok(report.trails.reduce((s, t) => s + t.traces, 0) >= acked.length);
    } finally {
      await second.stop();
    }
  } finally {
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(exportDir, { recursive: true, force: true });
  }
});

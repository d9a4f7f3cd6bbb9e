// The local blob store: whole-or-nothing writes, range reads, listing, and cleanup after interrupted writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { FsBlobStore } from '../../src/store/blobs.js';

test('write, read ranges, size, list and delete', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'custos-blobs-'));
  try {
    const store = new FsBlobStore(root);
    const data = randomBytes(300_000);
    const { bytes } = await store.write('blob-0001', Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
    assert.equal(bytes, data.length);
    assert.equal(await store.size('blob-0001'), data.length);
    assert.deepEqual(await store.readAt('blob-0001', 12_345, 1000), data.subarray(12_345, 13_345));
    assert.deepEqual(await store.readAt('blob-0001', data.length - 10, 100), data.subarray(data.length - 10), 'short at the end');
    const listed: string[] = [];
    for await (const b of store.list()) listed.push(b.id);
    assert.deepEqual(listed, ['blob-0001']);
    await store.delete('blob-0001');
    assert.equal(await store.size('blob-0001'), null);
    await assert.rejects(store.write('../escape', Readable.from([data])), /invalid blob id/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a write that fails midway leaves no blob and no temporary file; an old interrupted write is cleared', async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'custos-blobs-'));
  try {
    const store = new FsBlobStore(root);
    const failing = Readable.from((async function* () {
      yield randomBytes(100_000);
      throw new Error('client went away');
    })());
    await assert.rejects(store.write('blob-0002', failing), /client went away/);
    assert.equal(await store.size('blob-0002'), null, 'nothing visible under the id');
    assert.deepEqual(readdirSync(path.join(root, '.tmp')), [], 'the temporary file is gone');
    // What a crash (kill -9) would leave: a temporary file nobody removed.
    writeFileSync(path.join(root, '.tmp', 'blob-0003.abcdef'), randomBytes(10));
    assert.equal(await store.clearInterruptedWrites(60_000, Date.now() + 120_000), 1);
    assert.deepEqual(readdirSync(path.join(root, '.tmp')), []);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

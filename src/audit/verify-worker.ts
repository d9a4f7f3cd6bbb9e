// Worker thread of verify-parallel.ts: reads export files of traces and checks each trace's content
// against its hash, handing back only what the ordering and digest checks need.
import { readFile } from 'node:fs/promises';
import { parentPort } from 'node:worker_threads';
import { gunzipSync } from 'node:zlib';
import { toLink, TRACES_FORMAT, type StoredTrace } from './chain.js';

parentPort!.on('message', async (msg: { files: { index: number; path: string }[] }) => {
  for (const f of msg.files) {
    try {
      const raw = await readFile(f.path);
      const doc = JSON.parse((f.path.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8')) as { format?: string; traces?: StoredTrace[] };
      const links = doc.format === TRACES_FORMAT && Array.isArray(doc.traces) ? doc.traces.map(toLink) : [];
      parentPort!.postMessage({ index: f.index, links });
    } catch {
      parentPort!.postMessage({ index: f.index, error: `${f.path} is not a readable export file` });
    }
  }
  parentPort!.postMessage({ done: true });
});

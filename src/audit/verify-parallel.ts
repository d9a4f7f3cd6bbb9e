/**
 * Reads an export directory for `custos audit verify`, spreading the expensive part — decompressing,
 * parsing and re-hashing every trace — over worker threads, one per core. The ordering, linking and
 * digest checks then run once over the compact results, in file order (verifyTrail).
 */
import { availableParallelism } from 'node:os';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { gunzipSync } from 'node:zlib';
import { DIGEST_FORMAT, KEYS_FORMAT, RANGE_FORMAT, type Digest, type PublicKeyInfo, type TraceLink } from './chain.js';

/** Every file under `dir`, sorted by path (so trace files come in the order of their first position). */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out.sort();
}

async function readJson(file: string): Promise<unknown> {
  const raw = await readFile(file);
  try {
    return JSON.parse((file.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8'));
  } catch {
    throw Object.assign(new Error(`${file} is not a readable export file`), { exitCode: 1 });
  }
}

/** What an export's files other than traces hold: digests, public keys, where each trail starts. */
export interface ExportMeta {
  digests: Map<string, Digest>;
  keys: PublicKeyInfo[];
  exportedFrom: Record<string, number>;
}

export function newExportMeta(): ExportMeta {
  return { digests: new Map(), keys: [], exportedFrom: {} };
}

/**
 * Takes in one parsed export document (digests, keys or a range). Of several ranges for one trail the
 * earliest start counts: a later one never narrows what the verifier checks.
 */
export function addExportDoc(meta: ExportMeta, doc: { format?: string; digests?: Digest[]; keys?: PublicKeyInfo[]; trail?: string; from_seq?: number }, keysGiven: boolean): void {
  if (doc.format === DIGEST_FORMAT && doc.digests) for (const d of doc.digests) meta.digests.set(`${d.trail}/${d.digest_seq}/${d.signature}`, d);
  else if (doc.format === KEYS_FORMAT && doc.keys && !keysGiven) meta.keys = doc.keys;
  else if (doc.format === RANGE_FORMAT && typeof doc.trail === 'string' && typeof doc.from_seq === 'number') {
    meta.exportedFrom[doc.trail] = Math.min(meta.exportedFrom[doc.trail] ?? Number.POSITIVE_INFINITY, doc.from_seq);
  }
}

/** Public keys from a file the auditor fetched (`custos audit public-keys --save`). */
export async function readKeysFile(file: string): Promise<PublicKeyInfo[]> {
  const doc = JSON.parse(await readFile(file, 'utf8')) as { keys?: PublicKeyInfo[]; public_keys?: PublicKeyInfo[] };
  return doc.keys ?? doc.public_keys ?? [];
}

export async function loadExportChecked(
  dir: string,
  opts: { keysFile?: string; threads?: number; onProgress?: (tracesRead: number) => void } = {},
): Promise<{ links: TraceLink[]; digests: Digest[]; keys: PublicKeyInfo[]; exportedFrom: Record<string, number> }> {
  const files = (await filesUnder(dir)).filter((f) => f.endsWith('.json.gz') || f.endsWith('.json'));
  const traceFiles = files.filter((f) => path.basename(f).startsWith('traces-'));
  const meta = newExportMeta();
  for (const f of files.filter((x) => !path.basename(x).startsWith('traces-'))) addExportDoc(meta, (await readJson(f)) as Parameters<typeof addExportDoc>[1], opts.keysFile !== undefined);
  const keys = opts.keysFile ? await readKeysFile(opts.keysFile) : meta.keys;

  const results: TraceLink[][] = new Array(traceFiles.length);
  const n = Math.max(1, Math.min(opts.threads ?? availableParallelism(), traceFiles.length));
  let read = 0;
  await Promise.all(
    Array.from({ length: n }, (_, w) => {
      const mine = traceFiles.map((p, index) => ({ index, path: p })).filter((f) => f.index % n === w);
      if (mine.length === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const worker = new Worker(new URL('./verify-worker.js', import.meta.url));
        worker.on('message', (m: { index?: number; links?: TraceLink[]; error?: string; done?: boolean }) => {
          if (m.error) {
            void worker.terminate();
            reject(Object.assign(new Error(m.error), { exitCode: 1 }));
          } else if (m.done) {
            void worker.terminate().then(() => resolve());
          } else if (m.index !== undefined && m.links) {
            results[m.index] = m.links;
            read += m.links.length;
            opts.onProgress?.(read);
          }
        });
        worker.on('error', reject);
        worker.postMessage({ files: mine });
      });
    }),
  );
  return { links: results.flat(), digests: [...meta.digests.values()], keys, exportedFrom: meta.exportedFrom };
}

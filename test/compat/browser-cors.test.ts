// CORS as a browser enforces it: headless Chromium (Debian's chromium) loads a page from one
// loopback origin that uploads to and downloads from the S3 listener (another origin) through
// presigned URLs. An origin the bucket's CORS rules allow can read the answers; another origin's
// page is refused by the browser itself.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CreateBucketCommand, GetObjectCommand, PutBucketCorsCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { available, CLIENTS_REQUIRED } from '../clients.js';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { s3Client } from '../s3.js';

const chromium = ['chromium', 'chromium-browser', 'google-chrome'].find((c) => available(c, ['--version']));
const skip = !chromium && !CLIENTS_REQUIRED ? 'Chromium is not installed (apt-get install -y chromium)' : false;

let s: TestServer;
let t: Tenant;
let client: S3Client;
let pages: Server;
let pageBase = '';
/** The page each path serves: a script that runs `steps` and writes what happened into the body. */
const pageScripts = new Map<string, string>();

before(async () => {
  if (skip) return;
  s = await startTestServer();
  t = await s.createTenant();
  client = await s3Client(s, t, { config: { requestChecksumCalculation: 'WHEN_REQUIRED' } });
  await client.send(new CreateBucketCommand({ Bucket: 'webapp' }));
  await client.send(new PutObjectCommand({ Bucket: 'webapp', Key: 'hello.txt', Body: 'hello from custos' }));
  pages = createServer((req, res) => {
    const script = pageScripts.get(req.url ?? '');
    if (!script) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><html><body>pending<script>${script}</script></body></html>`);
  });
  await new Promise<void>((resolve) => pages.listen(0, '127.0.0.1', resolve));
  // Another port is another origin: the page at 127.0.0.1:<pages> calls the listener at 127.0.0.1:<obs>.
  pageBase = `http://127.0.0.1:${(pages.address() as AddressInfo).port}`;
});
after(async () => {
  client?.destroy();
  await new Promise((resolve) => (pages ? pages.close(resolve) : resolve(undefined)));
  await s?.close();
});

/** Loads the page in headless Chromium and returns the text the page's script wrote. */
async function browse(page: string, script: string): Promise<string> {
  pageScripts.set(page, script);
  const profile = mkdtempSync(path.join(tmpdir(), 'custos-chromium-'));
  try {
    const { stdout } = await promisify(execFile)(chromium!, [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', `--user-data-dir=${profile}`,
      '--virtual-time-budget=10000', '--dump-dom', `${pageBase}${page}`,
    ], { timeout: 60_000 });
    const m = /<body>([\s\S]*?)(<script>|<\/body>)/.exec(stdout);
    return (m?.[1] ?? stdout).trim();
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

/** A page script that PUTs (a preflighted request: it carries a content type and metadata) and then GETs. */
function uploadThenDownload(putUrl: string, getUrl: string): string {
  return `(async () => {
    const out = [];
    try {
      const put = await fetch(${JSON.stringify(putUrl)}, { method: 'PUT', body: 'written by a page', headers: { 'content-type': 'text/plain' } });
      out.push('PUT ' + put.status + ' etag=' + (put.headers.get('etag') ? 'visible' : 'hidden'));
    } catch (e) { out.push('PUT blocked'); }
    try {
      const get = await fetch(${JSON.stringify(getUrl)});
      out.push('GET ' + get.status + ' ' + (await get.text()));
    } catch (e) { out.push('GET blocked'); }
    document.body.textContent = out.join(' | ');
  })();`;
}

test('a page on an origin the bucket allows uploads and reads; a page on another origin is stopped by the browser', { skip, timeout: 180_000 }, async () => {
  await client.send(new PutBucketCorsCommand({
    Bucket: 'webapp',
    CORSConfiguration: { CORSRules: [{ AllowedOrigins: [pageBase], AllowedMethods: ['GET', 'PUT'], AllowedHeaders: ['*'], ExposeHeaders: ['ETag'] }] },
  }));
  const putUrl = await getSignedUrl(client, new PutObjectCommand({ Bucket: 'webapp', Key: 'from-page.txt', ContentType: 'text/plain' }), { expiresIn: 300 });
  const getUrl = await getSignedUrl(client, new GetObjectCommand({ Bucket: 'webapp', Key: 'hello.txt' }), { expiresIn: 300 });
  const allowed = await browse('/allowed', uploadThenDownload(putUrl, getUrl));
  assert.equal(allowed, 'PUT 200 etag=visible | GET 200 hello from custos');
  const stored = await client.send(new GetObjectCommand({ Bucket: 'webapp', Key: 'from-page.txt' }));
  assert.equal(await stored.Body!.transformToString(), 'written by a page');

  // Rules that no longer name the page's origin: the browser refuses to hand either answer to the page.
  // (The preflighted PUT still reaches the server and is judged by its signature alone: CORS decides
  // what a page may read, not what a signed request may do.)
  await client.send(new PutBucketCorsCommand({
    Bucket: 'webapp',
    CORSConfiguration: { CORSRules: [{ AllowedOrigins: ['https://app.example.com'], AllowedMethods: ['GET', 'PUT'], AllowedHeaders: ['*'] }] },
  }));
  const refused = await browse('/refused', uploadThenDownload(putUrl, getUrl));
  assert.equal(refused, 'PUT blocked | GET blocked');
});

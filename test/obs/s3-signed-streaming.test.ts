// Signed streaming uploads (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]): AWS's
// published chunked-upload examples as known answers for the verifier, then real HTTP uploads whose
// request signature comes from @smithy/signature-v4 and whose chunk signatures the test chains itself.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { crc32 } from 'node:zlib';
import { Sha256 } from '@aws-crypto/sha256-js';
import { Crc32c } from '@aws-sdk/checksums/crc';
import { SignatureV4 } from '@smithy/signature-v4';
import {
  CompleteMultipartUploadCommand, CreateBucketCommand, CreateMultipartUploadCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { parseSignature, verifySignature, type ChunkSigner, type SignedRequestInput } from '../../src/iam/signing.js';
import { AwsChunkedDecoder, MAX_SIGNED_CHUNK } from '../../src/obs/http/chunked.js';
import { ObsError } from '../../src/obs/obs.js';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { accessKey } from '../s3.js';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const EMPTY = sha256('');

// ---- AWS's examples: "Signature Calculations for the Authorization Header: Transferring Payload in
// Multiple Chunks" and "... Including Trailing Headers": 65 KiB of 'a' in chunks of 64 KiB, 1 KiB, 0.
const EXAMPLE_SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
const EXAMPLE_TIME = new Date(Date.UTC(2013, 4, 24));
const EXAMPLE_DATA = Buffer.alloc(66560, 'a');
const EXAMPLE = {
  seed: '4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9',
  chunks: ['ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648', '0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497', 'b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9'],
};
const TRAILER_EXAMPLE = {
  seed: '106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e',
  chunks: ['b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2', '1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7', '2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992'],
  trailer: 'x-amz-checksum-crc32c:sOO8/Q==',
  trailerSignature: 'd81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435',
};

/** The example request, authenticated as the server does (at the example's own time, not the server clock). */
function exampleSigner(withTrailer: boolean): ChunkSigner {
  const headers: Record<string, string> = {
    host: 's3.amazonaws.com', 'x-amz-date': '20130524T000000Z', 'x-amz-storage-class': 'REDUCED_REDUNDANCY', 'content-encoding': 'aws-chunked', 'x-amz-decoded-content-length': '66560',
    ...(withTrailer ? { 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER', 'x-amz-trailer': 'x-amz-checksum-crc32c' } : { 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD', 'content-length': '66824' }),
  };
  const signed = Object.keys(headers).sort().join(';');
  headers.authorization = `AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=${signed},Signature=${withTrailer ? TRAILER_EXAMPLE.seed : EXAMPLE.seed}`;
  const req: SignedRequestInput = { method: 'PUT', path: '/examplebucket/chunkObject.txt', query: '', headers, body: Buffer.alloc(0), streamedBody: true };
  const signer = verifySignature(req, parseSignature(req)!, EXAMPLE_SECRET, EXAMPLE_TIME, 900);
  assert.ok(signer, 'a header-signed streaming request yields a chunk signer');
  return signer;
}
function exampleBody(signatures: string[], trailer?: { line: string; signature: string }): Buffer {
  const parts = [EXAMPLE_DATA.subarray(0, 65536), EXAMPLE_DATA.subarray(65536), Buffer.alloc(0)];
  const out: Buffer[] = [];
  parts.forEach((p, i) => {
    out.push(Buffer.from(`${p.length.toString(16)};chunk-signature=${signatures[i]}\r\n`), p);
    if (p.length > 0) out.push(Buffer.from('\r\n'));
  });
  out.push(Buffer.from(trailer ? `${trailer.line}\r\nx-amz-trailer-signature:${trailer.signature}\r\n\r\n` : '\r\n'));
  return Buffer.concat(out);
}
/** Runs a body through the decoder in awkward pieces; the decoded bytes, or the error it fails with. */
async function decode(body: Buffer, decoder: AwsChunkedDecoder, piece = 997): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < body.length; i += piece) pieces.push(body.subarray(i, i + piece));
  const out: Buffer[] = [];
  await pipeline(Readable.from(pieces), decoder, new Writable({ write: (c: Buffer, _e, done) => void (out.push(c), done()) }));
  return Buffer.concat(out);
}
const refused = (status: number, code: string) => (e: unknown) => e instanceof ObsError && e.status === status && e.code === code;

describe('signed streaming: known answers from the AWS examples', () => {
  test('the seed signature verifies and the chunk signatures chain from it (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)', async () => {
    const signer = exampleSigner(false);
    assert.equal(signer.seedSignature, EXAMPLE.seed);
    const first = signer.chunkSignature(EXAMPLE.seed, sha256(EXAMPLE_DATA.subarray(0, 65536)));
    assert.equal(first, EXAMPLE.chunks[0]);
    const second = signer.chunkSignature(first, sha256(EXAMPLE_DATA.subarray(65536)));
    assert.equal(second, EXAMPLE.chunks[1]);
    assert.equal(signer.chunkSignature(second, EMPTY), EXAMPLE.chunks[2]);
    const body = exampleBody(EXAMPLE.chunks);
    assert.equal(body.length, 66824, 'the example body has its published Content-Length');
    assert.ok((await decode(body, new AwsChunkedDecoder({ signer, trailer: false, decodedLength: 66560 }))).equals(EXAMPLE_DATA));
    // The key stays inside the signer.
    assert.equal(JSON.stringify({ signer }), '{"signer":"[ChunkSigner]"}');
  });

  test('the trailer example: chunks, then x-amz-checksum-crc32c signed by x-amz-trailer-signature', async () => {
    const signer = exampleSigner(true);
    const trailer = { line: TRAILER_EXAMPLE.trailer, signature: TRAILER_EXAMPLE.trailerSignature };
    const decoder = new AwsChunkedDecoder({ signer, trailer: true, decodedLength: 66560 });
    assert.ok((await decode(exampleBody(TRAILER_EXAMPLE.chunks, trailer), decoder, 4096)).equals(EXAMPLE_DATA));
    assert.equal(decoder.trailers['x-amz-checksum-crc32c'], 'sOO8/Q==');
    const c = new Crc32c();
    c.update(EXAMPLE_DATA);
    assert.equal(Buffer.from(await c.digest()).toString('base64'), 'sOO8/Q==', 'the example trailer is the content\'s CRC32C');
    // The same body with the trailer's value changed no longer matches its signature.
    const forged = { line: 'x-amz-checksum-crc32c:AAAAAA==', signature: TRAILER_EXAMPLE.trailerSignature };
    await assert.rejects(decode(exampleBody(TRAILER_EXAMPLE.chunks, forged), new AwsChunkedDecoder({ signer, trailer: true })), refused(403, 'SignatureDoesNotMatch'));
    // Cut before the empty line that ends the trailer.
    await assert.rejects(decode(exampleBody(TRAILER_EXAMPLE.chunks, trailer).subarray(0, -2), new AwsChunkedDecoder({ signer, trailer: true })), refused(400, 'IncompleteBody'));
    // No trailer signature at all.
    const unsigned = Buffer.concat([exampleBody(TRAILER_EXAMPLE.chunks).subarray(0, -2), Buffer.from(`${TRAILER_EXAMPLE.trailer}\r\n\r\n`)]);
    await assert.rejects(decode(unsigned, new AwsChunkedDecoder({ signer, trailer: true })), refused(403, 'SignatureDoesNotMatch'));
  });

  test('a changed byte, swapped or dropped chunks, a missing signature, extra data and oversized chunks are refused', async () => {
    const signer = exampleSigner(false);
    const body = exampleBody(EXAMPLE.chunks);
    const fresh = () => new AwsChunkedDecoder({ signer, trailer: false });
    const tampered = Buffer.from(body);
    tampered[5000] = 'b'.charCodeAt(0);
    await assert.rejects(decode(tampered, fresh()), refused(403, 'SignatureDoesNotMatch'));
    // Chunk 2 sent first, each with its own (valid in its place) signature.
    const chunk1 = body.subarray(0, 88 + 65538);
    const chunk2 = body.subarray(88 + 65538, 88 + 65538 + 86 + 1026);
    const rest = body.subarray(88 + 65538 + 86 + 1026);
    await assert.rejects(decode(Buffer.concat([chunk2, chunk1, rest]), fresh()), refused(403, 'SignatureDoesNotMatch'));
    await assert.rejects(decode(Buffer.concat([chunk1, rest]), fresh()), refused(403, 'SignatureDoesNotMatch'), 'a dropped middle chunk breaks the chain');
    await assert.rejects(decode(Buffer.concat([chunk1, chunk2]), fresh()), refused(400, 'IncompleteBody'), 'no final chunk');
    await assert.rejects(decode(Buffer.concat([body, Buffer.from('0\r\n')]), fresh()), refused(400, 'IncompleteBody'), 'data after the end');
    await assert.rejects(decode(Buffer.from(body.toString('latin1').replace(`;chunk-signature=${EXAMPLE.chunks[1]}`, ''), 'latin1'), fresh()), refused(403, 'SignatureDoesNotMatch'));
    await assert.rejects(decode(Buffer.from(body.toString('latin1').replace(EXAMPLE.chunks[0]!, EXAMPLE.chunks[0]!.toUpperCase()), 'latin1'), fresh()), refused(403, 'SignatureDoesNotMatch'));
    await assert.rejects(decode(Buffer.from(`${(MAX_SIGNED_CHUNK + 1).toString(16)};chunk-signature=${EXAMPLE.chunks[0]}\r\naaaa`), fresh()), refused(400, 'InvalidRequest'));
    await assert.rejects(decode(body, new AwsChunkedDecoder({ signer, trailer: false, decodedLength: 1000 })), refused(400, 'IncompleteBody'), 'more than x-amz-decoded-content-length');
    // Trailers where the declared form has none.
    const withTrailer = Buffer.concat([body.subarray(0, -2), Buffer.from('x-amz-checksum-crc32:AAAAAA==\r\n\r\n')]);
    await assert.rejects(decode(withTrailer, fresh()), refused(400, 'IncompleteBody'));
    // An unsigned streaming body may not carry chunk signatures.
    await assert.rejects(decode(body, new AwsChunkedDecoder()), refused(400, 'InvalidRequest'));
  });
});

// ---- over HTTP
let s: TestServer;
let t: Tenant;
let region: string;
let credentials: { accessKeyId: string; secretAccessKey: string };
let client: S3Client;
let signer: SignatureV4;

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  credentials = await accessKey(s, t);
  region = t.projects[0]!.name;
  client = new S3Client({ endpoint: s.custos.obsUrl, region, forcePathStyle: true, credentials });
  signer = new SignatureV4({ service: 's3', region, credentials, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  await client.send(new CreateBucketCommand({ Bucket: 'streams' }));
});
after(async () => {
  client?.destroy();
  await s?.close();
});

interface Streamed {
  /** The chunks as the client sends them; an empty chunk ends the content. */
  chunks: Buffer[];
  trailer?: string;
  /** Changes the encoded body after signing (to tamper with it). */
  mangle?: (wire: Buffer[]) => Buffer[];
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** Leave out Content-Encoding: aws-chunked, as minio-go does over plain HTTP. */
  noContentEncoding?: boolean;
}
/**
 * A PUT signed by @smithy/signature-v4 with x-amz-content-sha256 STREAMING-AWS4-HMAC-SHA256-PAYLOAD
 * (or -TRAILER), its chunks signed as the AWS documentation describes: each over the previous
 * signature and its data's SHA-256, with the SDK's signing key for the request's date and scope.
 */
async function streamingPut(key: string, o: Streamed): Promise<{ status: number; text: string; headers: Headers; signingKeyHex: string }> {
  const u = new URL(s.custos.obsUrl);
  const content = Buffer.concat(o.chunks);
  const signingDate = new Date();
  const request = await signer.sign({
    method: 'PUT', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: `/streams/${key}`, query: o.query ?? {},
    headers: {
      host: u.host, ...(o.noContentEncoding ? {} : { 'content-encoding': 'aws-chunked' }), 'x-amz-decoded-content-length': String(content.length),
      'x-amz-content-sha256': o.trailer ? 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER' : 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD',
      ...(o.trailer ? { 'x-amz-trailer': o.trailer.slice(0, o.trailer.indexOf(':')) } : {}),
      ...o.headers,
    },
  }, { signingDate });
  const headers = request.headers as Record<string, string>;
  const amzDate = headers['x-amz-date']!;
  const scope = `${amzDate.slice(0, 8)}/${region}/s3/aws4_request`;
  let previous = /Signature=([0-9a-f]{64})/.exec(headers.authorization!)![1]!;
  const wire: Buffer[] = [];
  for (const chunk of o.chunks) {
    previous = await signer.sign(['AWS4-HMAC-SHA256-PAYLOAD', amzDate, scope, previous, EMPTY, sha256(chunk)].join('\n'), { signingDate });
    wire.push(Buffer.concat([Buffer.from(`${chunk.length.toString(16)};chunk-signature=${previous}\r\n`), chunk, Buffer.from(chunk.length ? '\r\n' : '')]));
  }
  if (o.trailer) {
    const trailerSignature = await signer.sign(['AWS4-HMAC-SHA256-TRAILER', amzDate, scope, previous, sha256(`${o.trailer}\n`)].join('\n'), { signingDate });
    wire.push(Buffer.from(`${o.trailer}\r\nx-amz-trailer-signature:${trailerSignature}\r\n\r\n`));
  } else wire.push(Buffer.from('\r\n'));
  const body = Buffer.concat(o.mangle ? o.mangle(wire) : wire);
  const q = new URLSearchParams(o.query ?? {}).toString();
  const res = await fetch(`${s.custos.obsUrl}/streams/${key}${q ? `?${q}` : ''}`, { method: 'PUT', headers, body: new Uint8Array(body) });
  // The key the chunks are signed with (to check it never shows up in what the server says or logs).
  const hm = (k: Buffer | string, d: string) => createHmac('sha256', k).update(d).digest();
  const signingKeyHex = hm(hm(hm(hm(`AWS4${credentials.secretAccessKey}`, amzDate.slice(0, 8)), region), 's3'), 'aws4_request').toString('hex');
  return { status: res.status, text: await res.text(), headers: res.headers, signingKeyHex };
}
const get = async (key: string) => Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'streams', Key: key }))).Body!.transformToByteArray());
async function absent(key: string): Promise<void> {
  await assert.rejects(client.send(new HeadObjectCommand({ Bucket: 'streams', Key: key })), { name: 'NotFound' }, `no object ${key} was stored`);
}
const split = (data: Buffer, size: number) => {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return [...out, Buffer.alloc(0)];
};

describe('signed streaming uploads over HTTP', () => {
  test('STREAMING-AWS4-HMAC-SHA256-PAYLOAD: several chunks are stored and read back byte for byte', async () => {
    const data = randomBytes(3 * 65536 + 1234);
    const r = await streamingPut('signed.bin', { chunks: split(data, 65536) });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('etag'), `"${createHash('md5').update(data).digest('hex')}"`);
    assert.ok((await get('signed.bin')).equals(data));
    // The framing is known from x-amz-content-sha256 alone: minio-go sends no Content-Encoding.
    const bare = await streamingPut('bare.bin', { chunks: split(data, 65536), noContentEncoding: true });
    assert.equal(bare.status, 200, bare.text);
    assert.ok((await get('bare.bin')).equals(data));
    // An empty object is one final chunk.
    assert.equal((await streamingPut('empty.bin', { chunks: [Buffer.alloc(0)] })).status, 200);
    assert.equal((await get('empty.bin')).length, 0);
    assert.ok(!s.logs().includes(r.signingKeyHex), 'the signing key is not logged');
  });

  test('STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER with an x-amz-checksum-crc32 trailer; a wrong checksum is BadDigest', async () => {
    const data = randomBytes(150_000);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(data) >>> 0);
    const trailer = `x-amz-checksum-crc32:${crc.toString('base64')}`;
    const r = await streamingPut('trailer.bin', { chunks: split(data, 65536), trailer });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-amz-checksum-crc32'), crc.toString('base64'));
    assert.ok((await get('trailer.bin')).equals(data));
    const head = await client.send(new HeadObjectCommand({ Bucket: 'streams', Key: 'trailer.bin', ChecksumMode: 'ENABLED' }));
    assert.equal(head.ChecksumCRC32, crc.toString('base64'));
    // Correctly signed, but not the content's checksum.
    const wrong = await streamingPut('wrong-sum.bin', { chunks: split(data, 65536), trailer: 'x-amz-checksum-crc32:AAAAAA==' });
    assert.equal(wrong.status, 400, wrong.text);
    assert.match(wrong.text, /<Code>BadDigest<\/Code>/);
    await absent('wrong-sum.bin');
    // The trailer's value changed after signing.
    const forged = await streamingPut('forged-trailer.bin', {
      chunks: split(data, 65536), trailer,
      mangle: (w) => [...w.slice(0, -1), Buffer.from(w.at(-1)!.toString('latin1').replace(crc.toString('base64'), 'AAAAAA=='), 'latin1')],
    });
    assert.equal(forged.status, 403, forged.text);
    assert.match(forged.text, /<Code>SignatureDoesNotMatch<\/Code>/);
    await absent('forged-trailer.bin');
  });

  test('a tampered byte is 403 SignatureDoesNotMatch; a dropped final chunk is 400 IncompleteBody; no object either way', async () => {
    const data = randomBytes(2 * 65536 + 100);
    const tampered = await streamingPut('tampered.bin', {
      chunks: split(data, 65536),
      mangle: (w) => w.map((c, i) => {
        if (i !== 1) return c;
        const copy = Buffer.from(c);
        copy[copy.length - 10]! ^= 1;
        return copy;
      }),
    });
    assert.equal(tampered.status, 403, tampered.text);
    assert.match(tampered.text, /<Code>SignatureDoesNotMatch<\/Code>/);
    assert.ok(!tampered.text.includes(tampered.signingKeyHex));
    await absent('tampered.bin');

    const truncated = await streamingPut('truncated.bin', { chunks: split(data, 65536), mangle: (w) => w.slice(0, -2) });
    assert.equal(truncated.status, 400, truncated.text);
    assert.match(truncated.text, /<Code>IncompleteBody<\/Code>/);
    await absent('truncated.bin');

    const reordered = await streamingPut('reordered.bin', { chunks: split(data, 65536), mangle: (w) => [w[1]!, w[0]!, ...w.slice(2)] });
    assert.equal(reordered.status, 403, reordered.text);
    await absent('reordered.bin');

    const extra = await streamingPut('extra.bin', { chunks: split(data, 65536), mangle: (w) => [...w, Buffer.from('5\r\nhello\r\n')] });
    assert.equal(extra.status, 400, extra.text);
    await absent('extra.bin');

    // x-amz-decoded-content-length must be the decoded size.
    const short = await streamingPut('short.bin', { chunks: split(data, 65536), headers: { 'x-amz-decoded-content-length': String(data.length + 1) } });
    assert.equal(short.status, 400, short.text);
    assert.match(short.text, /<Code>IncompleteBody<\/Code>/);
    await absent('short.bin');

    // An existing object is left as it was by a refused overwrite.
    assert.equal((await streamingPut('kept.bin', { chunks: [Buffer.from('first'), Buffer.alloc(0)] })).status, 200);
    const bad = await streamingPut('kept.bin', { chunks: [Buffer.from('second'), Buffer.alloc(0)], mangle: (w) => [Buffer.from(w[0]!.toString('latin1').replace('second', 'SECOND'), 'latin1'), ...w.slice(1)] });
    assert.equal(bad.status, 403);
    assert.equal((await get('kept.bin')).toString(), 'first');
    assert.ok(!s.logs().includes(bad.signingKeyHex), 'the signing key is not logged');
  });

  test('UploadPart takes signed chunks and the parts assemble into the object', async () => {
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'streams', Key: 'assembled.bin' }));
    const part1 = randomBytes(5 * 1024 * 1024 + 17);
    const part2 = randomBytes(70_000);
    const r1 = await streamingPut('assembled.bin', { chunks: split(part1, 1024 * 1024), query: { partNumber: '1', uploadId: UploadId! } });
    assert.equal(r1.status, 200, r1.text);
    const r2 = await streamingPut('assembled.bin', { chunks: split(part2, 65536), query: { partNumber: '2', uploadId: UploadId! } });
    assert.equal(r2.status, 200, r2.text);
    const bad = await streamingPut('assembled.bin', { chunks: split(part2, 65536), query: { partNumber: '3', uploadId: UploadId! }, mangle: (w) => w.slice(0, -1) });
    assert.equal(bad.status, 400, bad.text);
    await client.send(new CompleteMultipartUploadCommand({
      Bucket: 'streams', Key: 'assembled.bin', UploadId,
      MultipartUpload: { Parts: [{ PartNumber: 1, ETag: r1.headers.get('etag')! }, { PartNumber: 2, ETag: r2.headers.get('etag')! }] },
    }));
    assert.ok((await get('assembled.bin')).equals(Buffer.concat([part1, part2])));
  });

  test('signed streaming needs an Authorization-header signature: a presigned URL, a V2 signature or a token is 400 InvalidRequest', async () => {
    const body = Buffer.from(`5;chunk-signature=${'0'.repeat(64)}\r\nhello\r\n0;chunk-signature=${'0'.repeat(64)}\r\n\r\n`);
    const streamingHeaders = { 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD', 'content-encoding': 'aws-chunked', 'x-amz-decoded-content-length': '5' };
    const presigner = new S3Client({ endpoint: s.custos.obsUrl, region, forcePathStyle: true, credentials, requestChecksumCalculation: 'WHEN_REQUIRED' });
    const url = await getSignedUrl(presigner, new PutObjectCommand({ Bucket: 'streams', Key: 'presigned.bin' }), { expiresIn: 60 });
    presigner.destroy();
    const presigned = await fetch(url, { method: 'PUT', headers: streamingHeaders, body: new Uint8Array(body) });
    const text = await presigned.text();
    assert.equal(presigned.status, 400, text);
    assert.match(text, /<Code>InvalidRequest<\/Code>/);
    await absent('presigned.bin');

    const date = new Date().toUTCString();
    const sts = `PUT\n\n\n${date}\nx-amz-content-sha256:${streamingHeaders['x-amz-content-sha256']}\nx-amz-decoded-content-length:5\n/streams/v2.bin`;
    const v2 = await fetch(`${s.custos.obsUrl}/streams/v2.bin`, {
      method: 'PUT', body: new Uint8Array(body),
      headers: { ...streamingHeaders, date, authorization: `AWS ${credentials.accessKeyId}:${createHmac('sha1', credentials.secretAccessKey).update(sts).digest('base64')}` },
    });
    const v2Text = await v2.text();
    assert.equal(v2.status, 400, v2Text);
    assert.match(v2Text, /<Code>InvalidRequest<\/Code>/);
    await absent('v2.bin');

    const token = await fetch(`${s.custos.obsUrl}/streams/token.bin`, { method: 'PUT', headers: { ...streamingHeaders, 'x-auth-token': t.token }, body: new Uint8Array(body) });
    assert.equal(token.status, 400, await token.text());
    await absent('token.bin');
  });
});

// CRC32C and CRC64NVME checksums on uploads: @aws-sdk/client-s3 with ChecksumAlgorithm (a header for
// buffers, an aws-chunked trailer for streams), and raw SigV4-signed requests for the standard check
// values, trailers with wrong values and malformed declarations.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { crc32 } from 'node:zlib';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { Crc64Nvme } from '@aws-sdk/checksums/crc';
import { Upload } from '@aws-sdk/lib-storage';
import {
  CompleteMultipartUploadCommand, CopyObjectCommand, CreateBucketCommand, GetObjectTaggingCommand, CreateMultipartUploadCommand, GetObjectCommand, HeadObjectCommand, ListPartsCommand, PutObjectCommand, S3Client, UploadPartCommand,
} from '@aws-sdk/client-s3';
import { sdkFailure, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { accessKey, s3Client } from '../s3.js';

let s: TestServer;
let t: Tenant;
let client: S3Client;
let signer: SignatureV4;

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
  assert.equal(r.status, 201, r.text);
  const credentials = { accessKeyId: r.json.credential.access, secretAccessKey: r.json.credential.secret };
  const region = t.projects[0]!.name;
  client = new S3Client({ endpoint: s.custos.obsUrl, region, forcePathStyle: true, credentials });
  signer = new SignatureV4({ service: 's3', region, credentials, sha256: Sha256, uriEscapePath: false, applyChecksum: false });
  await client.send(new CreateBucketCommand({ Bucket: 'sums' }));
});
after(async () => {
  client?.destroy();
  await s?.close();
});

/** A SigV4-signed PUT of raw bytes (the payload itself unsigned, as streaming clients send it). */
async function signedPut(key: string, body: Buffer, headers: Record<string, string>): Promise<{ status: number; text: string; headers: Headers }> {
  const u = new URL(s.custos.obsUrl);
  const req = await signer.sign({
    method: 'PUT', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: `/sums/${key}`, query: {},
    headers: { host: u.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', ...headers },
  });
  const res = await fetch(`${s.custos.obsUrl}/sums/${key}`, { method: 'PUT', headers: req.headers as Record<string, string>, body: new Uint8Array(body) });
  return { status: res.status, text: await res.text(), headers: res.headers };
}
/** The aws-chunked encoding of `data` with one trailer line. */
function awsChunked(data: Buffer, trailer: string): Buffer {
  return Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from(`\r\n0\r\n${trailer}\r\n\r\n`)]);
}
const chunkedHeaders = (length: number, trailer: string) => ({ 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', 'content-encoding': 'aws-chunked', 'x-amz-decoded-content-length': String(length), 'x-amz-trailer': trailer });
const b64 = (hex: string) => Buffer.from(hex, 'hex').toString('base64');
// The catalogued check values of both CRCs over the ASCII digits 1 to 9.
const CHECK_INPUT = Buffer.from('123456789');
const CRC32C_CHECK = b64('e3069283');
const CRC64NVME_CHECK = b64('ae8b14860a799888');
const read = async (key: string) => Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'sums', Key: key }))).Body!.transformToByteArray());

describe('CRC32C and CRC64NVME checksums', () => {
  test('@aws-sdk/client-s3 uploads with ChecksumAlgorithm CRC32C and CRC64NVME (header and trailer) succeed; wrong values are BadDigest', async () => {
    for (const alg of ['CRC32C', 'CRC64NVME'] as const) {
      const data = randomBytes(300_000);
      const put = await client.send(new PutObjectCommand({ Bucket: 'sums', Key: `buffer-${alg}`, Body: data, ChecksumAlgorithm: alg }));
      assert.ok(alg === 'CRC32C' ? put.ChecksumCRC32C : put.ChecksumCRC64NVME, `the verified ${alg} is echoed`);
      assert.ok((await read(`buffer-${alg}`)).equals(data));
      // x-amz-checksum-mode: ENABLED returns the checksum kept with the object (and the SDK checks the body against it).
      const field = alg === 'CRC32C' ? 'ChecksumCRC32C' : 'ChecksumCRC64NVME';
      const got = await client.send(new GetObjectCommand({ Bucket: 'sums', Key: `buffer-${alg}`, ChecksumMode: 'ENABLED' }));
      assert.equal(got[field], put[field]);
      assert.equal(got.ChecksumType, 'FULL_OBJECT');
      assert.ok(Buffer.from(await got.Body!.transformToByteArray()).equals(data));
      assert.equal((await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: `buffer-${alg}`, ChecksumMode: 'ENABLED' })))[field], put[field]);
      assert.equal((await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: `buffer-${alg}` })))[field], undefined, 'only when asked for');
      const part = await client.send(new GetObjectCommand({ Bucket: 'sums', Key: `buffer-${alg}`, ChecksumMode: 'ENABLED', Range: 'bytes=0-99' }));
      assert.equal(part[field], undefined, 'not for a range');
      await part.Body!.transformToByteArray();
      // A stream goes as aws-chunked with the checksum in a trailer.
      const streamed = randomBytes(200_000);
      await client.send(new PutObjectCommand({ Bucket: 'sums', Key: `stream-${alg}`, Body: Readable.from([streamed.subarray(0, 70_000), streamed.subarray(70_000)]), ContentLength: streamed.length, ChecksumAlgorithm: alg }));
      assert.ok((await read(`stream-${alg}`)).equals(streamed));
      assert.ok((await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: `stream-${alg}`, ChecksumMode: 'ENABLED' })))[field], 'a trailer checksum is kept too');
      // A value that is not the content's: refused, nothing stored.
      const wrong = alg === 'CRC32C' ? { ChecksumCRC32C: b64('00000000') } : { ChecksumCRC64NVME: b64('0000000000000000') };
      await assert.rejects(client.send(new PutObjectCommand({ Bucket: 'sums', Key: `wrong-${alg}`, Body: data, ...wrong })), { name: 'BadDigest' });
      await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'sums', Key: `wrong-${alg}` })), { name: 'NoSuchKey' });
    }
    // Multipart parts with CRC32C.
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'sums', Key: 'parts', ChecksumAlgorithm: 'CRC32C' }));
    const part = randomBytes(100_000);
    const p1 = await client.send(new UploadPartCommand({ Bucket: 'sums', Key: 'parts', UploadId, PartNumber: 1, Body: part, ChecksumAlgorithm: 'CRC32C' }));
    assert.ok(p1.ChecksumCRC32C);
    await assert.rejects(client.send(new UploadPartCommand({ Bucket: 'sums', Key: 'parts', UploadId, PartNumber: 2, Body: part, ChecksumCRC32C: b64('00000000') })), { name: 'BadDigest' });
    await client.send(new CompleteMultipartUploadCommand({ Bucket: 'sums', Key: 'parts', UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag!, ChecksumCRC32C: p1.ChecksumCRC32C! }] } }));
    assert.ok((await read('parts')).equals(part));
  });

  test('raw signed requests: the standard check values pass, in a header and in a trailer; wrong or malformed ones are refused', async () => {
    for (const [name, value] of [['x-amz-checksum-crc32c', CRC32C_CHECK], ['x-amz-checksum-crc64nvme', CRC64NVME_CHECK]] as const) {
      const ok = await signedPut(`check-${name}`, CHECK_INPUT, { [name]: value });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.headers.get(name), value);
      const head = await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: `check-${name}`, ChecksumMode: 'ENABLED' }));
      assert.equal(name === 'x-amz-checksum-crc32c' ? head.ChecksumCRC32C : head.ChecksumCRC64NVME, value, 'the stored checksum is the catalogued check value');
      const trailed = await signedPut(`trailer-${name}`, awsChunked(CHECK_INPUT, `${name}:${value}`), chunkedHeaders(CHECK_INPUT.length, name));
      assert.equal(trailed.status, 200, trailed.text);
      assert.ok((await read(`trailer-${name}`)).equals(CHECK_INPUT));
      // The same value over other content is a wrong checksum, in either place.
      const other = Buffer.from('987654321');
      const bad = await signedPut(`bad-${name}`, other, { [name]: value });
      assert.equal(bad.status, 400);
      assert.match(bad.text, /<Code>BadDigest<\/Code>/);
      const badTrailer = await signedPut(`bad-trailer-${name}`, awsChunked(other, `${name}:${value}`), chunkedHeaders(other.length, name));
      assert.equal(badTrailer.status, 400);
      assert.match(badTrailer.text, /<Code>BadDigest<\/Code>/);
      await assert.rejects(client.send(new GetObjectCommand({ Bucket: 'sums', Key: `bad-trailer-${name}` })), { name: 'NoSuchKey' });
      // A value of the wrong length is not a checksum.
      const malformed = await signedPut(`malformed-${name}`, CHECK_INPUT, { [name]: b64('00') });
      assert.equal(malformed.status, 400);
      assert.match(malformed.text, /<Code>InvalidRequest<\/Code>/);
    }
    const two = await signedPut('two', CHECK_INPUT, { 'x-amz-checksum-crc32c': CRC32C_CHECK, 'x-amz-checksum-crc64nvme': CRC64NVME_CHECK });
    assert.equal(two.status, 400, 'one checksum per request');
    assert.match(two.text, /<Code>InvalidRequest<\/Code>/);
    const unknown = await signedPut('unknown', CHECK_INPUT, { 'x-amz-checksum-xxhash64': b64('0000000000000000') });
    assert.equal(unknown.status, 400, 'an algorithm that is not checked is not silently accepted');
    assert.match(unknown.text, /<Code>InvalidRequest<\/Code>/);
    const missing = await signedPut('missing-trailer', awsChunked(CHECK_INPUT, 'x-amz-meta-x:y'), chunkedHeaders(CHECK_INPUT.length, 'x-amz-checksum-crc32c'));
    assert.equal(missing.status, 400, 'an announced trailer that never comes');
  });

  test('presigned URLs: header values signed into the query apply (a checksum, metadata); the SDK\'s default empty-body CRC32 fails like on S3', async () => {
    // Since 3.729 the SDK signs the CRC32 of the (absent) body into a presigned PutObject URL by default.
    const credentials = await accessKey(s, t);
    const defaults = await s3Client(s, t, { credentials });
    const whenRequired = await s3Client(s, t, { credentials, config: { requestChecksumCalculation: 'WHEN_REQUIRED' } });
    try {
      const baked = await getSignedUrl(defaults, new PutObjectCommand({ Bucket: 'sums', Key: 'presigned-default' }), { expiresIn: 60 });
      assert.match(baked, /x-amz-checksum-crc32=AAAAAA%3D%3D/);
      const refused = await fetch(baked, { method: 'PUT', body: 'real content' });
      assert.equal(refused.status, 400);
      assert.match(await refused.text(), /<Code>BadDigest<\/Code>/);
      assert.equal((await fetch(await getSignedUrl(client, new HeadObjectCommand({ Bucket: 'sums', Key: 'presigned-default' }), { expiresIn: 60 }), { method: 'HEAD' })).status, 404, 'nothing stored');

      const url = await getSignedUrl(whenRequired, new PutObjectCommand({ Bucket: 'sums', Key: 'presigned-meta', Metadata: { owner: 'ana' } }), { expiresIn: 60 });
      assert.match(url, /x-amz-meta-owner=ana/, 'the SDK hoists metadata into the query');
      const ok = await fetch(url, { method: 'PUT', body: 'real content' });
      assert.equal(ok.status, 200, await ok.text());
      const head = await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: 'presigned-meta' }));
      assert.deepEqual(head.Metadata, { owner: 'ana' });
      // A correct checksum signed into the URL is verified and kept.
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE(crc32(Buffer.from('real content')) >>> 0);
      const withSum = await getSignedUrl(whenRequired, new PutObjectCommand({ Bucket: 'sums', Key: 'presigned-sum', ChecksumCRC32: crc.toString('base64') }), { expiresIn: 60 });
      assert.equal((await fetch(withSum, { method: 'PUT', body: 'real content' })).status, 200);
      const got = await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: 'presigned-sum', ChecksumMode: 'ENABLED' }));
      assert.equal(got.ChecksumCRC32, crc.toString('base64'));
    } finally {
      defaults.destroy();
      whenRequired.destroy();
    }
  });

  test('multipart: the composite checksum (CRC32 from @aws-sdk/lib-storage, SHA256 by hand) is kept and returned; wrong part checksums are refused', async () => {
    const MiB = 1024 * 1024;
    const body = randomBytes(12 * MiB);
    await new Upload({ client, params: { Bucket: 'sums', Key: 'multi-crc32', Body: body }, partSize: 5 * MiB }).done();
    const crcOf = (b: Buffer) => {
      const out = Buffer.alloc(4);
      out.writeUInt32BE(crc32(b) >>> 0);
      return out;
    };
    const parts = [body.subarray(0, 5 * MiB), body.subarray(5 * MiB, 10 * MiB), body.subarray(10 * MiB)];
    const expected = `${crcOf(Buffer.concat(parts.map(crcOf))).toString('base64')}-3`;
    const head = await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: 'multi-crc32', ChecksumMode: 'ENABLED' }));
    assert.equal(head.ChecksumCRC32, expected, 'S3\'s composite CRC32 of the three parts');
    assert.equal(head.ChecksumType, 'COMPOSITE');
    assert.equal(head.ContentLength, 12 * MiB);

    // SHA256 by hand: each part's checksum sent and named again in the completion.
    const sha = (b: Buffer) => createHash('sha256').update(b).digest();
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: 'sums', Key: 'multi-sha', ChecksumAlgorithm: 'SHA256' }));
    const p1 = body.subarray(0, 5 * MiB);
    const p2 = body.subarray(5 * MiB, 6 * MiB);
    const u1 = await client.send(new UploadPartCommand({ Bucket: 'sums', Key: 'multi-sha', UploadId, PartNumber: 1, Body: p1, ChecksumSHA256: sha(p1).toString('base64') }));
    const u2 = await client.send(new UploadPartCommand({ Bucket: 'sums', Key: 'multi-sha', UploadId, PartNumber: 2, Body: p2, ChecksumSHA256: sha(p2).toString('base64') }));
    // A part whose checksum is of another algorithm than the upload's is refused.
    assert.deepEqual(await sdkFailure(client.send(new UploadPartCommand({ Bucket: 'sums', Key: 'multi-sha', UploadId, PartNumber: 3, Body: p2, ChecksumAlgorithm: 'CRC32C' }))), { status: 400, code: 'InvalidRequest' });
    // The refusal came before the part's body was read: the connection is closed rather than left
    // with those bytes in it, so the next request (which may reuse a kept-alive socket) is answered at once.
    const listed = await client.send(new ListPartsCommand({ Bucket: 'sums', Key: 'multi-sha', UploadId }), { abortSignal: AbortSignal.timeout(15_000) });
    assert.deepEqual(listed.Parts?.map((p) => p.ChecksumSHA256), [sha(p1).toString('base64'), sha(p2).toString('base64')]);
    const wrong = await sdkFailure(client.send(new CompleteMultipartUploadCommand({ Bucket: 'sums', Key: 'multi-sha', UploadId, MultipartUpload: { Parts: [
      { PartNumber: 1, ETag: u1.ETag, ChecksumSHA256: sha(p2).toString('base64') }, { PartNumber: 2, ETag: u2.ETag, ChecksumSHA256: sha(p2).toString('base64') },
    ] } })));
    assert.deepEqual(wrong, { status: 400, code: 'InvalidPart' });
    const done = await client.send(new CompleteMultipartUploadCommand({ Bucket: 'sums', Key: 'multi-sha', UploadId, MultipartUpload: { Parts: [
      { PartNumber: 1, ETag: u1.ETag, ChecksumSHA256: sha(p1).toString('base64') }, { PartNumber: 2, ETag: u2.ETag, ChecksumSHA256: sha(p2).toString('base64') },
    ] } }));
    const composite = `${sha(Buffer.concat([sha(p1), sha(p2)])).toString('base64')}-2`;
    assert.equal(done.ChecksumSHA256, composite);
    assert.equal((await client.send(new GetObjectCommand({ Bucket: 'sums', Key: 'multi-sha', ChecksumMode: 'ENABLED' }))).ChecksumSHA256, composite);

    // A copy of the multipart object: its composite CRC32 becomes the full-object CRC32 of the content.
    const copied = await client.send(new CopyObjectCommand({ Bucket: 'sums', Key: 'multi-copy', CopySource: 'sums/multi-crc32' }));
    assert.equal(copied.CopyObjectResult?.ChecksumCRC32, crcOf(body).toString('base64'));
    const head2 = await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: 'multi-copy', ChecksumMode: 'ENABLED' }));
    assert.equal(head2.ChecksumCRC32, crcOf(body).toString('base64'));
    assert.equal(head2.ChecksumType, 'FULL_OBJECT');
  });

  test('multipart FULL_OBJECT checksums: CRC64NVME and CRC32 of the whole content, combined from the parts; a wrong one is BadDigest', async () => {
    const MiB = 1024 * 1024;
    const body = randomBytes(11 * MiB + 5);
    const parts = [body.subarray(0, 5 * MiB), body.subarray(5 * MiB, 10 * MiB), body.subarray(10 * MiB)];
    const nvme = async (b: Buffer) => {
      const h = new Crc64Nvme();
      h.update(b);
      return Buffer.from(await h.digest()).toString('base64');
    };
    const crc = (b: Buffer) => {
      const out = Buffer.alloc(4);
      out.writeUInt32BE(crc32(b) >>> 0);
      return out.toString('base64');
    };
    // CRC64NVME, which has only the full-object form: no type given, FULL_OBJECT implied.
    const created = await client.send(new CreateMultipartUploadCommand({ Bucket: 'sums', Key: 'full-nvme', ChecksumAlgorithm: 'CRC64NVME' }));
    assert.equal(created.ChecksumType, 'FULL_OBJECT');
    const uploaded = [];
    for (const [i, p] of parts.entries()) {
      const r = await client.send(new UploadPartCommand({ Bucket: 'sums', Key: 'full-nvme', UploadId: created.UploadId, PartNumber: i + 1, Body: p, ChecksumAlgorithm: 'CRC64NVME' }));
      assert.equal(r.ChecksumCRC64NVME, await nvme(p));
      uploaded.push({ PartNumber: i + 1, ETag: r.ETag, ChecksumCRC64NVME: r.ChecksumCRC64NVME });
    }
    const listed = await client.send(new ListPartsCommand({ Bucket: 'sums', Key: 'full-nvme', UploadId: created.UploadId }));
    assert.equal(listed.ChecksumType, 'FULL_OBJECT');
    const whole = await nvme(body);
    const wrong = await sdkFailure(client.send(new CompleteMultipartUploadCommand({
      Bucket: 'sums', Key: 'full-nvme', UploadId: created.UploadId, ChecksumCRC64NVME: await nvme(parts[0]!), ChecksumType: 'FULL_OBJECT', MultipartUpload: { Parts: uploaded },
    })));
    assert.deepEqual(wrong, { status: 400, code: 'BadDigest' });
    const sized = await sdkFailure(client.send(new CompleteMultipartUploadCommand({
      Bucket: 'sums', Key: 'full-nvme', UploadId: created.UploadId, MpuObjectSize: body.length + 1, MultipartUpload: { Parts: uploaded },
    })));
    assert.deepEqual(sized, { status: 400, code: 'InvalidRequest' });
    const done = await client.send(new CompleteMultipartUploadCommand({
      Bucket: 'sums', Key: 'full-nvme', UploadId: created.UploadId, ChecksumCRC64NVME: whole, ChecksumType: 'FULL_OBJECT', MpuObjectSize: body.length, MultipartUpload: { Parts: uploaded },
    }));
    assert.equal(done.ChecksumCRC64NVME, whole);
    assert.equal(done.ChecksumType, 'FULL_OBJECT');
    const got = await client.send(new GetObjectCommand({ Bucket: 'sums', Key: 'full-nvme', ChecksumMode: 'ENABLED' }));
    assert.equal(got.ChecksumCRC64NVME, whole);
    assert.equal(got.ChecksumType, 'FULL_OBJECT');
    assert.ok(Buffer.from(await got.Body!.transformToByteArray()).equals(body), 'the SDK validated the download against it');

    // CRC32 asked for as FULL_OBJECT, parts uploaded without declaring a checksum (computed here).
    const c32 = await client.send(new CreateMultipartUploadCommand({ Bucket: 'sums', Key: 'full-crc32', ChecksumAlgorithm: 'CRC32', ChecksumType: 'FULL_OBJECT' }));
    assert.equal(c32.ChecksumType, 'FULL_OBJECT');
    const u = new URL(s.custos.obsUrl);
    const etags: string[] = [];
    for (const [i, p] of parts.entries()) {
      const path = `/sums/full-crc32`;
      const req = await signer.sign({
        method: 'PUT', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path, query: { partNumber: String(i + 1), uploadId: c32.UploadId! },
        headers: { host: u.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' },
      });
      const res = await fetch(`${s.custos.obsUrl}${path}?partNumber=${i + 1}&uploadId=${c32.UploadId}`, { method: 'PUT', headers: req.headers as Record<string, string>, body: new Uint8Array(p) });
      assert.equal(res.status, 200, await res.text());
      etags.push(res.headers.get('etag')!);
    }
    const done32 = await client.send(new CompleteMultipartUploadCommand({
      Bucket: 'sums', Key: 'full-crc32', UploadId: c32.UploadId, MultipartUpload: { Parts: etags.map((ETag, i) => ({ PartNumber: i + 1, ETag })) },
    }));
    assert.equal(done32.ChecksumCRC32, crc(body), 'the CRC32 of the content, not of the parts\' CRCs');
    assert.equal(done32.ChecksumType, 'FULL_OBJECT');

    // Types that do not go with the algorithm are refused, as on S3.
    assert.deepEqual(await sdkFailure(client.send(new CreateMultipartUploadCommand({ Bucket: 'sums', Key: 'x', ChecksumAlgorithm: 'SHA256', ChecksumType: 'FULL_OBJECT' }))), { status: 400, code: 'InvalidRequest' });
    assert.deepEqual(await sdkFailure(client.send(new CreateMultipartUploadCommand({ Bucket: 'sums', Key: 'x', ChecksumAlgorithm: 'CRC64NVME', ChecksumType: 'COMPOSITE' }))), { status: 400, code: 'InvalidRequest' });
  });

  test('a subresource body (PutObjectTagging) is checked like an upload: signed x-amz-content-sha256, Content-MD5, checksums; aws-chunked bodies are decoded', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'sums', Key: 'tagged', Body: 'x' }));
    const tagging = (v: string) => Buffer.from(`<Tagging><TagSet><Tag><Key>k</Key><Value>${v}</Value></Tag></TagSet></Tagging>`);
    const u = new URL(s.custos.obsUrl);
    const send = async (body: Buffer, headers: Record<string, string>, signedBody = body) => {
      const req = await signer.sign({
        method: 'PUT', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: '/sums/tagged', query: { tagging: '' },
        headers: { host: u.host, 'x-amz-content-sha256': createHash('sha256').update(signedBody).digest('hex'), ...headers },
      });
      const res = await fetch(`${s.custos.obsUrl}/sums/tagged?tagging`, { method: 'PUT', headers: req.headers as Record<string, string>, body: new Uint8Array(body) });
      return { status: res.status, text: await res.text() };
    };
    const tags = async () => (await client.send(new GetObjectTaggingCommand({ Bucket: 'sums', Key: 'tagged' }))).TagSet?.map((t) => t.Value);
    assert.equal((await send(tagging('one'), {})).status, 200);
    assert.deepEqual(await tags(), ['one']);
    // The signature covers the declared hash, not the bytes: a body changed on the way is refused.
    const changed = await send(tagging('two'), {}, tagging('own'));
    assert.equal(changed.status, 400);
    assert.match(changed.text, /<Code>XAmzContentSHA256Mismatch<\/Code>/);
    const md5 = await send(tagging('two'), { 'content-md5': createHash('md5').update('other').digest('base64') });
    assert.match(md5.text, /<Code>BadDigest<\/Code>/);
    const crc = await send(tagging('two'), { 'x-amz-checksum-crc32': b64('00000000') });
    assert.match(crc.text, /<Code>BadDigest<\/Code>/);
    assert.deepEqual(await tags(), ['one'], 'none of the refused bodies was applied');
    // aws-chunked with a CRC32 trailer, as SDKs send streamed bodies.
    const body = tagging('three');
    const crcOf = Buffer.alloc(4);
    crcOf.writeUInt32BE(crc32(body) >>> 0);
    const chunked = awsChunked(body, `x-amz-checksum-crc32:${crcOf.toString('base64')}`);
    const ok = await send(chunked, { ...chunkedHeaders(body.length, 'x-amz-checksum-crc32'), 'content-length': String(chunked.length) }, Buffer.alloc(0));
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(await tags(), ['three']);
    const bad = awsChunked(tagging('four-four'), `x-amz-checksum-crc32:${crcOf.toString('base64')}`);
    const refused = await send(bad, { ...chunkedHeaders(tagging('four-four').length, 'x-amz-checksum-crc32'), 'content-length': String(bad.length) }, Buffer.alloc(0));
    assert.match(refused.text, /<Code>BadDigest<\/Code>/);
    assert.deepEqual(await tags(), ['three']);
  });

  test('CopyObject: the copy keeps the source\'s checksum algorithm or takes the one asked for, computed anew', async () => {
    await client.send(new PutObjectCommand({ Bucket: 'sums', Key: 'digits', Body: CHECK_INPUT, ChecksumAlgorithm: 'CRC32C' }));
    // No algorithm asked: the source's (CRC32C), over the copied content.
    const same = await client.send(new CopyObjectCommand({ Bucket: 'sums', Key: 'digits-copy', CopySource: 'sums/digits' }));
    assert.equal(same.CopyObjectResult?.ChecksumCRC32C, CRC32C_CHECK);
    const head = await client.send(new HeadObjectCommand({ Bucket: 'sums', Key: 'digits-copy', ChecksumMode: 'ENABLED' }));
    assert.equal(head.ChecksumCRC32C, CRC32C_CHECK);
    // Another algorithm asked for: CRC64NVME (the catalogued check value) and SHA256.
    const other = await client.send(new CopyObjectCommand({ Bucket: 'sums', Key: 'digits-nvme', CopySource: 'sums/digits', ChecksumAlgorithm: 'CRC64NVME' }));
    assert.equal(other.CopyObjectResult?.ChecksumCRC64NVME, CRC64NVME_CHECK);
    assert.equal(other.CopyObjectResult?.ChecksumCRC32C, undefined);
    const sha = await client.send(new CopyObjectCommand({ Bucket: 'sums', Key: 'digits-sha', CopySource: 'sums/digits', ChecksumAlgorithm: 'SHA256' }));
    assert.equal(sha.CopyObjectResult?.ChecksumSHA256, createHash('sha256').update(CHECK_INPUT).digest('base64'));
    assert.equal((await client.send(new GetObjectCommand({ Bucket: 'sums', Key: 'digits-sha', ChecksumMode: 'ENABLED' }))).ChecksumSHA256, createHash('sha256').update(CHECK_INPUT).digest('base64'));
    // A source without a checksum, and no algorithm asked: the copy has none either.
    // (A raw request: the SDK would add its default CRC32.)
    assert.equal((await signedPut('plain', Buffer.from('no checksum'), {})).status, 200);
    const none = await client.send(new CopyObjectCommand({ Bucket: 'sums', Key: 'plain-copy', CopySource: 'sums/plain' }));
    assert.equal(none.CopyObjectResult?.ChecksumCRC32, undefined);
    assert.equal(none.CopyObjectResult?.ChecksumCRC32C, undefined);
    // An unknown algorithm is refused before anything is copied.
    assert.deepEqual(await sdkFailure(client.send(new CopyObjectCommand({ Bucket: 'sums', Key: 'bad-copy', CopySource: 'sums/digits', ChecksumAlgorithm: 'MD4' as never }))), { status: 400, code: 'InvalidRequest' });
    assert.deepEqual(await sdkFailure(client.send(new HeadObjectCommand({ Bucket: 'sums', Key: 'bad-copy' }))), { status: 404, code: 'NotFound' });
  });
});

/**
 * The `aws-chunked` content encoding of streaming uploads: `<hex size>[;chunk-signature=<sig>]\r\n<bytes>\r\n`
 * repeated, then a chunk of size 0, trailer lines `name:value\r\n` (the -TRAILER forms), and an empty line.
 *
 * Unsigned (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, what current AWS SDKs send by default): the bytes are
 * passed on as they arrive. Signed (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`): each chunk's
 * signature chains from the previous one (the first from the request's signature), so a changed,
 * dropped, reordered or added chunk breaks the chain. A chunk's bytes are held until its signature is
 * checked and only then passed on, so nothing unverified reaches the object store; that bounds a
 * signed chunk's size. The trailers are collected (e.g. `x-amz-checksum-crc32`) and, when signed,
 * checked against `x-amz-trailer-signature`.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { signaturesEqual, type ChunkSigner } from '../../iam/signing.js';
import { ObsError } from '../obs.js';

const MAX_LINE = 4096;
/** All trailer lines together: a handful of checksums fit many times over. */
const MAX_TRAILER_BYTES = 16 * 1024;
/** A signed chunk is held in memory until its signature is checked (SDKs send 64 KiB to 8 MiB). */
export const MAX_SIGNED_CHUNK = 16 * 1024 * 1024;
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const TRAILER_SIGNATURE = 'x-amz-trailer-signature';

export interface AwsChunkedOptions {
  /** Signed streaming: every chunk (and the trailer, when `trailer`) must carry a valid signature. */
  signer?: ChunkSigner;
  /** Trailer lines follow the last chunk (the -TRAILER forms); without it a signed body may carry none. */
  trailer?: boolean;
  /** x-amz-decoded-content-length: a body that declares more data than this is refused at once. */
  decodedLength?: number;
}

export class AwsChunkedDecoder extends Transform {
  readonly trailers: Record<string, string> = Object.create(null) as Record<string, string>;
  private buf: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private state: 'size' | 'data' | 'data-crlf' | 'trailers' | 'done' = 'size';
  private decoded = 0;
  private trailerBytes = 0;
  private readonly signer: ChunkSigner | undefined;
  private readonly withTrailer: boolean;
  private readonly decodedLength: number | undefined;
  /** Signed: the last verified signature, the current chunk's claimed one, its hash and held bytes. */
  private previousSignature = '';
  private claimed = '';
  private hash: Hash | null = null;
  private held: Buffer[] = [];
  private chunks = 0;
  private trailerHash: Hash | null = null;
  private trailerSignature: string | null = null;

  constructor(opts: AwsChunkedOptions = {}) {
    super();
    this.signer = opts.signer;
    this.withTrailer = opts.trailer ?? !opts.signer;
    this.decodedLength = opts.decodedLength;
    if (this.signer) {
      this.previousSignature = this.signer.seedSignature;
      if (this.withTrailer) this.trailerHash = createHash('sha256');
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    try {
      this.drain();
      done();
    } catch (e) {
      done(e as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    if (this.state !== 'done') return done(bad('the aws-chunked body ended before its last chunk'));
    done();
  }

  private line(): string | null {
    const i = this.buf.indexOf('\r\n');
    if (i < 0) {
      if (this.buf.length > MAX_LINE) throw bad('an aws-chunked line is too long');
      return null;
    }
    if (i > MAX_LINE) throw bad('an aws-chunked line is too long');
    const s = this.buf.subarray(0, i).toString('latin1');
    this.buf = this.buf.subarray(i + 2);
    return s;
  }

  private drain(): void {
    for (;;) {
      switch (this.state) {
        case 'size': {
          const l = this.line();
          if (l === null) return;
          const m = /^([0-9a-fA-F]{1,16})(;.*)?$/.exec(l);
          if (!m) throw bad('an aws-chunked chunk header is malformed');
          this.remaining = Number.parseInt(m[1]!, 16);
          if (this.decodedLength !== undefined && this.decoded + this.remaining > this.decodedLength) {
            throw bad(`the aws-chunked body holds more than the ${this.decodedLength} bytes its x-amz-decoded-content-length declares`);
          }
          this.decoded += this.remaining;
          if (this.signer) {
            const sig = /^;chunk-signature=([^;]*)$/.exec(m[2] ?? '');
            if (!sig) throw signatureMismatch('a chunk of a signed streaming upload carries no chunk-signature');
            if (this.remaining > MAX_SIGNED_CHUNK) throw new ObsError(400, 'InvalidRequest', `a signed chunk may hold at most ${MAX_SIGNED_CHUNK} bytes`);
            this.claimed = sig[1]!;
            this.hash = createHash('sha256');
            this.held = [];
          } else if (m[2]?.includes('chunk-signature')) {
            throw new ObsError(400, 'InvalidRequest', 'a chunk signature in an unsigned streaming body; declare STREAMING-AWS4-HMAC-SHA256-PAYLOAD to send signed chunks');
          }
          if (this.remaining === 0) {
            this.verifyChunk(EMPTY_SHA256);
            this.state = 'trailers';
          } else this.state = 'data';
          break;
        }
        case 'data': {
          if (this.buf.length === 0) return;
          const take = Math.min(this.remaining, this.buf.length);
          const part = this.buf.subarray(0, take);
          this.buf = this.buf.subarray(take);
          this.remaining -= take;
          if (this.signer) {
            this.hash!.update(part);
            this.held.push(part);
          } else this.push(part);
          if (this.remaining === 0) this.state = 'data-crlf';
          break;
        }
        case 'data-crlf': {
          if (this.buf.length < 2) return;
          if (this.buf[0] !== 13 || this.buf[1] !== 10) throw bad('an aws-chunked chunk does not end with CRLF');
          this.buf = this.buf.subarray(2);
          if (this.signer) {
            this.verifyChunk(this.hash!.digest('hex'));
            const held = this.held;
            this.held = [];
            for (const part of held) this.push(part);
          }
          this.state = 'size';
          break;
        }
        case 'trailers': {
          const l = this.line();
          if (l === null) return;
          if (l === '') {
            this.endTrailers();
            this.state = 'done';
            break;
          }
          this.trailerBytes += l.length + 2;
          if (this.trailerBytes > MAX_TRAILER_BYTES) throw bad('the aws-chunked trailers are too long');
          const i = l.indexOf(':');
          if (i <= 0) throw bad('an aws-chunked trailer is malformed');
          const name = l.slice(0, i).trim().toLowerCase();
          if (this.signer) {
            if (!this.withTrailer) throw bad('trailers after the last chunk, but x-amz-content-sha256 announces none (use STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER)');
            if (this.trailerSignature !== null) throw bad('a trailer after x-amz-trailer-signature');
            if (name === TRAILER_SIGNATURE) {
              this.trailerSignature = l.slice(i + 1).trim();
              break;
            }
            // The trailer is signed as sent, each line ending in a newline instead of CRLF.
            this.trailerHash!.update(`${l}\n`, 'latin1');
          }
          this.trailers[name] = l.slice(i + 1).trim();
          break;
        }
        case 'done':
          if (this.signer) {
            if (this.buf.length > 0) throw bad('data after the end of a signed aws-chunked body');
          } else if (this.buf.length > 0 && this.buf.toString('latin1').trim() !== '') throw bad('data after the end of an aws-chunked body');
          this.buf = Buffer.alloc(0);
          return;
      }
    }
  }

  /** Checks the current chunk's claimed signature against the chain; it becomes the next link. */
  private verifyChunk(dataSha256Hex: string): void {
    if (!this.signer) return;
    this.chunks++;
    const expected = this.signer.chunkSignature(this.previousSignature, dataSha256Hex);
    if (!signaturesEqual(expected, this.claimed)) throw signatureMismatch(`the signature of chunk ${this.chunks} does not match (a chunk was changed, dropped or reordered)`);
    this.previousSignature = expected;
  }

  private endTrailers(): void {
    if (!this.signer || !this.withTrailer) return;
    if (this.trailerSignature === null) throw signatureMismatch('the trailer of a signed streaming upload carries no x-amz-trailer-signature');
    const expected = this.signer.trailerSignature(this.previousSignature, this.trailerHash!.digest('hex'));
    if (!signaturesEqual(expected, this.trailerSignature)) throw signatureMismatch('the trailer signature does not match');
  }
}

function bad(message: string): ObsError {
  return new ObsError(400, 'IncompleteBody', message);
}
function signatureMismatch(message: string): ObsError {
  return new ObsError(403, 'SignatureDoesNotMatch', `The request signature we calculated does not match the signature you provided: ${message}`);
}

/**
 * The `aws-chunked` content encoding of unsigned streaming uploads
 * (`x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`), which current AWS SDKs use by
 * default: `<hex size>\r\n<bytes>\r\n` repeated, then `0\r\n`, trailer lines `name:value\r\n`, and
 * an empty line. The decoder passes the bytes on and collects the trailers (e.g. `x-amz-checksum-crc32`).
 */
import { Transform, type TransformCallback } from 'node:stream';
import { ObsError } from '../obs.js';

const MAX_LINE = 4096;

export class AwsChunkedDecoder extends Transform {
  readonly trailers: Record<string, string> = {};
  private buf: Buffer = Buffer.alloc(0);
  private remaining = 0;
  private state: 'size' | 'data' | 'data-crlf' | 'trailers' | 'done' = 'size';

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
          if (m[2]?.includes('chunk-signature')) throw new ObsError(501, 'NotImplemented', 'signed streaming uploads (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) are not supported; use UNSIGNED-PAYLOAD or a trailer checksum');
          this.remaining = Number.parseInt(m[1]!, 16);
          this.state = this.remaining === 0 ? 'trailers' : 'data';
          break;
        }
        case 'data': {
          if (this.buf.length === 0) return;
          const take = Math.min(this.remaining, this.buf.length);
          this.push(this.buf.subarray(0, take));
          this.buf = this.buf.subarray(take);
          this.remaining -= take;
          if (this.remaining === 0) this.state = 'data-crlf';
          break;
        }
        case 'data-crlf': {
          if (this.buf.length < 2) return;
          if (this.buf[0] !== 13 || this.buf[1] !== 10) throw bad('an aws-chunked chunk does not end with CRLF');
          this.buf = this.buf.subarray(2);
          this.state = 'size';
          break;
        }
        case 'trailers': {
          const l = this.line();
          if (l === null) return;
          if (l === '') {
            this.state = 'done';
            break;
          }
          const i = l.indexOf(':');
          if (i <= 0) throw bad('an aws-chunked trailer is malformed');
          this.trailers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
          break;
        }
        case 'done':
          if (this.buf.length > 0 && this.buf.toString('latin1').trim() !== '') throw bad('data after the end of an aws-chunked body');
          this.buf = Buffer.alloc(0);
          return;
      }
    }
  }
}

function bad(message: string): ObsError {
  return new ObsError(400, 'IncompleteBody', message);
}

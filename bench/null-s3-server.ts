// bench/obs's ceiling: an HTTP server that answers S3 PUT and GET and stores nothing (a PUT's body is
// read and dropped; a GET answers with as many bytes of one random buffer as were put). Started as its
// own process, as Custos is, it prints `listening <port>`. Benchmark only.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const sizes = new Map<string, number>();
const fill = randomBytes(1024 * 1024);
const etag = '"00000000000000000000000000000000"';
const server = createServer((req, res) => {
  const key = (req.url ?? '').split('?')[0]!;
  if (req.method === 'PUT') {
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
    });
    req.on('end', () => {
      sizes.set(key, Number(req.headers['x-amz-decoded-content-length'] ?? n));
      res.writeHead(200, { etag }).end();
    });
    return;
  }
  if (req.method === 'GET' && sizes.has(key)) {
    let left = sizes.get(key)!;
    res.writeHead(200, { 'content-length': left, etag, 'content-type': 'application/octet-stream' });
    const pump = () => {
      while (left > 0) {
        const k = Math.min(left, fill.length);
        left -= k;
        if (!res.write(k === fill.length ? fill : fill.subarray(0, k))) return void res.once('drain', pump);
      }
      res.end();
    };
    return pump();
  }
  res.writeHead(200).end();
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));

// The floor of bench/kms and bench/iam on this machine: a bare node:http server that does only the
// part of a request no implementation can skip, measured in the same run as Custos against its own
// /health. No authentication, no key lookup, no policy, no audit trail, no database.
//   GET  /health                    {"status":"ok"}
//   POST /encrypt-data              parses the JSON body, seals plain_text with AES-256-GCM under one
//                                   in-memory key, answers {key_id, cipher_text} in base64 (encrypt-data's
//                                   shape with a 4 KiB plaintext: 4 KiB in, 5.5 KiB out)
//   GET  /v3/users/:id              verifies the AWS SigV4 signature (Custos's verifier, src/iam/signing.ts)
//                                   with the secret in FLOOR_SECRET, refuses a repeated signature from an
//                                   in-memory set, answers a small user document
//   GET  /unverified/v3/users/:id   the same, but only parses the Authorization header: the floor of
//                                   any server that reads a signed request, before verifying anything
// Started as its own process, as Custos is; prints `listening <port>`. Benchmark only.
import { createCipheriv, randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseSignature, verifySignature } from '../src/iam/signing.js';

const key = randomBytes(32);
const secret = process.env.FLOOR_SECRET ?? '';
const seen = new Set<string>();
const user = JSON.stringify({ user: { id: randomUUID().replace(/-/g, ''), name: 'admin', domain_id: randomUUID().replace(/-/g, ''), enabled: true } });

function answer(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
}

function signed(req: IncomingMessage, res: ServerResponse, body: Buffer, verify: boolean): void {
  const url = req.url ?? '';
  const q = url.indexOf('?');
  const input = { method: req.method ?? 'GET', path: q < 0 ? url : url.slice(0, q), query: q < 0 ? '' : url.slice(q + 1), headers: req.headers, body };
  try {
    const parsed = parseSignature(input);
    if (!parsed) return answer(res, 401, '{"error":"unsigned"}');
    if (verify) verifySignature(input, parsed, secret, new Date(), 900);
    if (seen.has(parsed.signature)) return answer(res, 401, '{"error":"replayed"}');
    seen.add(parsed.signature);
    answer(res, 200, user);
  } catch (e) {
    answer(res, 401, JSON.stringify({ error: (e as Error).message }));
  }
}

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const url = req.url ?? '';
    if (req.method === 'GET' && url === '/health') return answer(res, 200, '{"status":"ok"}');
    if (req.method === 'POST' && url === '/encrypt-data') {
      try {
        const b = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { key_id: string; plain_text: string };
        const iv = randomBytes(12);
        const cipher = createCipheriv('aes-256-gcm', key, iv);
        const sealed = Buffer.concat([iv, cipher.update(Buffer.from(b.plain_text, 'utf8')), cipher.final(), cipher.getAuthTag()]);
        return answer(res, 200, JSON.stringify({ key_id: b.key_id, cipher_text: sealed.toString('base64') }));
      } catch {
        return answer(res, 400, '{"error":"bad body"}');
      }
    }
    if (req.method === 'GET' && url.startsWith('/v3/users/')) return signed(req, res, Buffer.concat(chunks), true);
    if (req.method === 'GET' && url.startsWith('/unverified/v3/users/')) return signed(req, res, Buffer.concat(chunks), false);
    answer(res, 404, '{"error":"not found"}');
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${(server.address() as AddressInfo).port}\n`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));

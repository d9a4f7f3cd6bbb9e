// An account's webhook URL must not reach what only the server can: loopback, private networks,
// link-local cloud metadata and the like are refused when the webhook is set and again at every
// delivery (a name that resolved to a public address when it was set may not later), unless the
// operator allows internal targets (privacyWebhookInternalTargets).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sql } from 'kysely';
import { guardedLookup, InternalAddressError, internalRange } from '../../src/privacy/webhook-delivery.js';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';

describe('webhook target addresses', () => {
  test('internal ranges are recognised, IPv4-mapped IPv6 included; public unicast is not internal', () => {
    const cases: [string, string | null][] = [
      ['127.0.0.1', 'loopback'], ['10.1.2.3', 'private'], ['172.16.0.1', 'private'], ['192.168.1.1', 'private'],
      ['169.254.169.254', 'linkLocal'], ['100.64.0.1', 'carrierGradeNat'], ['0.0.0.0', 'unspecified'], ['224.0.0.1', 'multicast'],
      ['::1', 'loopback'], ['fe80::1', 'linkLocal'], ['fc00::1', 'uniqueLocal'], ['::ffff:127.0.0.1', 'loopback'], ['::ffff:a9fe:a9fe', 'linkLocal'], ['::7f00:1', 'ipv4Compatible'],
      ['93.184.216.34', null], ['2606:4700:4700::1111', null],
    ];
    for (const [address, range] of cases) assert.equal(internalRange(address), range, address);
  });

  test("the connection's lookup refuses a name with any internal address, and hands over a checked one", async () => {
    const resolveTo = (list: string[]) => (_h: string, _o: unknown, cb: (e: null, a: { address: string; family: number }[]) => void) =>
      cb(null, list.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })));
    const run = (allow: boolean, list: string[], all = false) =>
      new Promise<{ err: Error | null; result: unknown }>((resolve) =>
        guardedLookup(allow, resolveTo(list))('hooks.example', { all } as never, ((err: Error | null, address: unknown) => resolve({ err, result: address })) as never));
    assert.deepEqual(await run(false, ['93.184.216.34']), { err: null, result: '93.184.216.34' });
    const mixed = await run(false, ['93.184.216.34', '10.0.0.5']);
    assert.ok(mixed.err instanceof InternalAddressError && /private/.test(mixed.err.message), 'one internal address is enough to refuse');
    assert.ok((await run(false, ['169.254.169.254'], true)).err instanceof InternalAddressError);
    assert.deepEqual((await run(true, ['10.0.0.5'])).err, null, 'allowed when the operator allows internal targets');
    const both = await run(false, ['93.184.216.34', '2606:4700:4700::1111'], true);
    assert.equal((both.result as unknown[]).length, 2, 'all addresses handed over when the connection asks for all');
  });
});

describe('webhook delivery', () => {
  test('one deadline for the whole exchange: a receiver that trickles its answer is cut off', { timeout: 10_000 }, async () => {
    const { postWebhook } = await import('../../src/privacy/webhook-delivery.js');
    const slow = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      const tick = setInterval(() => res.write('.'), 100);
      res.on('close', () => clearInterval(tick));
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
    try {
      const t0 = performance.now();
      await assert.rejects(
        postWebhook(`http://127.0.0.1:${(slow.address() as AddressInfo).port}/`, '{}', {}, { allowInternal: true, timeoutMs: 500 }),
        (e: Error) => e.name === 'TimeoutError',
      );
      assert.ok(performance.now() - t0 < 2000);
    } finally {
      slow.closeAllConnections();
      slow.close();
    }
  });
});

describe('webhooks on a server with the default configuration', () => {
  let s: TestServer;
  let t: Tenant;
  let receiver: Server;
  let received = 0;
  let port = 0;
  before(async () => {
    s = await startTestServer();
    t = await s.createTenant();
    receiver = createServer((_req, res) => {
      received++;
      res.statusCode = 204;
      res.end();
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    port = (receiver.address() as AddressInfo).port;
  });
  after(async () => {
    receiver?.close();
    await s?.close();
  });

  test('internal targets are refused when set', async () => {
    for (const url of [`http://127.0.0.1:${port}/hook`, `http://localhost:${port}/hook`, `http://[::1]:${port}/hook`, 'http://169.254.169.254/latest/meta-data', 'http://[::ffff:7f00:1]/hook', 'http://10.0.0.8/hook']) {
      const r = await s.api('PUT', '/v1/privacy/webhook', { token: t.token, body: { url } });
      assert.equal(r.status, 400, `${url}: ${r.text}`);
      assert.match(r.text, /InvalidWebhook/);
    }
  });

  test('and at delivery: a stored URL that now points inside is not connected to', async () => {
    // A name that does not resolve is accepted when set (delivery retries); then it "resolves" inside.
    const set = await s.api('PUT', '/v1/privacy/webhook', { token: t.token, body: { url: 'http://hooks.example.invalid/custos' } });
    assert.equal(set.status, 200, set.text);
    await sql`update privacy_webhooks set url = ${`http://127.0.0.1:${port}/custos`} where account_id = ${t.accountId}`.execute(s.custos.store.db);
    const now = Date.now();
    await sql`insert into privacy_outbox (id, account_id, event, payload_json, created_at, attempts, next_attempt_at, delivered_at, failed_at, last_error)
      values (${randomUUID()}, ${t.accountId}, 'privacy.test', '{"event":"privacy.test"}', ${now}, 0, ${now - 1000}, null, null, null)`.execute(s.custos.store.db);
    const run = await s.custos.rights.runOutbox();
    assert.deepEqual(run, { delivered: 0, failed: 1 });
    assert.equal(received, 0, 'nothing reached the internal address');
    const row = (await sql<{ last_error: string }>`select last_error from privacy_outbox where account_id = ${t.accountId}`.execute(s.custos.store.db)).rows[0]!;
    assert.match(row.last_error, /^refused: .*internal address \(loopback\)/);
  });
});

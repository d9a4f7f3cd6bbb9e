// Consent and data-subject requests over real HTTP, with an injectable clock, over data in the vault.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { sql } from 'kysely';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CopyObjectCommand, CreateBucketCommand, GetObjectCommand, ListObjectVersionsCommand, PutBucketVersioningCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { strFromU8, unzipSync } from 'fflate';
import { PASSWORD, startTestServer, type Tenant, type TestServer } from '../helpers.js';

const DAY = 86_400_000;

describe('privacy: consent and data-subject requests', () => {
  let s: TestServer;
  let t: Tenant;
  let other: Tenant;
  let clock = Date.parse('2026-03-01T09:00:00Z');
  const api = (method: string, p: string, body?: unknown, token = t.token) => s.api(method, p, { token, ...(body !== undefined ? { body } : {}) });
  const advance = async (ms: number) => {
    clock += ms;
    t.token = await s.token(t.name, 'admin', PASSWORD);
    other.token = await s.token(other.name, 'admin', PASSWORD);
  };
  const C = '/v1/vault/collections/members';
  const read = (id: string, reason: string, extra = '') => api('GET', `${C}/records/${id}?reason=${reason}${extra}`);
  const request = async (subject: string, type: string, details?: unknown) => {
    const r = await api('POST', '/v1/privacy/requests', { subject_id: subject, type, ...(details ? { details } : {}) });
    assert.equal(r.status, 201, r.text);
    return r.json as { id: string; due_at: string; status: string };
  };
  const verify = async (id: string) => {
    const r = await api('POST', `/v1/privacy/requests/${id}/verify`, { verifier: 'attestation', evidence: { method: 'passport checked at the front desk', reference: 'ticket-4711' } });
    assert.equal(r.status, 200, r.text);
    return r.json;
  };
  const execute = async (id: string) => {
    const r = await api('POST', `/v1/privacy/requests/${id}/execute`, { project_id: t.projects[0]!.id });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'completed');
    return r.json;
  };
  const records: Record<string, string> = {};

  before(async () => {
    // The test's webhook receiver listens on loopback, an internal target the default configuration refuses.
    s = await startTestServer({ now: () => clock, config: { privacyWebhookInternalTargets: true } });
    t = await s.createTenant();
    other = await s.createTenant();
    for (const [name, basis] of [['service_delivery', 'contract'], ['marketing', 'consent'], ['accounting', 'legal_obligation'], ['legal_claims', 'legitimate_interests']] as const) {
      const r = await api('PUT', `/v1/privacy/purposes/${name}`, { legal_basis: basis, description: name === 'accounting' ? 'tax law: 10 years' : '' });
      assert.equal(r.status, 200, r.text);
    }
    const c = await api('POST', '/v1/vault/collections', {
      name: 'members', project_id: t.projects[0]!.id,
      access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write', 'search', 'delete'], unmask: ['*'] }],
      properties: [
        { name: 'email', pii_type: 'email', mandatory: true, searchable: true, purposes: ['service_delivery', 'marketing', 'legal_claims'], collection_method: 'sign-up', deletion: { on_event: 'account_deregistered' } },
        { name: 'phone', pii_type: 'phone_number', purposes: ['service_delivery'], collection_method: 'sign-up', deletion: { after: 'P2Y' } },
        { name: 'interests', pii_type: 'free_text', purposes: ['marketing'], collection_method: 'preferences page', deletion: { on_event: 'consent_withdrawn' } },
        { name: 'invoice_address', pii_type: 'postal_address', purposes: ['accounting'], collection_method: 'checkout', deletion: { after: 'P10Y', basis: 'tax law' } },
      ],
    });
    assert.equal(c.status, 201, c.text);
    for (const [subject, email] of [['alice', 'alice@example.com'], ['bob', 'bob@example.com'], ['carol', 'carol@example.com'], ['dave', 'dave@example.com']] as const) {
      const r = await api('POST', `${C}/records`, { subject_id: subject, fields: { email, phone: '+4930123456', interests: `${subject} likes sailing`, invoice_address: `${subject}, 1 Main Street, Berlin` } });
      assert.equal(r.status, 201, r.text);
      records[subject] = r.json.id;
    }
  });
  after(async () => {
    await s?.close();
  });

  test('consent: reads for a consent-based purpose need it; withdrawal stops them at once and keeps the history', async () => {
    const none = await read(records.alice!, 'marketing');
    assert.equal(none.status, 403, none.text);
    assert.equal(none.json.error.code, 'ProcessingNotAllowed');
    assert.match(none.json.error.message, /no consent for marketing/);
    const grant = await api('POST', '/v1/privacy/subjects/alice/consents', { purpose: 'marketing', status: 'granted', source: 'newsletter checkbox', notice_version: '2026-01' });
    assert.equal(grant.status, 201, grant.text);
    const ok = await read(records.alice!, 'marketing', '&unmask=interests');
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.fields.interests, 'alice likes sailing');
    // Contract-based processing never needed consent.
    assert.equal((await read(records.alice!, 'service_delivery')).status, 200);
    // Consent only exists for consent-based purposes in the catalogue.
    assert.equal((await api('POST', '/v1/privacy/subjects/alice/consents', { purpose: 'service_delivery', status: 'granted', source: 'x', notice_version: '1' })).status, 400);
    assert.equal((await api('POST', '/v1/privacy/subjects/alice/consents', { purpose: 'unknown', status: 'granted', source: 'x', notice_version: '1' })).status, 400);

    await advance(DAY);
    const withdraw = await api('POST', '/v1/privacy/subjects/alice/consents', { purpose: 'marketing', status: 'withdrawn', source: 'unsubscribe link', notice_version: '2026-01' });
    assert.equal(withdraw.status, 201, withdraw.text);
    // Values whose deletion rule waits for the withdrawal go with it.
    assert.deepEqual(withdraw.json.vault, { scheduled: 1, deleted_values: 1, deleted_records: 0 });
    const refused = await read(records.alice!, 'marketing');
    assert.equal(refused.status, 403);
    assert.match(refused.json.error.message, /consent for marketing was withdrawn/);
    // A search for the purpose leaves the subject out.
    const search = await api('POST', `${C}/search`, { reason: 'marketing', match: { email: 'alice@example.com' } });
    assert.deepEqual(search.json.records, []);
    const state = await api('GET', '/v1/privacy/subjects/alice/consents');
    assert.deepEqual(state.json.current.map((c: { purpose: string; status: string }) => [c.purpose, c.status]), [['marketing', 'withdrawn']]);
    assert.deepEqual(state.json.history.map((c: { status: string; source: string }) => [c.status, c.source]), [['granted', 'newsletter checkbox'], ['withdrawn', 'unsubscribe link']]);
  });

  test('deadlines: due 30 days after receipt, one extension of up to two months before it, overdue alerts', async () => {
    const r = await request('bob', 'access');
    assert.equal(r.status, 'received');
    assert.equal(Date.parse(r.due_at) - clock, 30 * DAY);
    // Unverified requests cannot run.
    const early = await api('POST', `/v1/privacy/requests/${r.id}/execute`, {});
    assert.equal(early.status, 409);
    assert.equal(early.json.error.code, 'NotVerified');
    const badVerify = await api('POST', `/v1/privacy/requests/${r.id}/verify`, { verifier: 'attestation', evidence: { method: 'trust me' } });
    assert.equal(badVerify.status, 400);
    assert.equal((await api('POST', `/v1/privacy/requests/${r.id}/verify`, { verifier: 'psychic', evidence: {} })).status, 400);
    assert.equal((await api('POST', `/v1/privacy/requests/${r.id}/extend`, { months: 3, reason: 'complex' })).status, 400);
    await advance(10 * DAY);
    const ext = await api('POST', `/v1/privacy/requests/${r.id}/extend`, { months: 2, reason: 'the request covers ten years of records' });
    assert.equal(ext.status, 200, ext.text);
    assert.equal(ext.json.extended, true);
    assert.equal(ext.json.effective_due_at, '2026-06-01T09:00:00.000Z');
    const again = await api('POST', `/v1/privacy/requests/${r.id}/extend`, { months: 1, reason: 'more' });
    assert.equal(again.status, 409);
    assert.equal(again.json.error.code, 'AlreadyExtended');

    const late = await request('carol', 'objection', { purposes: ['marketing'] });
    await advance(31 * DAY);
    const tooLate = await api('POST', `/v1/privacy/requests/${late.id}/extend`, { months: 1, reason: 'forgot' });
    assert.equal(tooLate.status, 409);
    assert.equal(tooLate.json.error.code, 'DeadlinePassed');
    const overdue = await api('GET', '/v1/privacy/requests?overdue=true');
    assert.deepEqual(overdue.json.requests.map((x: { id: string }) => x.id), [late.id], 'the extended request is not overdue');
    const job = await s.custos.rights.runDueJobs();
    assert.equal(job.overdue, 1);
    assert.equal((await s.custos.rights.runDueJobs()).overdue, 0, 'one alert per request');
    const hist = await api('GET', `/v1/privacy/requests/${late.id}`);
    assert.deepEqual(hist.json.history.map((h: { event: string }) => h.event), ['received', 'overdue']);
    assert.ok(s.logs().includes(`data-subject request ${late.id} (objection`), 'the alert reaches the log');
    const metrics = await s.api('GET', '/metrics');
    assert.match(metrics.text, /custos_privacy_requests_overdue_total 1/);
    // Refusal needs a reason and ends the request.
    const refused = await api('POST', `/v1/privacy/requests/${late.id}/refuse`, { reason: 'the subject withdrew the request by phone' });
    assert.equal(refused.json.status, 'refused');
    assert.equal((await api('POST', `/v1/privacy/requests/${late.id}/refuse`, { reason: 'again' })).status, 409);
    assert.equal((await api('POST', `/v1/privacy/requests/${late.id}/refuse`, {})).status, 400);

    // The access request, verified and run: an archive of the subject, and nothing of anyone else.
    await verify(r.id);
    const done = await execute(r.id);
    assert.equal(done.result.records, 1);
    const link = done.result.archive as string;
    const zip = await s.api('GET', link);
    assert.equal(zip.status, 200, zip.text);
    const raw = await fetch(s.url + link);
    const files = unzipSync(new Uint8Array(await raw.arrayBuffer()));
    assert.deepEqual(Object.keys(files).sort(), ['consents.csv', 'requests.csv', 'subject.json', 'vault.csv']);
    const doc = JSON.parse(strFromU8(files['subject.json']!));
    assert.equal(doc.subject_id, 'bob');
    assert.deepEqual(doc.vault[0].fields, { email: 'bob@example.com', phone: '+4930123456', interests: 'bob likes sailing', invoice_address: 'bob, 1 Main Street, Berlin' });
    assert.match(strFromU8(files['vault.csv']!), /members,.*,email,bob@example\.com/);
    const everything = Object.values(files).map((f) => strFromU8(f)).join('\n');
    for (const x of ['alice', 'carol', 'dave']) assert.ok(!everything.includes(x), `the archive holds ${x}'s data`);
    assert.equal((await fetch(`${s.url}/v1/privacy/archives/${r.id}?token=${'A'.repeat(43)}`)).status, 404);
    await advance(8 * DAY);
    assert.equal((await fetch(s.url + link)).status, 410);
    await s.custos.rights.runDueJobs();
    assert.equal((await fetch(s.url + link)).status, 404);
  });

  test('erasure deletes everything but what a legal obligation keeps, and says what was kept and why', async () => {
    const r = await request('dave', 'erasure');
    await verify(r.id);
    const done = await execute(r.id);
    assert.equal(done.result.deleted_values, 3);
    assert.equal(done.result.deleted_records, 0);
    assert.equal(done.result.kept.length, 1);
    assert.equal(done.result.kept[0].property, 'invoice_address');
    assert.match(done.result.kept[0].reason, /legal obligation \(accounting: tax law: 10 years\)/);
    assert.ok(done.result.kept[0].until, 'the kept value has its own deletion date');
    const left = await read(records.dave!, 'accounting', '&unmask=*');
    assert.deepEqual(left.json.fields, { invoice_address: 'dave, 1 Main Street, Berlin' });
    const gone = await read(records.dave!, 'service_delivery', '&unmask=*');
    assert.deepEqual(gone.json.fields, { email: null, phone: null });
    assert.deepEqual((await api('POST', `${C}/search`, { reason: 'service_delivery', match: { email: 'dave@example.com' } })).json.records, []);
  });

  test('restriction allows only legal claims; objection stops the named purposes; both can be lifted', async () => {
    const restrict = await request('bob', 'restriction');
    await verify(restrict.id);
    await execute(restrict.id);
    assert.equal((await read(records.bob!, 'service_delivery')).status, 403);
    assert.equal((await read(records.bob!, 'legal_claims')).status, 200);
    assert.equal((await api('DELETE', '/v1/privacy/subjects/bob/limits/restriction')).status, 200);
    assert.equal((await read(records.bob!, 'service_delivery')).status, 200);

    await api('POST', '/v1/privacy/subjects/carol/consents', { purpose: 'marketing', status: 'granted', source: 'form', notice_version: '1' });
    assert.equal((await read(records.carol!, 'marketing')).status, 200);
    const object = await request('carol', 'objection', { purposes: ['marketing'] });
    await verify(object.id);
    await execute(object.id);
    const refused = await read(records.carol!, 'marketing');
    assert.equal(refused.status, 403);
    assert.match(refused.json.error.message, /objected to processing for marketing/);
    assert.equal((await read(records.carol!, 'service_delivery')).status, 200);
    assert.equal((await api('POST', '/v1/privacy/requests', { subject_id: 'carol', type: 'objection' })).status, 400, 'an objection names its purposes');
  });

  test('rectification and consent withdrawal as requests', async () => {
    const fix = await request('bob', 'rectification', { rectify: [{ collection: 'members', fields: { phone: '+4930999999' } }] });
    // The corrected value is personal data: held sealed, shown nowhere, not even to the privacy officer.
    const shown = await api('GET', `/v1/privacy/requests/${fix.id}`);
    assert.deepEqual(shown.json.details.rectify, [{ collection: 'members', fields: { phone: '(sealed)' } }]);
    assert.ok(!shown.text.includes('4930999999'));
    assert.ok(!(await api('GET', '/v1/privacy/requests')).text.includes('4930999999'));
    const stored = (await sql<{ d: string }>`select details_json as d from privacy_requests where id = ${fix.id}`.execute(s.custos.store.db)).rows[0]!.d;
    assert.ok(!stored.includes('4930999999'), 'not in the database in the clear');
    await verify(fix.id);
    const done = await execute(fix.id);
    assert.ok(!(await sql<{ d: string }>`select details_json as d from privacy_requests where id = ${fix.id}`.execute(s.custos.store.db)).rows[0]!.d.includes('rectify_sealed'), 'dropped once applied');
    assert.equal(done.result.records_rectified, 1);
    assert.equal((await read(records.bob!, 'service_delivery', '&unmask=phone')).json.fields.phone, '+4930999999');
    const w = await request('carol', 'consent_withdrawal');
    await verify(w.id);
    const wd = await execute(w.id);
    assert.deepEqual(wd.result.withdrawn, ['marketing']);
    const c = await api('GET', '/v1/privacy/subjects/carol/consents');
    assert.equal(c.json.current[0].status, 'withdrawn');
  });

  test('minors: a collection with a minimum age refuses younger subjects, to the day', async () => {
    const props = [{ name: 'birth', pii_type: 'date_of_birth', mandatory: true, modifiable: true, purposes: ['service_delivery'], collection_method: 'sign-up', deletion: { after: 'P1Y' } }];
    const noDob = await api('POST', '/v1/vault/collections', { name: 'kids', project_id: t.projects[0]!.id, min_age: 14, properties: [{ ...props[0], pii_type: 'free_text', data_type: 'string' }] });
    assert.equal(noDob.status, 400);
    assert.match(noDob.json.error.message, /minimum age needs exactly one date_of_birth property/);
    const c = await api('POST', '/v1/vault/collections', { name: 'kids', project_id: t.projects[0]!.id, min_age: 14, access: [{ type: 'user', id: t.adminUserId, permissions: ['read', 'write'] }], properties: props });
    assert.equal(c.status, 201, c.text);
    assert.equal(c.json.min_age, 14);
    const today = new Date(clock);
    const ymd = (y: number, m: number, d: number) => `${y}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`;
    const y = today.getUTCFullYear();
    const m = today.getUTCMonth() + 1;
    const d = today.getUTCDate();
    const turnsTomorrow = ymd(y - 14, m, d + 1 > 28 ? d : d + 1);
    const turnedToday = ymd(y - 14, m, d);
    const young = await api('POST', '/v1/vault/collections/kids/records', { subject_id: 'kid', fields: { birth: turnsTomorrow } });
    assert.equal(young.status, 422, young.text);
    assert.equal(young.json.error.code, 'BelowMinimumAge');
    assert.ok(!young.text.includes(turnsTomorrow), 'the error does not echo the date of birth');
    const ok = await api('POST', '/v1/vault/collections/kids/records', { subject_id: 'teen', fields: { birth: turnedToday } });
    assert.equal(ok.status, 201, ok.text);
    // Rectifying the date of birth to an age below the minimum is refused too.
    const fix = await api('PATCH', `/v1/vault/collections/kids/records/${ok.json.id}`, { fields: { birth: ymd(y - 5, 1, 1) } });
    assert.equal(fix.status, 422);
  });

  test('every state change is notified through the outbox: signed, retried until delivered', async () => {
    const got: { headers: Record<string, string | string[] | undefined>; body: string }[] = [];
    let failFirst = 2;
    const hook = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        got.push({ headers: req.headers, body });
        res.statusCode = failFirst-- > 0 ? 503 : 204;
        res.end();
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/custos`;
      assert.equal((await api('PUT', '/v1/privacy/webhook', { url: 'ftp://example.com/x' })).status, 400);
      const set = await api('PUT', '/v1/privacy/webhook', { url });
      assert.equal(set.status, 200, set.text);
      const secret = set.json.secret as string;
      assert.match(secret, /^whsec_/);
      assert.equal((await api('GET', '/v1/privacy/webhook')).json.secret, undefined, 'the secret is shown once');

      const r = await request('bob', 'access');
      await verify(r.id);
      // Two failures, then delivery: retried with backoff, in order, each signed.
      const first = await s.custos.rights.runOutbox();
      assert.deepEqual(first, { delivered: 0, failed: 2 });
      assert.deepEqual(await s.custos.rights.runOutbox(), { delivered: 0, failed: 0 }, 'nothing is due before the backoff');
      clock += 31_000;
      assert.deepEqual(await s.custos.rights.runOutbox(), { delivered: 2, failed: 0 });
      const events = got.slice(2).map((g) => JSON.parse(g.body).event);
      assert.deepEqual(events.sort(), ['privacy.request.received', 'privacy.request.verified']);
      for (const g of got) {
        const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(String(g.headers['x-custos-signature']));
        assert.ok(m, 'signed');
        const expected = createHmac('sha256', secret).update(`${m![1]}.${g.body}`).digest('hex');
        assert.equal(m![2], expected, 'the signature verifies with the secret');
        assert.ok(!g.body.includes('bob@example.com'), 'no personal-data value in a notification');
      }
      const status = await api('GET', '/v1/privacy/webhook');
      assert.ok(status.json.deliveries.every((d: { delivered_at: string | null; attempts: number }) => d.delivered_at && d.attempts === 2));
      assert.equal((await api('DELETE', '/v1/privacy/webhook')).status, 204);
    } finally {
      hook.close();
    }
  });

  test('cross-border: a copy to another region needs a transfer record; within the region it does not', async () => {
    const home = t.projects[0]!;
    const abroad = t.projects.find((p) => p.name !== home.name)!;
    const copy = (name: string, project: string, transfer?: string) => api('POST', `${C}/copy`, { destination_project_id: project, name, ...(transfer ? { transfer_id: transfer } : {}) });
    const refused = await copy('members_abroad', abroad.id);
    assert.equal(refused.status, 403, refused.text);
    assert.equal(refused.json.error.code, 'TransferNotRecorded');
    assert.equal((await api('POST', '/v1/privacy/transfers', { source_kind: 'collection', source_name: 'members', destination_project_id: home.id, purpose: 'x', safeguard: 'adequacy_decision' })).status, 400, 'same region: nothing to record');
    const tr = await api('POST', '/v1/privacy/transfers', { source_kind: 'collection', source_name: 'members', destination_project_id: abroad.id, purpose: 'customer support from the regional office', safeguard: 'standard_contractual_clauses', notes: 'SCC 2021/914 module 1' });
    assert.equal(tr.status, 201, tr.text);
    assert.equal(tr.json.destination_region, abroad.name);
    const other = await api('POST', '/v1/privacy/transfers', { source_kind: 'collection', source_name: 'kids', destination_project_id: abroad.id, purpose: 'x', safeguard: 'certification' });
    assert.equal((await copy('members_abroad', abroad.id, other.json.id)).status, 403, 'a record for another collection does not cover this one');
    const done = await copy('members_abroad', abroad.id, tr.json.id);
    assert.equal(done.status, 201, done.text);
    assert.equal(done.json.records, 4);
    assert.equal(done.json.collection.region, abroad.name);
    const found = await api('POST', '/v1/vault/collections/members_abroad/search', { reason: 'service_delivery', match: { email: 'bob@example.com' } });
    assert.equal(found.json.records.length, 1, 'the copy has its own blind index');
    const rec = await api('GET', `/v1/vault/collections/members_abroad/records/${found.json.records[0].id}?reason=service_delivery&unmask=*`);
    assert.equal(rec.json.fields.email, 'bob@example.com');
    assert.equal(rec.json.region, abroad.name);
    const keys = await api('POST', `/v1.0/${abroad.id}/kms/list-keys`, { limit: '100' });
    assert.ok(keys.json.keys.includes(done.json.collection.kms_key_id), 'the copy is encrypted under a key of the destination region');
    const used = (await api('GET', '/v1/privacy/transfers')).json.transfers.find((x: { id: string }) => x.id === tr.json.id);
    assert.ok(used.used_at);
    assert.equal((await copy('members_copy', home.id)).status, 201, 'within one region no transfer record is needed');
    // Copying is processing: a subject whose processing is restricted stays out of a copy.
    const restrict = await request('bob', 'restriction');
    await verify(restrict.id);
    await execute(restrict.id);
    const without = await copy('members_copy2', home.id);
    assert.equal(without.status, 201, without.text);
    assert.deepEqual([without.json.records, without.json.restricted_records_left_out], [3, 1]);
    assert.equal((await api('POST', '/v1/vault/collections/members_copy2/search', { reason: 'legal_claims', match: { email: 'bob@example.com' } })).json.records.length, 0);
    assert.equal((await api('DELETE', '/v1/privacy/subjects/bob/limits/restriction')).status, 200);

    // Objects: CopyObject into a bucket of another region names its transfer record in x-custos-transfer-id.
    const cred = await api('POST', '/v3.0/OS-CREDENTIAL/credentials', { credential: { user_id: t.adminUserId } });
    const client = (transferId?: string) => {
      const c = new S3Client({ endpoint: s.custos.obsUrl, region: home.name, forcePathStyle: true, systemClockOffset: clock - Date.now(), credentials: { accessKeyId: cred.json.credential.access, secretAccessKey: cred.json.credential.secret } });
      if (transferId) c.middlewareStack.add((next) => async (args) => {
        (args.request as { headers: Record<string, string> }).headers['x-custos-transfer-id'] = transferId;
        return next(args);
      }, { step: 'build', name: 'transferId' });
      return c;
    };
    await client().send(new CreateBucketCommand({ Bucket: 'files-home', CreateBucketConfiguration: { LocationConstraint: home.name as never } }));
    await client().send(new CreateBucketCommand({ Bucket: 'files-abroad', CreateBucketConfiguration: { LocationConstraint: abroad.name as never } }));
    await client().send(new CreateBucketCommand({ Bucket: 'files-home2', CreateBucketConfiguration: { LocationConstraint: home.name as never } }));
    await client().send(new PutObjectCommand({ Bucket: 'files-home', Key: 'cv.txt', Body: 'a CV' }));
    await assert.rejects(client().send(new CopyObjectCommand({ Bucket: 'files-abroad', Key: 'cv.txt', CopySource: 'files-home/cv.txt' })), (e: { name: string; message: string }) => e.name === 'AccessDenied' && /transfer record/.test(e.message));
    await client().send(new CopyObjectCommand({ Bucket: 'files-home2', Key: 'cv.txt', CopySource: 'files-home/cv.txt' }));
    const btr = await api('POST', '/v1/privacy/transfers', { source_kind: 'bucket', source_name: 'files-home', destination_project_id: abroad.id, purpose: 'recruiting abroad', safeguard: 'binding_corporate_rules' });
    assert.equal(btr.status, 201, btr.text);
    await assert.rejects(client(tr.json.id).send(new CopyObjectCommand({ Bucket: 'files-abroad', Key: 'cv.txt', CopySource: 'files-home/cv.txt' })), (e: { name: string }) => e.name === 'AccessDenied', 'a collection\'s record does not cover a bucket');
    await client(btr.json.id).send(new CopyObjectCommand({ Bucket: 'files-abroad', Key: 'cv.txt', CopySource: 'files-home/cv.txt' }));
    const copied = await client().send(new GetObjectCommand({ Bucket: 'files-abroad', Key: 'cv.txt' }));
    assert.equal(await copied.Body!.transformToString(), 'a CV');
  });

  test('objects tagged with the subject: in the access archive, erased in every version', async () => {
    const cred = await api('POST', '/v3.0/OS-CREDENTIAL/credentials', { credential: { user_id: t.adminUserId } });
    assert.equal(cred.status, 201, cred.text);
    const s3 = new S3Client({
      endpoint: s.custos.obsUrl, region: t.projects[0]!.name, forcePathStyle: true, systemClockOffset: clock - Date.now(),
      credentials: { accessKeyId: cred.json.credential.access, secretAccessKey: cred.json.credential.secret },
    });
    const Bucket = 'subject-files';
    await s3.send(new CreateBucketCommand({ Bucket, CreateBucketConfiguration: { LocationConstraint: t.projects[0]!.name as never } }));
    await s3.send(new PutBucketVersioningCommand({ Bucket, VersioningConfiguration: { Status: 'Enabled' } }));
    for (const body of ['erin v1', 'erin v2']) await s3.send(new PutObjectCommand({ Bucket, Key: 'erin/../photo.txt', Body: body, Tagging: 'custos:subject=erin' }));
    await s3.send(new PutObjectCommand({ Bucket, Key: 'frank.txt', Body: 'frank', Tagging: 'custos:subject=frank' }));

    const access = await request('erin', 'access');
    await verify(access.id);
    const done = await execute(access.id);
    assert.equal(done.result.objects, 2);
    const files = unzipSync(new Uint8Array(await (await fetch(s.url + done.result.archive)).arrayBuffer()));
    const objectFiles = Object.keys(files).filter((f) => f.startsWith('objects/'));
    assert.equal(objectFiles.length, 2);
    assert.ok(objectFiles.every((f) => !f.includes('/../')), 'object keys cannot climb out of the archive');
    assert.deepEqual(objectFiles.map((f) => strFromU8(files[f]!)).sort(), ['erin v1', 'erin v2']);
    assert.ok(!Object.values(files).some((f) => strFromU8(f).includes('frank')));

    const erase = await request('erin', 'erasure');
    await verify(erase.id);
    const gone = await execute(erase.id);
    assert.equal(gone.result.objects.deleted_versions, 2);
    const left = await s3.send(new ListObjectVersionsCommand({ Bucket }));
    assert.deepEqual((left.Versions ?? []).map((v) => v.Key), ['frank.txt']);
    // The access archive made before the erasure went with the data, though its link had days left.
    assert.equal(gone.result.archives_deleted, 1);
    assert.equal((await fetch(s.url + done.result.archive)).status, 404);
  });

  test('bad input: unknown subjects, duplicate requests, illegal transitions get clear 4xx', async () => {
    const unknown = await api('POST', '/v1/privacy/requests', { subject_id: 'nobody-we-know', type: 'access' });
    assert.equal(unknown.status, 404, unknown.text);
    assert.equal(unknown.json.error.code, 'UnknownSubject');
    const first = await request('carol', 'portability');
    const dup = await api('POST', '/v1/privacy/requests', { subject_id: 'carol', type: 'portability' });
    assert.equal(dup.status, 409);
    assert.equal(dup.json.error.code, 'DuplicateRequest');
    assert.equal((await api('POST', '/v1/privacy/requests', { subject_id: 'carol', type: 'shredding' })).status, 400);
    assert.equal((await api('POST', '/v1/privacy/requests', { subject_id: 'bad subject', type: 'access' })).status, 400);
    // A request being carried out can be neither refused nor extended: it finishes first.
    const running = await request('carol', 'restriction');
    await sql`update privacy_requests set status = 'in_progress' where id = ${running.id}`.execute(s.custos.store.db);
    assert.equal((await api('POST', `/v1/privacy/requests/${running.id}/refuse`, { reason: 'changed our mind' })).status, 409);
    assert.equal((await api('POST', `/v1/privacy/requests/${running.id}/extend`, { months: 1, reason: 'busy' })).status, 409);
    await sql`update privacy_requests set status = 'received' where id = ${running.id}`.execute(s.custos.store.db);
    assert.equal((await api('POST', `/v1/privacy/requests/${running.id}/refuse`, { reason: 'test over' })).status, 200);
    const leap = await api('POST', '/v1/privacy/requests', { subject_id: 'carol', type: 'access', received_at: '2016-12-31T23:59:60Z' });
    assert.equal(leap.status, 400, leap.text);
    assert.match(leap.text, /received_at/);
    // Portability, end to end: the archive opens and holds carol's values and nobody else's.
    await verify(first.id);
    assert.equal((await api('POST', `/v1/privacy/requests/${first.id}/verify`, { verifier: 'attestation', evidence: { method: 'again', reference: 'x' } })).status, 409, 'verified twice');
    const done = await execute(first.id);
    assert.equal((await api('POST', `/v1/privacy/requests/${first.id}/execute`, {})).status, 409, 'executed twice');
    assert.equal((await api('POST', `/v1/privacy/requests/${first.id}/extend`, { months: 1, reason: 'late' })).status, 409, 'a completed request is not extended');
    const files = unzipSync(new Uint8Array(await (await fetch(s.url + done.result.archive)).arrayBuffer()));
    const doc = JSON.parse(strFromU8(files['subject.json']!));
    assert.equal(doc.subject_id, 'carol');
    // Her interests went when she withdrew her consent (their deletion rule waits for that event).
    assert.deepEqual(doc.vault[0].fields, { email: 'carol@example.com', phone: '+4930123456', invoice_address: 'carol, 1 Main Street, Berlin' });
    const all = Object.values(files).map((f) => strFromU8(f)).join('\n');
    for (const x of ['alice', 'bob', 'dave', 'erin']) assert.ok(!all.includes(x), `the archive holds ${x}'s data`);
    assert.equal((await api('GET', `/v1/privacy/requests/${'0'.repeat(8)}-0000-4000-8000-000000000000`)).status, 404);
  });

  test('another tenant sees none of it', async () => {
    const mine = (await api('GET', '/v1/privacy/requests')).json.requests as { id: string }[];
    assert.ok(mine.length >= 5);
    assert.deepEqual((await api('GET', '/v1/privacy/requests', undefined, other.token)).json.requests, []);
    for (const r of mine) {
      assert.equal((await api('GET', `/v1/privacy/requests/${r.id}`, undefined, other.token)).status, 404);
      assert.equal((await api('POST', `/v1/privacy/requests/${r.id}/execute`, {}, other.token)).status, 404);
    }
    assert.deepEqual((await api('GET', '/v1/privacy/subjects/alice/consents', undefined, other.token)).json, { current: [], history: [] });
    assert.deepEqual((await api('GET', '/v1/privacy/purposes', undefined, other.token)).json.purposes, []);
  });
});

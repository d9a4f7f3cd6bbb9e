/** `custos privacy ...`: purposes, consent, data-subject requests, account deregistration and its certificate. */
import { createPublicKey, verify } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { call, profile } from './client.js';
import { print, type OutputFormat } from './output.js';
import { canonicalJson } from '../privacy/deregistration.js';

const P = '/v1/privacy';
const enc = encodeURIComponent;
type Req = { id: string; subject_id: string; type: string; status: string; effective_due_at: string; overdue: boolean; extended: boolean; result: Record<string, unknown> | null };
const row = (r: Req) => ({ id: r.id, subject: r.subject_id, type: r.type, status: r.status, due: r.effective_due_at, overdue: r.overdue, extended: r.extended });

/** Adds the purposes, consent and request commands to `custos privacy`. */
export function addRightsCommands(privacy: Command): Command {
  const common = (c: Command) => c.option('--profile <name>', 'stored profile', process.env.CUSTOS_PROFILE ?? 'default').option('-o, --output <format>', 'json or table', 'table');

  const purposes = privacy.command('purposes').description('the account\'s purposes of processing and their legal bases');
  common(purposes.command('list').description('list purposes')).action(async (opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${P}/purposes`)) as { purposes: Record<string, unknown>[] };
    print(opts.output as OutputFormat, r.purposes);
  });
  common(purposes.command('set').description('declare a purpose').argument('<name>'))
    .requiredOption('--basis <basis>', 'consent, contract, legal_obligation, vital_interests, public_task or legitimate_interests')
    .option('--description <text>', 'what it is, for the privacy notice')
    .action(async (name: string, opts) => {
      const r = (await call(profile(opts.profile), 'PUT', `${P}/purposes/${enc(name)}`, { legal_basis: opts.basis, ...(opts.description ? { description: opts.description } : {}) })) as Record<string, unknown>;
      print(opts.output as OutputFormat, [r]);
    });

  const consent = privacy.command('consent').description('consent per data subject and purpose');
  common(consent.command('grant').description('record a consent given').argument('<subject>').argument('<purpose>'))
    .requiredOption('--source <text>', 'where it was given (form, checkbox, call)').requiredOption('--notice <version>', 'the privacy notice version shown')
    .action(async (subject: string, purpose: string, opts) => {
      print(opts.output as OutputFormat, [(await call(profile(opts.profile), 'POST', `${P}/subjects/${enc(subject)}/consents`, { purpose, status: 'granted', source: opts.source, notice_version: opts.notice })) as Record<string, unknown>]);
    });
  common(consent.command('withdraw').description('record a withdrawal (takes effect at once)').argument('<subject>').argument('<purpose>'))
    .requiredOption('--source <text>', 'how it was withdrawn').option('--notice <version>', 'the privacy notice version', 'n/a')
    .action(async (subject: string, purpose: string, opts) => {
      print(opts.output as OutputFormat, [(await call(profile(opts.profile), 'POST', `${P}/subjects/${enc(subject)}/consents`, { purpose, status: 'withdrawn', source: opts.source, notice_version: opts.notice })) as Record<string, unknown>]);
    });
  common(consent.command('show').description('current consent per purpose (--history for every change)').argument('<subject>')).option('--history', 'every recorded change').action(async (subject: string, opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${P}/subjects/${enc(subject)}/consents`)) as { current: Record<string, unknown>[]; history: Record<string, unknown>[] };
    print(opts.output as OutputFormat, opts.history ? r.history : r.current);
  });

  const requests = privacy.command('requests').description('data-subject requests and their deadlines');
  common(requests.command('list').description('requests (with --overdue, only the late ones)')).option('--overdue', 'only overdue requests').option('--status <status>', 'received, verified, in_progress, completed or refused').action(async (opts) => {
    const q = new URLSearchParams();
    if (opts.overdue) q.set('overdue', 'true');
    if (opts.status) q.set('status', opts.status);
    const r = (await call(profile(opts.profile), 'GET', `${P}/requests${q.size ? `?${q}` : ''}`)) as { requests: Req[] };
    print(opts.output as OutputFormat, r.requests.map(row));
  });
  common(requests.command('create').description('register a request (due in 30 days)').argument('<subject>').argument('<type>'))
    .option('--purposes <list>', 'objection / consent_withdrawal: comma-separated purposes')
    .option('--received-at <iso-time>', 'when it was received, if earlier')
    .action(async (subject: string, type: string, opts) => {
      const body = { subject_id: subject, type, ...(opts.receivedAt ? { received_at: opts.receivedAt } : {}), ...(opts.purposes ? { details: { purposes: (opts.purposes as string).split(',') } } : {}) };
      print(opts.output as OutputFormat, [row((await call(profile(opts.profile), 'POST', `${P}/requests`, body)) as Req)]);
    });
  common(requests.command('show').description('a request with its history').argument('<id>')).action(async (id: string, opts) => {
    const r = (await call(profile(opts.profile), 'GET', `${P}/requests/${enc(id)}`)) as Req & { history: Record<string, unknown>[] };
    if (opts.output === 'json') return print('json', [r]);
    print('table', [row(r)]);
    print('table', r.history);
  });
  common(requests.command('verify').description('record the identity check (attestation)').argument('<id>'))
    .requiredOption('--method <text>', 'how identity was checked').requiredOption('--reference <text>', 'where the evidence is')
    .action(async (id: string, opts) => {
      print(opts.output as OutputFormat, [row((await call(profile(opts.profile), 'POST', `${P}/requests/${enc(id)}/verify`, { verifier: 'attestation', evidence: { method: opts.method, reference: opts.reference } })) as Req)]);
    });
  common(requests.command('extend').description('extend once, by 1 or 2 months, before the deadline').argument('<id>'))
    .requiredOption('--months <n>', '1 or 2').requiredOption('--reason <text>', 'why (told to the subject)')
    .action(async (id: string, opts) => {
      print(opts.output as OutputFormat, [row((await call(profile(opts.profile), 'POST', `${P}/requests/${enc(id)}/extend`, { months: Number(opts.months), reason: opts.reason })) as Req)]);
    });
  common(requests.command('refuse').description('refuse, with the reason').argument('<id>')).requiredOption('--reason <text>', 'why').action(async (id: string, opts) => {
    print(opts.output as OutputFormat, [row((await call(profile(opts.profile), 'POST', `${P}/requests/${enc(id)}/refuse`, { reason: opts.reason })) as Req)]);
  });
  common(requests.command('execute').description('carry out a verified request (access/portability: --out saves the archive)').argument('<id>'))
    .option('--project <id>', 'project whose privacy key seals the archive').option('--out <file.zip>', 'download the archive here')
    .action(async (id: string, opts) => {
      const p = profile(opts.profile);
      const r = (await call(p, 'POST', `${P}/requests/${enc(id)}/execute`, opts.project ? { project_id: opts.project } : {})) as Req;
      const link = r.result?.archive as string | undefined;
      if (opts.out && link) {
        const res = await fetch(new URL(link, p.endpoint));
        if (!res.ok) throw Object.assign(new Error(`archive download failed: ${res.status}`), { exitCode: 1 });
        writeFileSync(opts.out, Buffer.from(await res.arrayBuffer()), { mode: 0o600 });
      }
      print(opts.output as OutputFormat, [{ ...row(r), ...(r.result ?? {}) }]);
    });
  const dereg = (r: Record<string, unknown>) => ({ account: r.account_name, status: r.status, requested_at: r.requested_at, by: r.requested_by, destroy_after: r.destroy_after, cancelled_at: r.cancelled_at, destroyed_at: r.destroyed_at });
  common(privacy.command('deregister').description('deregister the account (needs a login with MFA): frozen now, destroyed after the retention period'))
    .requiredOption('--confirm <account-name>', 'the account\'s name, to confirm').action(async (opts) => {
      print(opts.output as OutputFormat, [dereg((await call(profile(opts.profile), 'POST', `${P}/deregistration`, { confirm_account_name: opts.confirm })) as Record<string, unknown>)]);
    });
  common(privacy.command('deregistration').description('the account\'s deregistration status')).action(async (opts) => {
    print(opts.output as OutputFormat, [dereg((await call(profile(opts.profile), 'GET', `${P}/deregistration`)) as Record<string, unknown>)]);
  });
  common(privacy.command('cancel-deregistration').description('cancel during the retention period; access comes back')).action(async (opts) => {
    print(opts.output as OutputFormat, [dereg((await call(profile(opts.profile), 'DELETE', `${P}/deregistration`)) as Record<string, unknown>)]);
  });
  common(privacy.command('certificate').description('a destroyed account\'s destruction certificate, its signature checked against the published key (operator)').argument('<account-id>'))
    .option('--out <file.json>', 'save the certificate with its signature').action(async (accountId: string, opts) => {
      const p = profile(opts.profile);
      const c = (await call(p, 'GET', `${P}/destruction-certificates/${enc(accountId)}`)) as { certificate: Record<string, any>; signature: string; key_id: string };
      const k = (await call(p, 'GET', `${P}/certificate-key`)) as { key_id: string; public_key: string };
      const ok = k.key_id === c.key_id && verify(null, Buffer.from(canonicalJson(c.certificate)), createPublicKey(k.public_key), Buffer.from(c.signature, 'base64'));
      if (opts.out) writeFileSync(opts.out, JSON.stringify(c, null, 2));
      if (!ok) throw Object.assign(new Error('the certificate\'s signature does NOT verify'), { exitCode: 4 });
      const d = c.certificate.destroyed;
      print(opts.output as OutputFormat, [{ account: c.certificate.account.name, destroyed_at: c.certificate.destroyed_at, signature: 'verified', collections: d.vault.collections, records: d.vault.records, buckets: d.object_storage.buckets, object_versions: d.object_storage.object_versions, kms_keys: d.kms.keys_destroyed, users: d.iam.users }]);
    });
  return privacy;
}

export function privacyCommand(): Command {
  return addRightsCommands(new Command('privacy').description('privacy operations: purposes, consent, data-subject requests, deregistration'));
}

/**
 * Delivering a webhook notification to a URL an account chose, without letting that URL reach what
 * only the server can: its loopback, the private networks it sits in, link-local cloud metadata
 * (169.254.169.254) and the like. Every address the host name resolves to is checked, and the
 * connection goes to a checked address (the lookup is the connection's own, so a name that resolves
 * to something else on a second lookup cannot slip in). IP literals are checked the same way.
 * An operator whose receivers are on an internal network allows that with
 * `privacyWebhookInternalTargets`.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { lookup as dnsLookupAll } from 'node:dns/promises';
import { request as httpRequest, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';

export class InternalAddressError extends Error {
  constructor(readonly range: string) {
    super(`the webhook's host resolves to an internal address (${range}); internal targets are not allowed`);
  }
}

/** The range an address is in when it is not a public unicast address, else null. */
export function internalRange(address: string): string | null {
  if (!ipaddr.isValid(address)) return 'invalid';
  const parsed = ipaddr.process(address);
  const range = parsed.range();
  if (range !== 'unicast') return range;
  // IPv4-compatible IPv6 (::a.b.c.d, deprecated): not public whatever the embedded address.
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).parts.slice(0, 6).every((p) => p === 0)) return 'ipv4Compatible';
  return null;
}

/** Throws for the first internal address among a name's addresses. */
function refuseInternal(addresses: readonly { address: string }[]): void {
  for (const a of addresses) {
    const range = internalRange(a.address);
    if (range) throw new InternalAddressError(range);
  }
}

/** Checks a URL's host when it is an IP literal (a name is checked when it is resolved). */
export function checkLiteralHost(url: URL, allowInternal: boolean): void {
  if (allowInternal) return;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (isIP(host)) {
    const range = internalRange(host);
    if (range) throw new InternalAddressError(range);
  } else if (host === 'localhost' || host.endsWith('.localhost')) {
    throw new InternalAddressError('loopback');
  }
}

/**
 * The check when a webhook is set: an IP literal, or every address the name resolves to now, must be
 * public. A name that does not resolve passes (delivery checks again, and retries).
 */
export async function checkWebhookTarget(url: URL, allowInternal: boolean): Promise<void> {
  checkLiteralHost(url, allowInternal);
  if (allowInternal || isIP(url.hostname.replace(/^\[|\]$/g, ''))) return;
  refuseInternal(await dnsLookupAll(url.hostname, { all: true }).catch(() => []));
}

type Resolver = (hostname: string, options: { all: true; family?: number }, cb: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

/** The connection's lookup: every address of the name must be public (unless internal targets are allowed). */
export function guardedLookup(allowInternal: boolean, resolve: Resolver = dnsLookup as unknown as Resolver): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...(options as { family?: number }), all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = addresses;
      if (!allowInternal) {
        try {
          refuseInternal(list);
        } catch (e) {
          return callback(e as InternalAddressError, '', 0);
        }
      }
      if (!list.length) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
      if ((options as { all?: boolean }).all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, list);
      callback(null, list[0]!.address, list[0]!.family);
    });
  };
}

export interface WebhookResponse {
  status: number;
}

/** POSTs `body` to `url` (no redirects followed), resolving with the status once the response ended. */
export function postWebhook(url: string, body: string, headers: Record<string, string>, opts: { allowInternal: boolean; timeoutMs: number }): Promise<WebhookResponse> {
  return new Promise((resolve, reject) => {
    let u: URL;
    try {
      u = new URL(url);
      checkLiteralHost(u, opts.allowInternal);
    } catch (e) {
      reject(e as Error);
      return;
    }
    const options: RequestOptions = {
      method: 'POST',
      headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) },
      lookup: guardedLookup(opts.allowInternal),
      // A connection of its own: a pooled socket would skip the lookup, and with it the check.
      agent: false,
    };
    // One deadline for the whole exchange: a receiver trickling bytes does not hold the delivery open.
    const deadline = setTimeout(() => req.destroy(Object.assign(new Error('timed out'), { name: 'TimeoutError' })), opts.timeoutMs);
    const settle = <T>(fn: (v: T) => void) => (v: T) => {
      clearTimeout(deadline);
      fn(v);
    };
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, options, (res) => {
      res.resume();
      res.on('end', () => settle(resolve)({ status: res.statusCode ?? 0 }));
      res.on('error', settle(reject));
    });
    req.on('error', settle(reject));
    req.end(body);
  });
}

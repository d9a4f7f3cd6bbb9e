import { Secret, TOTP } from 'otpauth';

const PERIOD = 30;

export function newTotpSecret(): string {
  return new Secret({ size: 20 }).base32;
}

export function totpUri(secretBase32: string, accountName: string, userName: string): string {
  return new TOTP({ issuer: 'Custos', label: `${accountName}:${userName}`, secret: Secret.fromBase32(secretBase32), period: PERIOD }).toString();
}

/**
 * Checks a 6-digit code against the secret, allowing one step of clock drift either way.
 * Returns the time step the code belongs to (so callers can refuse its reuse), or null.
 */
export function checkTotp(secretBase32: string, code: string, nowMs: number): number | null {
  if (!/^\d{6}$/.test(code)) return null;
  const totp = new TOTP({ secret: Secret.fromBase32(secretBase32), period: PERIOD, digits: 6, algorithm: 'SHA1' });
  const delta = totp.validate({ token: code, timestamp: nowMs, window: 1 });
  if (delta === null) return null;
  return Math.floor(nowMs / 1000 / PERIOD) + delta;
}

/** For tests and the CLI: the code for a moment in time. */
export function totpCode(secretBase32: string, nowMs: number): string {
  return new TOTP({ secret: Secret.fromBase32(secretBase32), period: PERIOD }).generate({ timestamp: nowMs });
}

import { hash, verify, Algorithm } from '@node-rs/argon2';

/** OWASP's argon2id minimum (m=19 MiB, t=2, p=1). */
const ARGON2 = { algorithm: Algorithm.Argon2id, memoryCost: 19456, timeCost: 2, parallelism: 1 };

export interface PasswordPolicy {
  minLength: number;
  /** How many of: lower case, upper case, digits, other characters. */
  minCharClasses: number;
  /** How many previous passwords may not be used again. */
  reuseHistory: number;
}

export const DEFAULT_PASSWORD_POLICY: PasswordPolicy = { minLength: 8, minCharClasses: 3, reuseHistory: 3 };

export function hashPassword(password: string): Promise<string> {
  return hash(password, ARGON2);
}

export async function verifyPassword(encoded: string, password: string): Promise<boolean> {
  try {
    return await verify(encoded, password);
  } catch {
    return false;
  }
}

// A real argon2id hash of a random string: checking against it when the user does not exist keeps the
// response time of "no such user" the same as "wrong password".
let dummy: Promise<string> | undefined;
export async function burnPasswordCheck(password: string): Promise<void> {
  dummy ??= hash(crypto.randomUUID(), ARGON2);
  await verifyPassword(await dummy, password);
}

/** Returns the rules the password breaks, empty when it is acceptable. */
export function passwordProblems(password: string, userName: string, policy: PasswordPolicy): string[] {
  const problems: string[] = [];
  if (password.length < policy.minLength) problems.push(`at least ${policy.minLength} characters`);
  if (password.length > 128) problems.push('at most 128 characters');
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^a-zA-Z0-9]/].filter((re) => re.test(password)).length;
  if (classes < policy.minCharClasses)
    problems.push(`at least ${policy.minCharClasses} of: lower case, upper case, digits, special characters`);
  const lower = password.toLowerCase();
  const name = userName.toLowerCase();
  if (name.length > 0 && (lower.includes(name) || lower.includes([...name].reverse().join(''))))
    problems.push('must not contain the user name or its reverse');
  return problems;
}

// Third-party clients the compatibility tests drive: whether one is installed, and whether it must be.
import { execFileSync } from 'node:child_process';

/** In CI (or with CUSTOS_TEST_CLIENTS=1) a missing client is a failure, not a skip. */
export const CLIENTS_REQUIRED = process.env.CI === 'true' || process.env.CUSTOS_TEST_CLIENTS === '1';

/** Whether `cmd args` runs successfully here. */
export function available(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

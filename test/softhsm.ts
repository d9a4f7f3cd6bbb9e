// SoftHSMv2 for tests: whether it is installed, and a token of the test's own in a temporary directory.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';
export const SOFTHSM_REQUIRED = process.env.CI === 'true' || process.env.CUSTOS_TEST_PKCS11 === '1';
export const SOFTHSM_AVAILABLE = existsSync(SOFTHSM_MODULE) && (() => {
  try {
    execFileSync('softhsm2-util', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
export const SOFTHSM_MISSING = `SoftHSMv2 is not installed (${SOFTHSM_MODULE} and softhsm2-util): apt-get install -y softhsm2`;

/**
 * Creates a token in a fresh directory and points SOFTHSM2_CONF at it (read when the module is
 * initialised). The PIN is put in the environment variable `pinEnv`.
 */
export function createSoftHsmToken(label: string, pin: string, pinEnv: string): { dir: string; tokensDir: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-hsm-'));
  const tokensDir = path.join(dir, 'tokens');
  mkdirSync(tokensDir);
  writeFileSync(path.join(dir, 'softhsm2.conf'), `directories.tokendir = ${tokensDir}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = path.join(dir, 'softhsm2.conf');
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', `${pin}so`], { stdio: 'ignore' });
  process.env[pinEnv] = pin;
  return {
    dir, tokensDir,
    remove() {
      delete process.env[pinEnv];
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

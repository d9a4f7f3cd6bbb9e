// Benchmark-only servers in their own processes (as Custos runs in its own): bench/floor-server for
// bench/kms and bench/iam, bench/null-s3-server for bench/obs. Each prints `listening <port>`.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export interface BenchServer {
  port: number;
  url: string;
  stop(): Promise<void>;
}

export function startFloorServer(env: Record<string, string> = {}): Promise<BenchServer> {
  return startBenchServer('floor-server.js', env);
}

/** Starts `script` (a file of dist/bench) and waits for its `listening <port>` line. */
export async function startBenchServer(script: string, env: Record<string, string> = {}): Promise<BenchServer> {
  const child = spawn(process.execPath, [path.join(here, script)], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * The rate a server whose /health runs at `health` could reach on a call that does the floor's work and
 * nothing else: per-request costs add (the machine is CPU-bound), so it pays the floor's time for the
 * call plus what its own /health costs beyond the floor's /health (its hooks: request id, logs, metrics).
 */
export function ceilingRate(floorCall: number, floorHealth: number, health: number): number {
  return 1 / (1 / floorCall + Math.max(0, 1 / health - 1 / floorHealth));
}

// bench/obs's baseline: the same server storing objects without encryption. Only this benchmark
// entry point can do that; neither the configuration nor the `custos` CLI can.
import { Command } from 'commander';
import { withServerOptions } from '../src/cli/options.js';
import { serve } from '../src/cli/serve.js';

const program = new Command();
withServerOptions(program.command('serve')).action((opts) => serve(opts, { plaintextObjectsForBenchmarks: true }));
program.parseAsync(process.argv).catch((e: Error) => {
  process.stderr.write(`${e.message}\n`);
  process.exit(1);
});

// The benchmarks start servers the same way the crash tests do.
export * from '../test/process.js';

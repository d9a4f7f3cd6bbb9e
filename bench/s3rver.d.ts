// s3rver ships no types; the little bench/obs and the tests' upstream (test/store/s3rver.ts) use of it.
declare module 's3rver' {
  export default class S3rver {
    constructor(options: { port?: number; address?: string; directory: string; silent?: boolean; configureBuckets?: { name: string; configs?: string[] }[] });
    run(): Promise<{ port: number; address: string }>;
    close(): Promise<void>;
  }
}

// s3rver ships no types; the little bench/obs uses of it.
declare module 's3rver' {
  export default class S3rver {
    constructor(options: { port?: number; address?: string; directory: string; silent?: boolean });
    run(): Promise<{ port: number; address: string }>;
    close(): Promise<void>;
  }
}

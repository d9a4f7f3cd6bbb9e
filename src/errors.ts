/**
 * The base of every service's error type. `status` is the HTTP status the edge answers with;
 * `code` is stable and documented; `message` is safe to show a client (no secrets, no personal data).
 */
export class ServiceError extends Error {
  constructor(
    readonly service: string,
    readonly status: number,
    readonly code: string,
    message: string,
    /** Extra, client-safe fields some dialects need (e.g. the S3 error's resource). */
    readonly details: Record<string, string> = {},
  ) {
    super(message);
    this.name = `${service}Error`;
  }
}

/** Errors of the HTTP edge itself (bad JSON, body too large, unknown route, authentication). */
export class EdgeError extends ServiceError {
  constructor(status: number, code: string, message: string) {
    super('Custos', status, code, message);
  }
}

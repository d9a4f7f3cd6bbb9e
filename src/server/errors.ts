import type { FastifyError } from 'fastify';
import { XMLBuilder } from 'fast-xml-parser';
import { ServiceError } from '../errors.js';

export type ApiDialect = 'huawei' | 'huawei-kms' | 'custos' | 'aws-json' | 's3';

/** The edge's own failures, worded per dialect. */
const EDGE_CODES: Record<string, { huawei: string; custos: string; aws: string; s3: string }> = {
  badRequest: { huawei: 'APIGW.0201', custos: 'BadRequest', aws: 'ValidationException', s3: 'InvalidArgument' },
  unauthenticated: { huawei: 'APIGW.0301', custos: 'Unauthenticated', aws: 'UnrecognizedClientException', s3: 'AccessDenied' },
  forbidden: { huawei: 'APIGW.0302', custos: 'Forbidden', aws: 'AccessDeniedException', s3: 'AccessDenied' },
  notFound: { huawei: 'APIGW.0101', custos: 'NotFound', aws: 'NotFoundException', s3: 'NoSuchBucket' },
  tooLarge: { huawei: 'APIGW.0201', custos: 'PayloadTooLarge', aws: 'ValidationException', s3: 'EntityTooLarge' },
  mediaType: { huawei: 'APIGW.0201', custos: 'UnsupportedMediaType', aws: 'ValidationException', s3: 'InvalidArgument' },
  internal: { huawei: 'APIGW.0202', custos: 'InternalError', aws: 'InternalFailure', s3: 'InternalError' },
  unavailable: { huawei: 'APIGW.0203', custos: 'ServiceUnavailable', aws: 'ServiceUnavailableException', s3: 'ServiceUnavailable' },
};

export class HttpFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function edge(kind: keyof typeof EDGE_CODES, dialect: ApiDialect, status: number, message: string): HttpFailure {
  const c = EDGE_CODES[kind]!;
  return new HttpFailure(status, dialect === 'custos' ? c.custos : dialect === 'aws-json' ? c.aws : dialect === 's3' ? c.s3 : c.huawei, message);
}

export const edgeFailure = edge;

/** What an AWS SDK expects to see for an error of another service (authentication, authorization). */
function awsCodeOf(err: ServiceError): string {
  if (err.code === 'IAM.0009') return 'InvalidSignatureException';
  switch (err.status) {
    case 401:
      return 'UnrecognizedClientException';
    case 403:
      return 'AccessDeniedException';
    case 404:
      return 'NotFoundException';
    case 409:
      return 'ConflictException';
    default:
      return err.status >= 500 ? 'InternalFailure' : 'ValidationException';
  }
}

/** Maps anything thrown while serving a request to a client-safe status, code and message. */
export function toFailure(err: unknown, dialect: ApiDialect): { failure: HttpFailure; unexpected: boolean } {
  if (err instanceof ServiceError) {
    // A service whose errors are named differently per dialect (KMS) says how.
    if (dialect === 's3' && err.service !== 'OBS') {
      // S3 answers every authentication and authorization failure with 403.
      const [status, code] = err.code === 'IAM.0009' ? [403, 'SignatureDoesNotMatch'] : err.status === 401 || err.status === 403 ? [403, 'AccessDenied'] : [err.status, err.status === 404 ? 'NoSuchKey' : err.status >= 500 ? 'InternalError' : 'InvalidRequest'];
      return { failure: new HttpFailure(status, code, err.message), unexpected: false };
    }
    const code = (err as ServiceError & { codeFor?: (d: ApiDialect) => string }).codeFor?.(dialect) ?? (dialect === 'aws-json' ? awsCodeOf(err) : err.code);
    return { failure: new HttpFailure(err.status, code, err.message), unexpected: false };
  }
  if (err instanceof HttpFailure) return { failure: err, unexpected: false };
  const fe = err as FastifyError & { validation?: unknown[]; validationContext?: string };
  if (fe && Array.isArray(fe.validation)) {
    return { failure: edge('badRequest', dialect, 400, `invalid request: ${fe.message}`), unexpected: false };
  }
  switch (fe?.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { failure: edge('tooLarge', dialect, 413, 'the request body is too large'), unexpected: false };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { failure: edge('mediaType', dialect, 415, 'unsupported content type; send application/json'), unexpected: false };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return { failure: edge('badRequest', dialect, 400, 'the body is not valid JSON'), unexpected: false };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { failure: edge('badRequest', dialect, 400, 'the Content-Length does not match the body'), unexpected: false };
  }
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return { failure: edge('badRequest', dialect, fe.statusCode, 'the request is malformed'), unexpected: false };
  }
  return { failure: edge('internal', dialect, 500, 'internal error; the request id identifies it in the server log'), unexpected: true };
}

export function errorBody(f: HttpFailure, dialect: ApiDialect, requestId: string): unknown {
  switch (dialect) {
    case 'huawei':
      return { error_code: f.code, error_msg: f.message, request_id: requestId };
    case 'huawei-kms':
      return { error: { error_code: f.code, error_msg: f.message }, request_id: requestId };
    case 'aws-json':
      return { __type: f.code, message: f.message };
    case 'custos':
      return { error: { code: f.code, message: f.message, request_id: requestId } };
    case 's3':
      return s3ErrorXml(f.code, f.message, requestId);
  }
}

const xml = new XMLBuilder({ ignoreAttributes: false, suppressEmptyNode: true });
/** S3's error document. */
export function s3ErrorXml(code: string, message: string, requestId: string, resource?: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n${xml.build({ Error: { Code: code, Message: message, ...(resource ? { Resource: resource } : {}), RequestId: requestId } })}`;
}

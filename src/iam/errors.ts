import { ServiceError } from '../errors.js';

/** Stable IAM error codes (Huawei IAM style `IAM.xxxx`). */
export const IamCodes = {
  badRequest: 'IAM.0001',
  unauthenticated: 'IAM.0002',
  forbidden: 'IAM.0003',
  notFound: 'IAM.0004',
  conflict: 'IAM.0005',
  locked: 'IAM.0006',
  mfaRequired: 'IAM.0007',
  passwordPolicy: 'IAM.0008',
  signature: 'IAM.0009',
  accountFrozen: 'IAM.0010',
} as const;

export class IamError extends ServiceError {
  constructor(status: number, code: string, message: string) {
    super('IAM', status, code, message);
  }
  static badRequest(msg: string) {
    return new IamError(400, IamCodes.badRequest, msg);
  }
  static unauthenticated(msg = 'the request could not be authenticated') {
    return new IamError(401, IamCodes.unauthenticated, msg);
  }
  static forbidden(msg = 'the caller is not authorized to perform this action') {
    return new IamError(403, IamCodes.forbidden, msg);
  }
  static notFound(what: string) {
    return new IamError(404, IamCodes.notFound, `${what} not found`);
  }
  static conflict(msg: string) {
    return new IamError(409, IamCodes.conflict, msg);
  }
}

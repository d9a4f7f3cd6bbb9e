import { ServiceError } from '../errors.js';

/**
 * KMS failures by kind; each dialect names them its own way (Huawei `KMS.xxxx`, AWS exception names).
 * The kind is the stable code in Custos's own documentation (docs/kms.md).
 */
const KINDS = {
  InvalidArgument: { huawei: 'KMS.0201', aws: 'ValidationException' },
  NotFound: { huawei: 'KMS.0202', aws: 'NotFoundException' },
  Disabled: { huawei: 'KMS.0203', aws: 'DisabledException' },
  InvalidState: { huawei: 'KMS.0204', aws: 'KMSInvalidStateException' },
  KeyDestroyed: { huawei: 'KMS.0205', aws: 'KMSInvalidStateException' },
  InvalidCiphertext: { huawei: 'KMS.0206', aws: 'InvalidCiphertextException' },
  IncorrectKey: { huawei: 'KMS.0206', aws: 'IncorrectKeyException' },
  InvalidKeyUsage: { huawei: 'KMS.0207', aws: 'InvalidKeyUsageException' },
  AlreadyExists: { huawei: 'KMS.0208', aws: 'AlreadyExistsException' },
  InvalidImportToken: { huawei: 'KMS.0209', aws: 'InvalidImportTokenException' },
  ExpiredImportToken: { huawei: 'KMS.0209', aws: 'ExpiredImportTokenException' },
  IncorrectKeyMaterial: { huawei: 'KMS.0210', aws: 'IncorrectKeyMaterialException' },
  InvalidGrantId: { huawei: 'KMS.0211', aws: 'InvalidGrantIdException' },
  Unsupported: { huawei: 'KMS.0212', aws: 'UnsupportedOperationException' },
  InvalidMarker: { huawei: 'KMS.0213', aws: 'InvalidMarkerException' },
  LimitExceeded: { huawei: 'KMS.0214', aws: 'LimitExceededException' },
  InvalidSignature: { huawei: 'KMS.0215', aws: 'KMSInvalidSignatureException' },
  AccessDenied: { huawei: 'KMS.0216', aws: 'AccessDeniedException' },
} as const;
export type KmsErrorKind = keyof typeof KINDS;

export class KmsError extends ServiceError {
  constructor(status: number, readonly kind: KmsErrorKind, message: string) {
    super('KMS', status, kind, message);
  }

  codeFor(dialect: string): string {
    return dialect === 'aws-json' ? KINDS[this.kind].aws : dialect === 'huawei-kms' || dialect === 'huawei' ? KINDS[this.kind].huawei : this.kind;
  }

  static invalid(message: string): KmsError {
    return new KmsError(400, 'InvalidArgument', message);
  }
  static notFound(what = 'key'): KmsError {
    return new KmsError(404, 'NotFound', `${what} not found`);
  }
}

import type { Kysely } from 'kysely';

// Multipart uploads with a full-object checksum (x-amz-checksum-type FULL_OBJECT, the only form of
// CRC64NVME): the type the upload was created with; null for uploads made before, which are COMPOSITE.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_uploads').addColumn('checksum_type', 'varchar(16)').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_uploads').dropColumn('checksum_type').execute();
}

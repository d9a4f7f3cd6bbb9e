import type { Kysely } from 'kysely';

// Multipart checksums: the algorithm an upload was created with (x-amz-checksum-algorithm) and each
// part's checksum under it (`<algorithm>:<base64>`), from which completion computes the object's
// composite checksum.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_uploads').addColumn('checksum_algorithm', 'varchar(16)').execute();
  await db.schema.alterTable('obs_upload_parts').addColumn('checksum', 'varchar(160)').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_upload_parts').dropColumn('checksum').execute();
  await db.schema.alterTable('obs_uploads').dropColumn('checksum_algorithm').execute();
}

import type { Kysely } from 'kysely';

// OBS checksums: the full-object checksum a client declared and the server verified on upload
// (`<algorithm>:<base64>`, e.g. `crc32c:4waSgw==`), returned on GET/HEAD with x-amz-checksum-mode: ENABLED.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_objects').addColumn('checksum', 'varchar(160)').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_objects').dropColumn('checksum').execute();
}

import type { Kysely } from 'kysely';

// A fingerprint of the material first imported into a key (origin external): re-importing, after the
// material was deleted or expired, must bring the same material back, as AWS KMS requires; other
// material would leave everything encrypted under the key undecryptable, and nodes holding the old
// material unwrapped would disagree with the rest. Keys imported before this column existed take the
// fingerprint of their next import.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('kms_keys').addColumn('material_fingerprint', 'varchar(64)').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('kms_keys').dropColumn('material_fingerprint').execute();
}

import type { Kysely } from 'kysely';

// How far each trail's digests have been delivered to the export directory (auditExportDir): a
// delivery that failed (the directory unavailable, the disk full) is made again with the trail's
// next digest, in order, instead of leaving a gap in the export. Trails with no row yet start at the
// digest they next write.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('audit_deliveries')
    .addColumn('trail', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('delivered_seq', 'int8', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('audit_deliveries').execute();
}

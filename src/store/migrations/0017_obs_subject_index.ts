import type { Kysely } from 'kysely';

// The data subject an object version is tagged with (`custos:subject`), indexed: data-subject
// requests find a subject's objects through it instead of reading every tagged object's tags.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_objects').addColumn('subject_id', 'varchar(256)').execute();
  await db.schema.createIndex('obs_objects_subject').on('obs_objects').columns(['subject_id', 'bucket_id']).execute();
  // Versions tagged before this migration: read in batches, in primary-key order.
  let after: { bucket_id: string; key: string; version_id: string } | null = null;
  for (;;) {
    let q = db.selectFrom('obs_objects').select(['bucket_id', 'key', 'version_id', 'tags_json']).where('tags_json', 'like', '%"custos:subject"%');
    if (after) {
      const a = after;
      q = q.where((eb) => eb.or([
        eb('bucket_id', '>', a.bucket_id),
        eb.and([eb('bucket_id', '=', a.bucket_id), eb('key', '>', a.key)]),
        eb.and([eb('bucket_id', '=', a.bucket_id), eb('key', '=', a.key), eb('version_id', '>', a.version_id)]),
      ]));
    }
    const rows = (await q.orderBy('bucket_id').orderBy('key').orderBy('version_id').limit(1000).execute()) as { bucket_id: string; key: string; version_id: string; tags_json: string }[];
    for (const r of rows) {
      const subject = (JSON.parse(r.tags_json) as Record<string, string>)['custos:subject'];
      if (typeof subject === 'string') {
        await db.updateTable('obs_objects').set({ subject_id: subject }).where('bucket_id', '=', r.bucket_id).where('key', '=', r.key).where('version_id', '=', r.version_id).execute();
      }
    }
    if (rows.length < 1000) break;
    after = rows[rows.length - 1]!;
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('obs_objects_subject').execute();
  await db.schema.alterTable('obs_objects').dropColumn('subject_id').execute();
}

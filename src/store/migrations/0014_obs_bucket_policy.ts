import type { Kysely } from 'kysely';

// Bucket policies: the document as the owner sent it (returned by GetBucketPolicy) and its compiled
// form (IAM statements with principals resolved to ids), which is what authorization reads.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('policy_json', 'text').execute();
  await db.schema.alterTable('obs_buckets').addColumn('policy_compiled_json', 'text').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').dropColumn('policy_compiled_json').execute();
  await db.schema.alterTable('obs_buckets').dropColumn('policy_json').execute();
}

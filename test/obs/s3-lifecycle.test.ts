// Lifecycle rules beyond prefix-and-days, through @aws-sdk/client-s3 with the server's clock moved:
// filters by tags and object size (under And), expiration on a date, expired delete markers, S3's
// validation of rules, and a rule's keys not crowded out by other keys.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CreateBucketCommand, DeleteObjectCommand, GetBucketLifecycleConfigurationCommand, ListObjectVersionsCommand, ListObjectsV2Command, PutBucketLifecycleConfigurationCommand,
  PutBucketVersioningCommand, PutObjectCommand, S3Client, type LifecycleRule,
} from '@aws-sdk/client-s3';
import { sdkFailure, startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { accessKey } from '../s3.js';

const DAY = 86_400_000;
let s: TestServer;
let t: Tenant;
let clock = Date.now();
let credentials: { accessKeyId: string; secretAccessKey: string };
const clients: S3Client[] = [];
/** A client whose clock agrees with the server's (moved) clock. */
function s3(): S3Client {
  const c = new S3Client({ endpoint: s.custos.obsUrl, region: t.projects[0]!.name, forcePathStyle: true, systemClockOffset: clock - Date.now(), credentials });
  clients.push(c);
  return c;
}
async function run() {
  await s.custos.obs.releaseLifecycleLease();
  return s.custos.obs.runLifecycle();
}
const keys = async (bucket: string) => ((await s3().send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map((o) => o.Key!).sort();

before(async () => {
  s = await startTestServer({ now: () => clock });
  t = await s.createTenant();
  credentials = await accessKey(s, t);
});
after(async () => {
  for (const c of clients) c.destroy();
  await s?.close();
});

describe('lifecycle', () => {
  test('tag and size filters (under And) select exactly their objects; the configuration round-trips', async () => {
    const c = s3();
    await c.send(new CreateBucketCommand({ Bucket: 'filtered' }));
    const rules: LifecycleRule[] = [
      { ID: 'temp-big', Status: 'Enabled', Filter: { And: { Prefix: 'exports/', Tags: [{ Key: 'retention', Value: 'short' }], ObjectSizeGreaterThan: 100 } }, Expiration: { Days: 1 } },
      { ID: 'scratch', Status: 'Enabled', Filter: { Tag: { Key: 'scratch', Value: 'yes' } }, Expiration: { Days: 3 } },
      { ID: 'tiny', Status: 'Enabled', Filter: { ObjectSizeLessThan: 10 }, Expiration: { Days: 2 } },
    ];
    await c.send(new PutBucketLifecycleConfigurationCommand({ Bucket: 'filtered', LifecycleConfiguration: { Rules: rules } }));
    const got = (await c.send(new GetBucketLifecycleConfigurationCommand({ Bucket: 'filtered' }))).Rules!;
    assert.deepEqual(got.map((r) => [r.ID, r.Filter, r.Expiration?.Days]), [
      ['temp-big', { And: { Prefix: 'exports/', Tags: [{ Key: 'retention', Value: 'short' }], ObjectSizeGreaterThan: 100 } }, 1],
      ['scratch', { Tag: { Key: 'scratch', Value: 'yes' } }, 3],
      ['tiny', { ObjectSizeLessThan: 10 }, 2],
    ]);
    const big = 'x'.repeat(500);
    await c.send(new PutObjectCommand({ Bucket: 'filtered', Key: 'exports/a.csv', Body: big, Tagging: 'retention=short' }));
    await c.send(new PutObjectCommand({ Bucket: 'filtered', Key: 'exports/b.csv', Body: big, Tagging: 'retention=long' }));
    await c.send(new PutObjectCommand({ Bucket: 'filtered', Key: 'exports/small.csv', Body: 'x'.repeat(50), Tagging: 'retention=short' }));
    await c.send(new PutObjectCommand({ Bucket: 'filtered', Key: 'other/a.csv', Body: big, Tagging: 'retention=short' }));
    await c.send(new PutObjectCommand({ Bucket: 'filtered', Key: 'notes/scratch.txt', Body: big, Tagging: 'scratch=yes&owner=ana' }));
    await c.send(new PutObjectCommand({ Bucket: 'filtered', Key: 'notes/dot.txt', Body: '.' }));
    clock += 1.5 * DAY;
    assert.equal((await run()).expired, 1);
    assert.deepEqual(await keys('filtered'), ['exports/b.csv', 'exports/small.csv', 'notes/dot.txt', 'notes/scratch.txt', 'other/a.csv'], 'only exports/ + tag + size');
    clock += 1 * DAY;
    assert.equal((await run()).expired, 1);
    assert.ok(!(await keys('filtered')).includes('notes/dot.txt'), 'under 10 bytes, after 2 days');
    clock += 1 * DAY;
    assert.equal((await run()).expired, 1);
    assert.deepEqual(await keys('filtered'), ['exports/b.csv', 'exports/small.csv', 'other/a.csv'], 'the tagged scratch note after 3 days');
  });

  test('expiration on a date; a rule\'s keys are not crowded out of a run by 1,000 older keys under another prefix', async () => {
    const c = s3();
    await c.send(new CreateBucketCommand({ Bucket: 'dated' }));
    for (let i = 0; i < 1005; i++) await c.send(new PutObjectCommand({ Bucket: 'dated', Key: `archive/${String(i).padStart(4, '0')}`, Body: 'a' }));
    clock += 1000;
    await c.send(new PutObjectCommand({ Bucket: 'dated', Key: 'campaign/banner.png', Body: 'b' }));
    const midnight = new Date(Math.ceil((clock + 2 * DAY) / DAY) * DAY);
    await c.send(new PutBucketLifecycleConfigurationCommand({ Bucket: 'dated', LifecycleConfiguration: { Rules: [
      { ID: 'campaign-ends', Status: 'Enabled', Filter: { Prefix: 'campaign/' }, Expiration: { Date: midnight } },
      { ID: 'archive-forever', Status: 'Disabled', Filter: { Prefix: 'archive/' }, Expiration: { Days: 1 } },
    ] } }));
    assert.equal((await c.send(new GetBucketLifecycleConfigurationCommand({ Bucket: 'dated' }))).Rules![0]!.Expiration?.Date?.getTime(), midnight.getTime());
    clock = midnight.getTime() - 60_000;
    assert.equal((await run()).expired, 0, 'not before the date');
    clock = midnight.getTime() + 60_000;
    assert.equal((await run()).expired, 1);
    const left = await s3().send(new ListObjectsV2Command({ Bucket: 'dated', Prefix: 'campaign/' }));
    assert.equal(left.KeyCount, 0);
    assert.equal((await s3().send(new ListObjectsV2Command({ Bucket: 'dated', Prefix: 'archive/' }))).KeyCount, 1000, 'a disabled rule does nothing (1,000: one page)');
  });

  test('expired delete markers go once no version is left behind them', async () => {
    const c = s3();
    await c.send(new CreateBucketCommand({ Bucket: 'markers' }));
    await c.send(new PutBucketVersioningCommand({ Bucket: 'markers', VersioningConfiguration: { Status: 'Enabled' } }));
    await c.send(new PutBucketLifecycleConfigurationCommand({ Bucket: 'markers', LifecycleConfiguration: { Rules: [
      { ID: 'cleanup', Status: 'Enabled', Filter: { Prefix: '' }, NoncurrentVersionExpiration: { NoncurrentDays: 1 }, Expiration: { ExpiredObjectDeleteMarker: true } },
    ] } }));
    await c.send(new PutObjectCommand({ Bucket: 'markers', Key: 'gone.txt', Body: 'v1' }));
    await c.send(new PutObjectCommand({ Bucket: 'markers', Key: 'kept.txt', Body: 'v1' }));
    await c.send(new DeleteObjectCommand({ Bucket: 'markers', Key: 'gone.txt' }));
    const versions = async () => {
      const v = await s3().send(new ListObjectVersionsCommand({ Bucket: 'markers' }));
      return { versions: (v.Versions ?? []).map((x) => x.Key).sort(), markers: (v.DeleteMarkers ?? []).map((x) => x.Key).sort() };
    };
    assert.deepEqual(await run(), { expired: 0, noncurrent: 0, aborted: 0, markers: 0 }, 'the marker still hides a version');
    clock += 2 * DAY;
    const first = await run();
    assert.equal(first.noncurrent, 1, 'the hidden version expires');
    const second = await run();
    assert.equal(first.markers + second.markers, 1, 'then the marker, alone now, goes');
    assert.deepEqual(await versions(), { versions: ['kept.txt'], markers: [] });
  });

  test('rules are validated as S3 does; nothing is stored from a refused configuration', async () => {
    const c = s3();
    await c.send(new CreateBucketCommand({ Bucket: 'checked' }));
    const put = (rules: LifecycleRule[]) => sdkFailure(c.send(new PutBucketLifecycleConfigurationCommand({ Bucket: 'checked', LifecycleConfiguration: { Rules: rules } })));
    const cases: [LifecycleRule[], string, string][] = [
      [[{ ID: 'a', Status: 'Enabled', Filter: { Prefix: '' }, Expiration: { Date: new Date('2030-01-01T12:00:00Z') } }], 'InvalidArgument', 'a date not at midnight'],
      [[{ ID: 'a', Status: 'Enabled', Filter: { Tag: { Key: 'k', Value: 'v' } }, AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 } }], 'InvalidArgument', 'abort with a tag filter'],
      [[{ ID: 'a', Status: 'Enabled', Filter: { Tag: { Key: 'k', Value: 'v' } }, Expiration: { ExpiredObjectDeleteMarker: true } }], 'InvalidArgument', 'delete markers with a tag filter'],
      [[{ ID: 'a', Status: 'Enabled', Filter: { And: { ObjectSizeGreaterThan: 100, ObjectSizeLessThan: 50 } }, Expiration: { Days: 1 } }], 'InvalidArgument', 'an empty size range'],
      [[{ ID: 'a', Status: 'Enabled', Filter: { Prefix: 'x' }, Expiration: { Days: 1 } }, { ID: 'a', Status: 'Enabled', Filter: { Prefix: 'y' }, Expiration: { Days: 1 } }], 'InvalidArgument', 'duplicate ids'],
      [[{ ID: 'a', Status: 'Enabled', Filter: { Prefix: 'x' } }], 'MalformedXML', 'no action'],
      [[{ ID: 'a', Status: 'Enabled', Filter: { Prefix: 'x' }, Transitions: [{ Days: 30, StorageClass: 'GLACIER' }] }], 'NotImplemented', 'a transition'],
    ];
    for (const [rules, code, why] of cases) assert.equal((await put(rules)).code, code, why);
    assert.deepEqual(await sdkFailure(c.send(new GetBucketLifecycleConfigurationCommand({ Bucket: 'checked' }))), { status: 404, code: 'NoSuchLifecycleConfiguration' });
  });
});

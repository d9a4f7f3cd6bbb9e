// Python clients against the S3 listener: boto3 (the AWS SDK for Python) and s3cmd, each configured
// as its users configure it (endpoint, region, keys, path-style addressing).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';
import { available, CLIENTS_REQUIRED } from '../clients.js';

const run = promisify(execFile);
const required = CLIENTS_REQUIRED;
const python = ['python3', '/usr/bin/python3'].find((p) => available(p, ['-c', 'import boto3']));
const s3cmd = available('s3cmd', ['--version']);

let s: TestServer;
let t: Tenant;
let ak: string;
let sk: string;
let dir: string;
/** The access key reaches the scripts in their environment, not their command line (a failed run prints that). */
const keyEnv = () => ({ CUSTOS_TEST_AK: ak, CUSTOS_TEST_SK: sk });
before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
  ak = r.json.credential.access;
  sk = r.json.credential.secret;
  dir = mkdtempSync(path.join(tmpdir(), 'custos-py-s3-'));
});
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await s?.close();
});

test('boto3: buckets, objects, ranges, listing, versioning and multipart through its own signer', { skip: !python && !required ? 'boto3 is not installed (apt-get install -y python3-boto3)' : false, timeout: 120_000 }, async () => {
  const script = `
import boto3, hashlib, json, os, sys
from botocore.config import Config
s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[2], aws_access_key_id=os.environ['CUSTOS_TEST_AK'], aws_secret_access_key=os.environ['CUSTOS_TEST_SK'],
                  config=Config(s3={'addressing_style': 'path'}, retries={'max_attempts': 1}))
s3.create_bucket(Bucket='py-bucket', CreateBucketConfiguration={'LocationConstraint': sys.argv[2]})
data = os.urandom(300000)
s3.put_object(Bucket='py-bucket', Key='a/b.bin', Body=data, Metadata={'lang': 'python'})
got = s3.get_object(Bucket='py-bucket', Key='a/b.bin')
assert got['Body'].read() == data and got['Metadata']['lang'] == 'python'
part = s3.get_object(Bucket='py-bucket', Key='a/b.bin', Range='bytes=1000-1999')['Body'].read()
assert part == data[1000:2000]
assert [o['Key'] for o in s3.list_objects_v2(Bucket='py-bucket', Prefix='a/')['Contents']] == ['a/b.bin']
s3.put_bucket_versioning(Bucket='py-bucket', VersioningConfiguration={'Status': 'Enabled'})
v1 = s3.put_object(Bucket='py-bucket', Key='v.txt', Body=b'one')['VersionId']
s3.put_object(Bucket='py-bucket', Key='v.txt', Body=b'two')
assert s3.get_object(Bucket='py-bucket', Key='v.txt', VersionId=v1)['Body'].read() == b'one'
big = os.urandom(11 * 1024 * 1024)
from boto3.s3.transfer import TransferConfig
s3.upload_fileobj(__import__('io').BytesIO(big), 'py-bucket', 'big.bin', Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
assert hashlib.sha256(s3.get_object(Bucket='py-bucket', Key='big.bin')['Body'].read()).digest() == hashlib.sha256(big).digest()
try:
    s3.get_object(Bucket='py-bucket', Key='missing')
    raise SystemExit('expected NoSuchKey')
except s3.exceptions.NoSuchKey:
    pass
print(json.dumps({'ok': True}))
`;
  writeFileSync(path.join(dir, 'client.py'), script);
  const out = await run(python ?? 'python3', [path.join(dir, 'client.py'), s.custos.obsUrl, t.projects[0]!.name], { timeout: 120_000, env: { ...process.env, ...keyEnv(), AWS_CONFIG_FILE: path.join(dir, 'none'), AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'none') } });
  assert.deepEqual(JSON.parse(out.stdout.trim().split('\n').pop()!), { ok: true });
});

test('boto3: a public bucket is read with the UNSIGNED signature, after its owner lifts Block Public Access', { skip: !python && !required ? 'boto3 is not installed (apt-get install -y python3-boto3)' : false, timeout: 120_000 }, async () => {
  const script = `
import boto3, json, os, sys
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
cfg = dict(s3={'addressing_style': 'path'}, retries={'max_attempts': 1})
owner = boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[2], aws_access_key_id=os.environ['CUSTOS_TEST_AK'], aws_secret_access_key=os.environ['CUSTOS_TEST_SK'], config=Config(**cfg))
anyone = boto3.client('s3', endpoint_url=sys.argv[1], region_name=sys.argv[2], config=Config(signature_version=UNSIGNED, **cfg))
owner.create_bucket(Bucket='py-public', CreateBucketConfiguration={'LocationConstraint': sys.argv[2]})
owner.put_object(Bucket='py-public', Key='index.html', Body=b'<p>public</p>')
def code(f):
    try:
        f()
    except ClientError as e:
        return e.response['Error']['Code']
    return 'ok'
assert owner.get_public_access_block(Bucket='py-public')['PublicAccessBlockConfiguration']['RestrictPublicBuckets'] is True
assert code(lambda: anyone.get_object(Bucket='py-public', Key='index.html')) == 'AccessDenied'
policy = json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': '*', 'Action': ['s3:GetObject', 's3:ListBucket'], 'Resource': ['arn:aws:s3:::py-public', 'arn:aws:s3:::py-public/*']}]})
assert code(lambda: owner.put_bucket_policy(Bucket='py-public', Policy=policy)) == 'AccessDenied'
owner.put_public_access_block(Bucket='py-public', PublicAccessBlockConfiguration={'BlockPublicAcls': True, 'IgnorePublicAcls': True, 'BlockPublicPolicy': False, 'RestrictPublicBuckets': False})
# Not the refused request again: within the same second it would carry the same signature, a replay.
policy = json.dumps({**json.loads(policy), 'Id': 'public-site'})
owner.put_bucket_policy(Bucket='py-public', Policy=policy)
assert owner.get_bucket_policy_status(Bucket='py-public')['PolicyStatus']['IsPublic'] is True
assert anyone.get_object(Bucket='py-public', Key='index.html')['Body'].read() == b'<p>public</p>'
assert [o['Key'] for o in anyone.list_objects_v2(Bucket='py-public')['Contents']] == ['index.html']
assert code(lambda: anyone.put_object(Bucket='py-public', Key='x', Body=b'x')) == 'AccessDenied'
assert code(lambda: anyone.delete_object(Bucket='py-public', Key='index.html')) == 'AccessDenied'
owner.delete_bucket_policy(Bucket='py-public')
assert code(lambda: anyone.get_object(Bucket='py-public', Key='index.html')) == 'AccessDenied'
print(json.dumps({'ok': True}))
`;
  writeFileSync(path.join(dir, 'public.py'), script);
  const out = await run(python ?? 'python3', [path.join(dir, 'public.py'), s.custos.obsUrl, t.projects[0]!.name], { timeout: 120_000, env: { ...process.env, ...keyEnv(), AWS_CONFIG_FILE: path.join(dir, 'none'), AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'none') } });
  assert.deepEqual(JSON.parse(out.stdout.trim().split('\n').pop()!), { ok: true });
});

test('s3cmd: mb, put, ls, get, del with its configuration file', { skip: !s3cmd && !required ? 's3cmd is not installed (apt-get install -y s3cmd)' : false, timeout: 120_000 }, async () => {
  const host = new URL(s.custos.obsUrl).host;
  const cfg = path.join(dir, 's3cfg');
  writeFileSync(cfg, `[default]\naccess_key = ${ak}\nsecret_key = ${sk}\nhost_base = ${host}\nhost_bucket = ${host}\nuse_https = False\nbucket_location = ${t.projects[0]!.name}\nsignature_v2 = False\n`);
  const s3 = async (...args: string[]) => (await run('s3cmd', ['-c', cfg, ...args], { timeout: 60_000 })).stdout;
  await s3('mb', 's3://cmd-bucket');
  const data = randomBytes(200_000);
  writeFileSync(path.join(dir, 'up.bin'), data);
  await s3('put', path.join(dir, 'up.bin'), 's3://cmd-bucket/files/up.bin');
  assert.match(await s3('ls', 's3://cmd-bucket/files/'), /s3:\/\/cmd-bucket\/files\/up\.bin/);
  await s3('get', 's3://cmd-bucket/files/up.bin', path.join(dir, 'down.bin'));
  assert.deepEqual(readFileSync(path.join(dir, 'down.bin')), data);
  await s3('del', 's3://cmd-bucket/files/up.bin');
  assert.doesNotMatch(await s3('ls', '--recursive', 's3://cmd-bucket'), /up\.bin/);
  await s3('rb', 's3://cmd-bucket');
});

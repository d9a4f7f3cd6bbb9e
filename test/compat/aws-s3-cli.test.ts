// The AWS CLI against the S3 listener, configured as a user would (credentials, region, endpoint,
// path-style addressing in its config file).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startTestServer } from '../helpers.js';
import { available, CLIENTS_REQUIRED } from '../clients.js';

const required = CLIENTS_REQUIRED;
const awsCli = available('aws', ['--version']);

test('aws s3 mb/cp/ls/rm and aws s3api versioning against the S3 listener', { skip: !awsCli && !required ? 'the aws CLI is not installed (apt-get install -y awscli)' : false, timeout: 120_000 }, async () => {
  const s = await startTestServer();
  const dir = mkdtempSync(path.join(tmpdir(), 'custos-aws-s3-'));
  try {
    const t = await s.createTenant();
    const k = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId } } });
    writeFileSync(path.join(dir, 'config'), `[default]\nregion = ${t.projects[0]!.name}\ns3 =\n    addressing_style = path\n`);
    const env = {
      ...process.env, AWS_ACCESS_KEY_ID: k.json.credential.access, AWS_SECRET_ACCESS_KEY: k.json.credential.secret,
      AWS_CONFIG_FILE: path.join(dir, 'config'), AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'credentials'), AWS_EC2_METADATA_DISABLED: 'true', AWS_PAGER: '',
    };
    const aws = async (...args: string[]) => (await promisify(execFile)('aws', [...args, '--endpoint-url', s.custos.obsUrl], { env, timeout: 60_000 })).stdout;

    await aws('s3', 'mb', 's3://cli-bucket');
    const data = randomBytes(1024 * 1024);
    writeFileSync(path.join(dir, 'up.bin'), data);
    await aws('s3', 'cp', path.join(dir, 'up.bin'), 's3://cli-bucket/dir/up.bin');
    await aws('s3', 'cp', path.join(dir, 'up.bin'), 's3://cli-bucket/top.bin');
    const ls = await aws('s3', 'ls', 's3://cli-bucket/');
    assert.match(ls, /PRE dir\//);
    assert.match(ls, /1048576 top\.bin/);
    assert.match(await aws('s3', 'ls', 's3://cli-bucket/', '--recursive'), /dir\/up\.bin/);
    await aws('s3', 'cp', 's3://cli-bucket/dir/up.bin', path.join(dir, 'down.bin'));
    assert.deepEqual(readFileSync(path.join(dir, 'down.bin')), data);

    await aws('s3api', 'put-bucket-versioning', '--bucket', 'cli-bucket', '--versioning-configuration', 'Status=Enabled');
    assert.equal(JSON.parse(await aws('s3api', 'get-bucket-versioning', '--bucket', 'cli-bucket')).Status, 'Enabled');
    await aws('s3', 'cp', path.join(dir, 'up.bin'), 's3://cli-bucket/top.bin');
    const versions = JSON.parse(await aws('s3api', 'list-object-versions', '--bucket', 'cli-bucket', '--prefix', 'top.bin'));
    assert.equal(versions.Versions.length, 2);
    await aws('s3', 'rm', 's3://cli-bucket/top.bin');
    assert.doesNotMatch(await aws('s3', 'ls', 's3://cli-bucket/'), /top\.bin/);
    await assert.rejects(aws('s3', 'rb', 's3://cli-bucket'), /BucketNotEmpty/);

    // A public bucket: Block Public Access lifted and a public policy through s3api, then read by
    // the CLI without signing.
    const anon = (...args: string[]) => aws(...args, '--no-sign-request');
    await assert.rejects(anon('s3', 'cp', 's3://cli-bucket/dir/up.bin', path.join(dir, 'anon.bin')), /403|Forbidden|AccessDenied/);
    await aws('s3api', 'delete-public-access-block', '--bucket', 'cli-bucket');
    await aws('s3api', 'put-bucket-policy', '--bucket', 'cli-bucket', '--policy', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: '*', Action: 's3:GetObject', Resource: 'arn:aws:s3:::cli-bucket/dir/*' }] }));
    assert.equal(JSON.parse(await aws('s3api', 'get-bucket-policy-status', '--bucket', 'cli-bucket')).PolicyStatus.IsPublic, true);
    await anon('s3', 'cp', 's3://cli-bucket/dir/up.bin', path.join(dir, 'anon.bin'));
    assert.deepEqual(readFileSync(path.join(dir, 'anon.bin')), data);
    await assert.rejects(anon('s3', 'ls', 's3://cli-bucket/'), /AccessDenied/, 'the policy grants no listing');
    await assert.rejects(anon('s3', 'cp', path.join(dir, 'up.bin'), 's3://cli-bucket/dir/new.bin'), /AccessDenied/, 'nor any write');
    await aws('s3api', 'put-public-access-block', '--bucket', 'cli-bucket', '--public-access-block-configuration', 'BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true');
    await assert.rejects(anon('s3', 'cp', 's3://cli-bucket/dir/up.bin', path.join(dir, 'anon2.bin')), /403|Forbidden|AccessDenied/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await s.close();
  }
});

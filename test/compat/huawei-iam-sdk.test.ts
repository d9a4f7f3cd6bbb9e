// The Huawei Cloud IAM SDK for Node.js, configured as its users configure it (AK/SK + endpoint),
// talks to Custos with its own SDK-HMAC-SHA256 signatures.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as core from '@huaweicloud/huaweicloud-sdk-core';
// The package's index also loads its v5 API, which is broken in this release; v3 is what we speak.
import * as hwiam from '@huaweicloud/huaweicloud-sdk-iam/v3/public-api.js';
import { startTestServer, type Tenant, type TestServer } from '../helpers.js';

let s: TestServer;
let t: Tenant;
let ak: string;
let sk: string;

before(async () => {
  s = await startTestServer();
  t = await s.createTenant();
  const r = await s.api('POST', '/v3.0/OS-CREDENTIAL/credentials', { token: t.token, body: { credential: { user_id: t.adminUserId, description: 'sdk' } } });
  assert.equal(r.status, 201);
  ak = r.json.credential.access;
  sk = r.json.credential.secret;
});
after(() => s?.close());

function client(secret: string) {
  const credentials = new core.GlobalCredentials().withAk(ak).withSk(secret).withDomainId(t.accountId);
  return hwiam.IamClient.newBuilder().withCredential(credentials).withEndpoint(s.url).build();
}

test('the Huawei IAM SDK lists users and projects with AK/SK signatures', async () => {
  const users = await client(sk).keystoneListUsers(new hwiam.KeystoneListUsersRequest());
  assert.deepEqual(users.users?.map((u) => u.name), ['admin']);
  const projects = await client(sk).keystoneListProjects(new hwiam.KeystoneListProjectsRequest());
  assert.ok(projects.projects?.some((p) => p.name === 'cn-north-4'));
});

test('the Huawei IAM SDK creates a group with a signed JSON body', async () => {
  const body = new hwiam.KeystoneCreateGroupRequestBody().withGroup(new hwiam.KeystoneCreateGroupOption().withName('sdk-group').withDescription('made by the SDK').withDomainId(t.accountId));
  const r = await client(sk).keystoneCreateGroup(new hwiam.KeystoneCreateGroupRequest().withBody(body));
  assert.equal(r.group?.name, 'sdk-group');
  const list = await s.api('GET', '/v3/groups?name=sdk-group', { token: t.token });
  assert.equal(list.json.groups.length, 1);
});

test('the Huawei IAM SDK with a wrong SK is refused with 401', async () => {
  await assert.rejects(
    () => client(sk.slice(0, -1) + (sk.endsWith('A') ? 'B' : 'A')).keystoneListUsers(new hwiam.KeystoneListUsersRequest()),
    (e: { httpStatusCode?: number; status?: number }) => {
      assert.equal(e.httpStatusCode ?? e.status, 401);
      return true;
    },
  );
});

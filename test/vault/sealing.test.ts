// Record keys (src/vault/sealing.ts): a data_key column is taken only in its exact form, and a key
// zeroed by the secret's eviction derives nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { XaesKeyDeriver } from '../../src/crypto/xaes.js';
import { IntegrityError, KeyDroppedError, newRecordSalt, recordKeyFrom } from '../../src/vault/sealing.js';

const col = { account_id: 'acct', id: 'col' };

test('a v3. salt is 16 characters of standard base64; other spellings of the same bytes are refused', () => {
  const records = randomBytes(32);
  const keys = { records, deriver: new XaesKeyDeriver(records) };
  const salt = newRecordSalt();
  assert.match(salt, /^v3\.[A-Za-z0-9+/]{16}$/);
  assert.equal(recordKeyFrom(keys, col, 'r', salt).length, 32);
  // Node's base64 decoder also takes the URL alphabet, padding and stray characters: each would be a
  // second spelling of one key (or a shorter salt). Only the canonical one is accepted.
  for (const bad of ['v3.--__--__AQIDBAUG', 'v3.++//++//AQIDBAU=', 'v3.++//++//AQIDBAU', 'v3.++//++//AQIDBAUGBw', 'v3. +//++//AQIDBAUG', 'v3.']) {
    assert.throws(() => recordKeyFrom(keys, col, 'r', bad), IntegrityError, bad);
  }
  assert.deepEqual(recordKeyFrom(keys, col, 'r', 'v3.++//++//AQIDBAUG'), keys.deriver.derive(Buffer.from('++//++//AQIDBAUG', 'base64')));
});

test('a dropped secret derives no record key: zeroed (v2.) or destroyed (v3.)', () => {
  const records = randomBytes(32);
  const keys = { records, deriver: new XaesKeyDeriver(records) };
  const v2 = `v2.${randomBytes(16).toString('base64')}`;
  const v3 = newRecordSalt();
  assert.equal(recordKeyFrom(keys, col, 'r', v2).length, 32);
  records.fill(0);
  keys.deriver.destroy();
  assert.throws(() => recordKeyFrom(keys, col, 'r', v2), KeyDroppedError);
  assert.throws(() => recordKeyFrom(keys, col, 'r', v3), KeyDroppedError);
});

// Masks by kind of personal data keep the shape users recognise and hide at least four characters,
// so a short value (an 8-digit national number, a 7-character id) is not shown all but one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Property } from '../../src/vault/schema.js';
import { mask, partial } from '../../src/vault/transforms.js';

const prop = (pii_type: string) => ({ name: 'x', pii_type, data_type: 'string' }) as unknown as Property;

test('phone numbers, ids and device ids keep their ends but hide at least four characters', () => {
  assert.equal(mask(prop('phone_number'), '+8613812345678'), '+86 138****5678');
  assert.equal(mask(prop('phone_number'), '+442079460958'), '+44 20****0958');
  assert.equal(mask(prop('phone_number'), '+4512345678'), '+45 ****5678');
  assert.equal(mask(prop('phone_number'), '+85291234567'), '+852 ****4567');
  assert.equal(mask(prop('national_id'), '11010519491231002X'), '110105********002X');
  assert.equal(mask(prop('national_id'), 'AB12345'), '****345');
  assert.equal(mask(prop('device_id'), 'abcdef123456'), '********3456');
  assert.equal(mask(prop('device_id'), 'abc'), '**c');
  for (const [pii, v] of [['phone_number', '+4512345678'], ['national_id', 'AB12345'], ['device_id', 'abcdef12']] as const) {
    assert.ok((String(mask(prop(pii), v)).match(/\*/g) ?? []).length >= 4, `${pii} ${v}`);
  }
});

test('masks count characters, not UTF-16 code units, and keep the shape of each kind of value', () => {
  const cases: [string, string, string][] = [
    ['email', 'person1@example.com', 'p***@example.com'],
    ['email', '😀smile@x.org', '😀***@x.org'],
    ['email', '@x.com', '***@x.com'],
    ['person_name', 'Zoë  Ünal', 'Z**  Ü***'],
    ['person_name', '李 小龙', '李* 小*'],
    ['person_name', '😀😀 x', '😀* x*'],
    ['person_name', 'a\tb\nc', 'a*\tb*\nc*'],
    ['national_id', '😀😀😀😀😀😀', '****😀😀'],
    ['device_id', '😀bc😀def', '****def'],
    ['province_city', 'A/😀b', 'A/**'],
    ['ip_address', '10.1.2.3', '10.1.*.*'],
    ['ip_address', '255.255.255.255', '255.255.*.*'],
    ['ip_address', '2001:db8::1', '2001:db8:0:*:*:*:*:*'],
    ['ip_address', '::ffff:1.2.3.4', '0:0:0:*:*:*:*:*'],
  ];
  for (const [pii, v, want] of cases) assert.equal(mask(prop(pii), v), want, `${pii} ${v}`);
  assert.equal(partial('😀😀😀😀😀😀😀😀x'), '😀😀*****😀x');
});

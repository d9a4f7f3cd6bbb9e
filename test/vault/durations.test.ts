// Deletion rules and legal deadlines count calendar months and years: a month after 31 January is
// the last day of February, not 3 March, and a year after 29 February is 28 February.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { durationMs } from '../../src/vault/schema.js';

const after = (from: string, iso: string) => new Date(Date.parse(from) + durationMs(iso, Date.parse(from))).toISOString();

test('months and years end on the last day of a shorter month; days and times add exactly', () => {
  assert.equal(after('2025-01-31T09:00:00.000Z', 'P1M'), '2025-02-28T09:00:00.000Z');
  assert.equal(after('2024-01-31T09:00:00.000Z', 'P1M'), '2024-02-29T09:00:00.000Z');
  assert.equal(after('2025-03-31T00:00:00.000Z', 'P1M'), '2025-04-30T00:00:00.000Z');
  assert.equal(after('2025-01-31T00:00:00.000Z', 'P2M'), '2025-03-31T00:00:00.000Z');
  assert.equal(after('2024-02-29T00:00:00.000Z', 'P1Y'), '2025-02-28T00:00:00.000Z');
  assert.equal(after('2025-11-30T00:00:00.000Z', 'P3M'), '2026-02-28T00:00:00.000Z');
  assert.equal(after('2025-05-15T12:00:00.000Z', 'P1M'), '2025-06-15T12:00:00.000Z');
  assert.equal(after('2025-01-01T00:00:00.000Z', 'P30D'), '2025-01-31T00:00:00.000Z');
  assert.equal(after('2025-01-31T00:00:00.000Z', 'P1M1D'), '2025-03-01T00:00:00.000Z');
  assert.equal(after('2025-01-01T00:00:00.000Z', 'PT36H'), '2025-01-02T12:00:00.000Z');
});

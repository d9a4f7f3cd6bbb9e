import Table from 'cli-table3';

export type OutputFormat = 'json' | 'table';

/** Prints rows as an aligned table (for people) or JSON (for scripts). */
export function print(format: OutputFormat, rows: Record<string, unknown>[], out: NodeJS.WritableStream = process.stdout): void {
  if (format === 'json') {
    out.write(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  if (rows.length === 0) {
    out.write('(none)\n');
    return;
  }
  const head = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const table = new Table({ head, style: { head: [], border: [] } });
  for (const r of rows) table.push(head.map((h) => (r[h] === undefined || r[h] === null ? '' : typeof r[h] === 'object' ? JSON.stringify(r[h]) : String(r[h]))));
  out.write(table.toString() + '\n');
}

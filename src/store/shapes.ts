import type { CompiledQuery } from 'kysely';

/**
 * Compiled SQL kept by shape. Compiling a Kysely template for the dialect in use (its placeholders,
 * its quoting) costs several microseconds, more than SQLite takes to run a short statement; a hot
 * statement whose text depends only on its shape (which columns, how many rows) is compiled at its
 * first use, and later runs reuse the text with parameters of their own: `CompiledQuery.raw(q.sql, p)`.
 * The caller owns the shape key: two templates that can compile to different text need different keys.
 */
export class QueryShapes {
  private readonly compiled = new Map<string, CompiledQuery>();

  constructor(private readonly max = 1000) {}

  get(shape: string, compile: () => CompiledQuery): CompiledQuery {
    let q = this.compiled.get(shape);
    if (!q) {
      q = compile();
      if (this.compiled.size >= this.max) this.compiled.delete(this.compiled.keys().next().value as string);
      this.compiled.set(shape, q);
    }
    return q;
  }

  clear(): void {
    this.compiled.clear();
  }
}

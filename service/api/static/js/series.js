// Bounded-memory history for live plots.

/**
 * Column table that covers a whole scan in at most `capacity` rows.
 *
 * When full, every other kept row is dropped and from then on only every `stride`-th new row
 * is kept (the stride doubles each time), so memory stays bounded however long the scan runs
 * while the plot still spans it from the start. The newest row is always shown: it is kept
 * provisionally and replaced by the next one unless it falls on the stride.
 */
export class DecimatingTable {
  constructor(names, capacity = 2000) {
    if (!(capacity >= 4)) throw new Error(`capacity must be >= 4, got ${capacity}`);
    this.names = names;
    this.capacity = capacity;
    this.clear();
  }

  clear() {
    this.cols = Object.fromEntries(this.names.map((n) => [n, []]));
    this.length = 0;
    this.stride = 1;
    this.seen = 0;
    this.provisional = false;
  }

  push(row) {
    if (this.provisional) this.#pop();
    for (const n of this.names) this.cols[n].push(row[n] ?? null);
    this.length += 1;
    this.provisional = this.seen % this.stride !== 0;
    this.seen += 1;
    if (!this.provisional && this.length > this.capacity) this.#halve();
  }

  last() {
    if (this.length === 0) return null;
    return Object.fromEntries(this.names.map((n) => [n, this.cols[n][this.length - 1]]));
  }

  #pop() {
    for (const n of this.names) this.cols[n].pop();
    this.length -= 1;
  }

  #halve() {
    // Keep rows 0, 2, 4, ... plus the newest; new rows are kept every 2*stride from now on.
    const keep = (_, i) => i % 2 === 0 || i === this.length - 1;
    for (const n of this.names) this.cols[n] = this.cols[n].filter(keep);
    this.length = this.cols[this.names[0]].length;
    this.stride *= 2;
  }
}

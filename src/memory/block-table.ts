// The allocator's table of live blocks, keyed by the address handed out: for each, the block's start,
// size and the bytes requested. An open-addressing hash table (linear probing, deletion by backward
// shift) in one Float64Array, so that alloc and release create no JS object.
//
// Why not a Map: every call sets and deletes a handful of keys, and that churn kept young garbage
// alive through scavenges (measured: new space grew to its 16 MiB cap and promoted most of what it
// copied; RSS grew 37-48 MB over the first thousands of tiny calls, against under 2 MB with this
// table and for the js backend; test/memory.test.ts bounds it).
export class BlockTable {
  /** [key (0: empty), start, size, bytes] per slot; addresses are never 0. */
  private slots = new Float64Array(4 * 64);
  private mask = 63;
  private count = 0;

  private home(key: number): number {
    return (Math.imul(key >>> 6, 0x9e3779b1) >>> 0) & this.mask;
  }

  /** The slot of `key`, or -1. */
  find(key: number): number {
    const s = this.slots;
    for (let i = this.home(key); ; i = (i + 1) & this.mask) {
      const k = s[4 * i];
      if (k === key) return i;
      if (k === 0) return -1;
    }
  }

  start(slot: number): number {
    return this.slots[4 * slot + 1];
  }

  size(slot: number): number {
    return this.slots[4 * slot + 2];
  }

  bytes(slot: number): number {
    return this.slots[4 * slot + 3];
  }

  set(key: number, start: number, size: number, bytes: number): void {
    if (2 * (this.count + 1) > this.mask + 1) this.grow(2 * (this.mask + 1));
    const s = this.slots;
    let i = this.home(key);
    while (s[4 * i] !== 0 && s[4 * i] !== key) i = (i + 1) & this.mask;
    if (s[4 * i] === 0) this.count++;
    s[4 * i] = key;
    s[4 * i + 1] = start;
    s[4 * i + 2] = size;
    s[4 * i + 3] = bytes;
  }

  /** Empties `slot`, moving back the entries of its probe run that would no longer be found. */
  remove(slot: number): void {
    const s = this.slots;
    const mask = this.mask;
    let hole = slot;
    for (let i = (hole + 1) & mask; s[4 * i] !== 0; i = (i + 1) & mask) {
      const home = this.home(s[4 * i]);
      // entry i moves into the hole unless its home lies cyclically in (hole, i]
      if (((i - home) & mask) >= ((i - hole) & mask)) {
        s.copyWithin(4 * hole, 4 * i, 4 * i + 4);
        hole = i;
      }
    }
    s.fill(0, 4 * hole, 4 * hole + 4);
    this.count--;
  }

  private grow(capacity: number): void {
    const old = this.slots;
    this.slots = new Float64Array(4 * capacity);
    this.mask = capacity - 1;
    this.count = 0;
    for (let i = 0; i < old.length; i += 4) if (old[i] !== 0) this.set(old[i], old[i + 1], old[i + 2], old[i + 3]);
  }
}

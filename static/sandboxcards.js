/* The dashboard's sandbox cards: the build cache's counters (GET /cache/status) and the warm pool's (GET /health's
   `pool`, its card shown only on a server that has one). */
"use strict";

class SandboxCards {
  /**
   * @param {{cache: HTMLElement, cacheSub: HTMLElement, poolCard: HTMLElement, pool: HTMLElement,
   *          poolSub: HTMLElement, poolLanguages: HTMLElement}} fields each card's value and lines below it
   */
  constructor(fields) {
    this.fields = fields;
  }

  refresh() {
    this.loadCache();
    this.loadPool();
  }

  /** Hits as the value, the rest below it. */
  async loadCache() {
    const { fmtNumber, fmtBytes } = Conveyor;
    const f = this.fields;
    try {
      const response = await fetch("/cache/status", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const b = (await response.json()).builds;
      f.cache.textContent = b.enabled ? fmtNumber(b.hits) : "off";
      const sizes = `${fmtNumber(b.entries)} builds, ${fmtBytes(b.bytes)}`;
      f.cacheSub.textContent = b.enabled
        ? `${fmtNumber(b.misses)} misses · ${sizes} · ${fmtNumber(b.evictions)} evicted`
        : "CACHE_MAX_MB=0";
    } catch (err) {
      f.cacheSub.textContent = `unavailable (${err.message})`;
    }
  }

  async loadPool() {
    const { fmtNumber, fmtMs } = Conveyor;
    const f = this.fields;
    let pool;
    try {
      const response = await fetch("/health", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      pool = (await response.json()).pool;
    } catch (err) {
      return;
    }
    f.poolCard.hidden = !pool;
    if (!pool) return;
    f.pool.textContent = pool.enabled ? `${fmtNumber(pool.ready)} ready` : "off";
    f.poolSub.textContent = pool.enabled
      ? `${fmtNumber(pool.inUse)} in use · ${fmtNumber(pool.hits)} hits · ${fmtNumber(pool.misses)} misses · ` +
        `refill ${fmtMs(pool.refillMs)}`
      : "no sandboxes kept warm";
    f.poolLanguages.textContent = Object.entries(pool.languages || {})
      .map(([name, l]) => `${name} ${l.ready}/${l.target}`)
      .join(" · ");
  }
}

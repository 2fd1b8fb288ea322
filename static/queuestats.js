/* The dashboard's queue statistics cards, from the queue topic's snapshot and `stats` messages, with a throughput
   measured against the charts' history. */
"use strict";

class QueueStats {
  /**
   * @param {{queue: HTMLElement, queueMax: HTMLElement, running: HTMLElement, rate: HTMLElement,
   *          completed: HTMLElement, processed: HTMLElement, failed: HTMLElement, timeout: HTMLElement,
   *          cancelled: HTMLElement, rejected: HTMLElement, rateLimited: HTMLElement}} fields each card's value
   * @param {ChartHistory} history the sampled history, its `series` and the server's clock skew
   */
  constructor(fields, history) {
    this.fields = fields;
    this.history = history;
    this.stats = null;
    this.at = 0; // Date.now() of the last stats
  }

  /** A snapshot's stats or a `stats` message. */
  update(stats) {
    // Strip `type` so the stored stats have the snapshot's shape.
    const { type, ...rest } = stats;
    this.stats = rest;
    this.at = Date.now();
    this.render();
  }

  render() {
    const s = this.stats;
    if (!s) return;
    const { fmtNumber } = Conveyor;
    const f = this.fields;
    f.queue.textContent = fmtNumber(s.queueLength);
    f.queueMax.textContent = `of ${fmtNumber(s.maxQueueSize)} places`;
    f.running.textContent = `${fmtNumber(s.runningCount)} / ${fmtNumber(s.maxConcurrent)}`;
    f.rate.textContent = QueueStats.fmtRate(this.rate());
    f.completed.textContent = fmtNumber(s.totalCompleted);
    f.processed.textContent = `of ${fmtNumber(s.totalProcessed)} processed`;
    f.failed.textContent = fmtNumber(s.totalFailed);
    f.timeout.textContent = fmtNumber(s.totalTimeout);
    f.cancelled.textContent = fmtNumber(s.totalCancelled);
    f.rejected.textContent = fmtNumber(s.totalRejected);
    f.rateLimited.textContent = fmtNumber(s.totalRateLimited);
  }

  /**
   * Jobs/s over the last minute: the live processed count against the history point a minute back (or the oldest
   * one there is). The server's jobsPerSecond divides the last minute's finishes by 60 whatever the span, so it
   * lags a burst (10 jobs/s for 6 s reads 1.0) and, pushed only on changes, went stale; it is only the fallback.
   */
  rate() {
    if (!this.stats) return 0;
    const now = Date.now() + this.history.skewMs;
    const { t, processed } = this.history.series;
    let base = -1;
    for (let i = t.length - 1; i >= 0; i -= 1) {
      base = i;
      if (t[i] <= now - QueueStats.WINDOW_MS) break;
    }
    if (base >= 0 && this.stats.totalProcessed >= processed[base] && now - t[base] >= 1000) {
      return (this.stats.totalProcessed - processed[base]) / ((now - t[base]) / 1000);
    }
    return Date.now() - this.at > QueueStats.WINDOW_MS ? 0 : this.stats.jobsPerSecond || 0;
  }

  static fmtRate(rate) {
    if (rate === 0) return "0";
    return rate >= 10 ? rate.toFixed(1) : rate.toFixed(2);
  }
}

QueueStats.WINDOW_MS = 60_000;

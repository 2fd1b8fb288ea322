/* The editor's quota hint: the runs left in this rate-limit window (GET /ratelimit), and a countdown while a 429's
   wait lasts (the editor keeps Run disabled until then). */
"use strict";

class QuotaHint {
  /** @param {HTMLElement} node the hint; `onChange` runs on every tick of a countdown (the editor's controls) */
  constructor(node, { onChange = () => {} } = {}) {
    this.node = node;
    this.onChange = onChange;
    this.remaining = null;
    this.limit = null;
    this.limitedUntil = 0; // the end of a 429's wait (Date.now() ms), 0 when not limited
    this.timer = null;
  }

  async refresh() {
    try {
      const response = await fetch("/ratelimit", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const { submit } = await response.json();
      this.remaining = submit.remaining;
      this.limit = submit.limit;
      if (submit.retryAfter > 0) this.startCountdown(submit.retryAfter);
      this.render();
    } catch (err) {
      // The hint is a courtesy; a run still reports a 429 itself.
    }
  }

  startCountdown(seconds) {
    this.limitedUntil = Math.max(this.limitedUntil, Date.now() + seconds * 1000);
    this.remaining = 0;
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (Date.now() >= this.limitedUntil) {
        clearInterval(this.timer);
        this.timer = null;
        this.limitedUntil = 0;
        this.refresh();
      }
      this.render();
      this.onChange();
    }, 250);
    this.render();
    this.onChange();
  }

  limitedSeconds() {
    return this.limitedUntil ? Math.max(0, Math.ceil((this.limitedUntil - Date.now()) / 1000)) : 0;
  }

  render() {
    const node = this.node;
    const wait = this.limitedSeconds();
    if (wait > 0) {
      node.dataset.state = "limited";
      node.textContent = `rate limited · next run in ${wait} s`;
    } else if (this.remaining !== null) {
      node.dataset.state = this.remaining <= Math.max(1, Math.floor(this.limit / 5)) ? "low" : "ok";
      node.textContent = `${this.remaining} / ${this.limit} runs left`;
    }
    node.title = "Submissions left in this rate-limit window (RATE_LIMIT_REQUESTS, or your API key's own)";
    node.hidden = this.remaining === null && wait === 0;
  }
}

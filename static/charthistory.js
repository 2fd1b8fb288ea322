/* The dashboard's charts: the server's sampled history (GET /queue/history) over the chosen range (15 min, 1 h or
   24 h, remembered in localStorage "conveyor.chartRange"), drawn as soon as the page opens and refreshed while open. */
"use strict";

class ChartHistory {
  /**
   * @param {{throughput: HTMLElement, queue: HTMLElement, wait: HTMLElement, exec: HTMLElement, area: HTMLElement,
   *          note: HTMLElement, ranges: HTMLButtonElement[]}} fields each chart's container, the charts' area, the
   *   note that says when the history is unavailable, and a button per range
   * @param {{onDraw: () => void}} parts `onDraw` runs after each drawing (the throughput card reads `series`)
   */
  constructor(fields, { onDraw }) {
    const { TimeChart, fmtAxisMs } = Charts;
    this.fields = fields;
    this.onDraw = onDraw;
    this.range = "15m";
    this.series = { t: [], processed: [] };
    this.skewMs = 0; // the server's clock minus this browser's, from the last response (sample times are the server's)
    this.timer = null;
    this.loading = false;
    this.charts = {
      throughput: new TimeChart(fields.throughput, {
        series: [{ label: "jobs/s", color: "--chart-p50", fill: true }],
      }),
      queue: new TimeChart(fields.queue, {
        series: [
          { label: "waiting", color: "--chart-p95", fill: true },
          { label: "running", color: "--chart-p50" },
        ],
      }),
      wait: new TimeChart(fields.wait, {
        series: [
          { label: "p50", color: "--chart-p50" },
          { label: "p95", color: "--chart-p95" },
        ],
        format: fmtAxisMs,
      }),
      exec: new TimeChart(fields.exec, {
        series: [
          { label: "p50", color: "--chart-p50" },
          { label: "p95", color: "--chart-p95" },
        ],
        format: fmtAxisMs,
      }),
    };
    for (const button of fields.ranges) button.addEventListener("click", () => this.choose(button.dataset.range));
  }

  /** The server's history for the chosen range. */
  async load() {
    if (this.loading) return;
    this.loading = true;
    const range = this.range;
    try {
      const response = await fetch(`/queue/history?range=${encodeURIComponent(range)}`, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      if (range !== this.range) return; // the user picked another range meanwhile
      this.skewMs = typeof body.now === "number" ? body.now - Date.now() : 0;
      this.draw(body);
      this.fields.note.textContent = "";
    } catch (err) {
      this.fields.note.textContent = `history unavailable (${err.message}); retrying`;
    } finally {
      this.loading = false;
    }
  }

  draw(body) {
    const s = body.series;
    this.series = s;
    const to = Date.now() + this.skewMs;
    const span = { from: to - ChartHistory.RANGES[this.range], to };
    this.charts.throughput.setData(s.t, [s.throughput], span);
    this.charts.queue.setData(s.t, [s.queueLength, s.running], span);
    this.charts.wait.setData(s.t, [s.waitP50, s.waitP95], span);
    this.charts.exec.setData(s.t, [s.execP50, s.execP95], span);
    this.fields.area.dataset.range = this.range;
    this.onDraw();
  }

  choose(range) {
    if (!ChartHistory.RANGES[range]) return;
    this.range = range;
    for (const button of this.fields.ranges) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
    try {
      localStorage.setItem(ChartHistory.KEY, range);
    } catch (err) {
      // not remembered
    }
    clearInterval(this.timer);
    this.timer = setInterval(() => this.load(), ChartHistory.REFRESH_MS[range]);
    this.loading = false;
    this.load();
  }

  /** The range chosen last time (15 min when none was), loaded now and refreshed from then on. */
  start() {
    let saved = null;
    try {
      saved = localStorage.getItem(ChartHistory.KEY);
    } catch (err) {
      saved = null;
    }
    this.choose(ChartHistory.RANGES[saved] ? saved : "15m");
  }
}

ChartHistory.KEY = "conveyor.chartRange";
ChartHistory.RANGES = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 86_400_000 };
// The server samples every 5 s; a day's chart changes little between two refreshes a minute apart.
ChartHistory.REFRESH_MS = { "15m": 5000, "1h": 5000, "24h": 60_000 };

/* Time-series charts for the dashboard on uPlot (static/vendor/uplot.js), coloured from the page's theme. */
"use strict";

const Charts = (() => {
  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  /** `#rrggbb` at `opacity` as rgba() (canvas fills need a plain colour). */
  function alpha(hex, opacity) {
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
    if (!m) return hex;
    return `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${opacity})`;
  }

  /** "350ms", "1.2s", "12s" for a millisecond axis. */
  function fmtAxisMs(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)}s`;
    return `${Number(ms.toFixed(ms < 10 ? 2 : 0))}ms`;
  }

  function fmtAxisNumber(value) {
    if (value === null || value === undefined) return "";
    return String(Number(value.toFixed(value < 10 ? 2 : 0)));
  }

  /**
   * One chart in `container`: `series` is [{label, color (a CSS variable name), fill}], `format` labels the y axis
   * and the legend. uPlot draws on <canvas> and styles with element.style, both allowed by the pages' CSP.
   */
  class TimeChart {
    constructor(container, { series, format = fmtAxisNumber, height = 170 }) {
      this.container = container;
      this.series = series;
      this.format = format;
      this.height = height;
      this.data = [[], ...series.map(() => [])];
      this.plot = null;
      this.build();
      if (typeof ResizeObserver !== "undefined") {
        new ResizeObserver(() => this.resize()).observe(container);
      }
      if (typeof Theme !== "undefined") Theme.onChange(() => this.build());
    }

    options() {
      const grid = cssVar("--chart-grid", "#1f2733");
      const text = cssVar("--text-muted", "#8b95a7");
      const font = "11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
      const axis = { stroke: text, font, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
      return {
        width: Math.max(200, this.container.clientWidth),
        height: this.height,
        padding: [10, 12, 0, 0],
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        legend: { show: true, live: true },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        axes: [
          { ...axis, space: 60 },
          { ...axis, size: 50, values: (u, ticks) => ticks.map((v) => this.format(v)) },
        ],
        series: [
          {},
          ...this.series.map((s) => {
            const color = cssVar(s.color, "#4cc2ff");
            return {
              label: s.label,
              stroke: color,
              width: 1.5,
              fill: s.fill ? alpha(color, 0.16) : undefined,
              spanGaps: false,
              points: { show: false },
              value: (u, v) => (v === null || v === undefined ? "–" : this.format(v)),
            };
          }),
        ],
      };
    }

    build() {
      if (this.plot) this.plot.destroy();
      this.container.replaceChildren();
      this.plot = new uPlot(this.options(), this.data, this.container);
    }

    resize() {
      if (!this.plot) return;
      const width = Math.max(200, this.container.clientWidth);
      if (width !== this.plot.width) this.plot.setSize({ width, height: this.height });
    }

    /** `times` in epoch ms, `columns` one array per series (null: no value, drawn as a gap). */
    setData(times, columns, range) {
      this.data = [times.map((t) => t / 1000), ...columns];
      this.plot.setData(this.data, false);
      if (range) this.plot.setScale("x", { min: range.from / 1000, max: range.to / 1000 });
      else this.plot.setScale("x", { min: this.data[0][0], max: this.data[0][this.data[0].length - 1] });
      this.container.dataset.points = String(times.length);
    }
  }

  return { TimeChart, cssVar, fmtAxisMs, fmtAxisNumber };
})();

/* Small time-series charts on <canvas> for the dashboard: a ring buffer of samples and a line/area renderer. */
"use strict";

const Charts = (() => {
  /** Fixed-capacity buffer of {t, ...values}; the oldest sample falls out when it is full. */
  class Ring {
    constructor(capacity) {
      this.capacity = capacity;
      this.items = [];
    }

    push(sample) {
      this.items.push(sample);
      if (this.items.length > this.capacity) this.items.splice(0, this.items.length - this.capacity);
    }

    last() {
      return this.items[this.items.length - 1];
    }
  }

  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  /** The axis top for `ticks` equal steps, each step 1, 2 or 5 times a power of ten, covering `value`. */
  function niceTop(value, ticks) {
    if (!(value > 0)) return ticks;
    const raw = value / ticks;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    return step * ticks;
  }

  /**
   * One chart: `series` is [{key, color, fill}], `format` labels the y axis. Samples further apart than `gapMs`
   * are not joined, so an outage shows as a gap rather than as a straight line.
   */
  class TimeChart {
    constructor(canvas, { series, windowMs, gapMs, format }) {
      this.canvas = canvas;
      this.series = series;
      this.windowMs = windowMs;
      this.gapMs = gapMs;
      this.format = format || ((v) => String(v));
      if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => this.draw(this.lastRing)).observe(canvas);
    }

    draw(ring) {
      this.lastRing = ring;
      const canvas = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth;
      const height = canvas.clientHeight;
      if (!width || !height) return;
      if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
        canvas.width = Math.round(width * ratio);
        canvas.height = Math.round(height * ratio);
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);

      const pad = { left: 44, right: 10, top: 10, bottom: 20 };
      const plotW = width - pad.left - pad.right;
      const plotH = height - pad.top - pad.bottom;
      const now = Date.now();
      const start = now - this.windowMs;
      const samples = ring ? ring.items.filter((s) => s.t >= start) : [];
      let top = 0;
      for (const s of samples) for (const { key } of this.series) if (s[key] > top) top = s[key];
      top = niceTop(top * 1.05, 4);

      const grid = cssVar("--chart-grid", "#2a3140");
      const text = cssVar("--text-muted", "#8b95a7");
      ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
      ctx.fillStyle = text;
      ctx.strokeStyle = grid;
      ctx.lineWidth = 1;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      for (let i = 0; i <= 4; i += 1) {
        const y = pad.top + plotH - (plotH * i) / 4;
        ctx.beginPath();
        ctx.moveTo(pad.left, Math.round(y) + 0.5);
        ctx.lineTo(pad.left + plotW, Math.round(y) + 0.5);
        ctx.stroke();
        ctx.fillText(this.format((top * i) / 4), pad.left - 6, y);
      }
      ctx.textAlign = "center";
      ctx.textBaseline = "alphabetic";
      const minutes = Math.round(this.windowMs / 60_000);
      for (let m = minutes; m >= 0; m -= 5) {
        const x = pad.left + plotW * (1 - (m * 60_000) / this.windowMs);
        const clamped = Math.min(Math.max(x, pad.left + 12), pad.left + plotW - 12);
        ctx.fillText(m === 0 ? "now" : `-${m}m`, clamped, height - 5);
      }
      if (samples.length < 2) {
        const label = "collecting samples…";
        const labelW = ctx.measureText(label).width + 16;
        ctx.fillStyle = cssVar("--bg-raised", "#131a24");
        ctx.fillRect(pad.left + (plotW - labelW) / 2, pad.top + plotH / 2 - 10, labelW, 20);
        ctx.fillStyle = text;
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        ctx.fillText(label, pad.left + plotW / 2, pad.top + plotH / 2);
        return;
      }

      const xOf = (t) => pad.left + (plotW * (t - start)) / this.windowMs;
      const yOf = (v) => pad.top + plotH - (plotH * Math.min(v, top)) / top;
      for (const { key, color, fill } of this.series) {
        const runs = [];
        let run = [];
        let previous = null;
        for (const s of samples) {
          if (previous && s.t - previous.t > this.gapMs) {
            runs.push(run);
            run = [];
          }
          if (typeof s[key] === "number") run.push([xOf(s.t), yOf(s[key])]);
          previous = s;
        }
        runs.push(run);
        for (const points of runs) {
          if (!points.length) continue;
          if (fill) {
            ctx.beginPath();
            ctx.moveTo(points[0][0], pad.top + plotH);
            for (const [x, y] of points) ctx.lineTo(x, y);
            ctx.lineTo(points[points.length - 1][0], pad.top + plotH);
            ctx.closePath();
            ctx.fillStyle = fill;
            ctx.fill();
          }
          ctx.beginPath();
          points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
          ctx.strokeStyle = color;
          ctx.lineWidth = 1.5;
          ctx.stroke();
        }
      }
    }
  }

  return { Ring, TimeChart, cssVar };
})();

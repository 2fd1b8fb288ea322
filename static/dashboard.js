/* The dashboard: live queue statistics, charts and job table over the WebSocket queue topic; admin stop actions. */
"use strict";

(() => {
  const { fmtBytes, fmtNumber, Socket } = Conveyor;
  const { TimeChart, fmtAxisMs } = Charts;
  const { JobTable, FINAL } = Jobs;
  const config = Conveyor.config();

  const RANGES = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 86_400_000 };
  // The server samples every 5 s; a day's chart changes little between two refreshes a minute apart.
  const REFRESH_MS = { "15m": 5000, "1h": 5000, "24h": 60_000 };
  const THROUGHPUT_WINDOW_MS = 60_000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    body: $("jobs-body"),
    empty: $("jobs-empty"),
    count: $("jobs-count"),
    actionsHead: $("actions-head"),
    filterStatus: $("filter-status"),
    filterLanguage: $("filter-language"),
    filterId: $("filter-id"),
    detailList: $("detail-list"),
    detailEmpty: $("detail-empty"),
    detailActions: $("detail-actions"),
    detailFull: $("detail-full"),
    detailClose: $("detail-close"),
    authForm: $("auth-form"),
    apiKey: $("api-key"),
    authSubmit: $("auth-submit"),
    authMessage: $("auth-message"),
    adminBadge: $("admin-badge"),
    toast: $("toast"),
  };

  const state = {
    stats: null,
    statsAt: 0,
    admin: false,
    user: null,
    key: null, // kept in memory only, to re-authenticate after a reconnect
    authPending: false,
  };
  const table = new JobTable(ui, { canAct: () => state.admin, onStop: stopJob, loadJob });

  /** The full job, for an admin: REST with the key this page holds in memory (never stored). */
  async function loadJob(id) {
    if (!state.admin || !state.key) return null;
    try {
      const response = await fetch(`/queue/job/${encodeURIComponent(id)}`, {
        headers: { Accept: "application/json", Authorization: `Bearer ${state.key}` },
      });
      return response.ok ? await response.json() : null;
    } catch (err) {
      return null;
    }
  }

  function openLinkedJob() {
    const id = JobTable.hashId();
    if (id && state.admin) table.openId(id);
  }
  window.addEventListener("hashchange", openLinkedJob);

  // -- statistics ----------------------------------------------------------------------------------------------

  function renderStats() {
    const s = state.stats;
    if (!s) return;
    const set = (id, value) => ($(id).textContent = value);
    set("stat-queue", fmtNumber(s.queueLength));
    set("stat-queue-max", `of ${fmtNumber(s.maxQueueSize)} places`);
    set("stat-running", `${fmtNumber(s.runningCount)} / ${fmtNumber(s.maxConcurrent)}`);
    set("stat-rate", fmtRate(currentRate()));
    set("stat-completed", fmtNumber(s.totalCompleted));
    set("stat-processed", `of ${fmtNumber(s.totalProcessed)} processed`);
    set("stat-failed", fmtNumber(s.totalFailed));
    set("stat-timeout", fmtNumber(s.totalTimeout));
    set("stat-cancelled", fmtNumber(s.totalCancelled));
    set("stat-rejected", fmtNumber(s.totalRejected));
    set("stat-ratelimited", fmtNumber(s.totalRateLimited));
  }

  /**
   * Jobs/s over the last minute: the live processed count against the history point a minute back (or the oldest
   * one there is). The server's jobsPerSecond divides the last minute's finishes by 60 whatever the span, so it
   * lags a burst (10 jobs/s for 6 s reads 1.0) and, pushed only on changes, went stale; it is only the fallback.
   */
  function currentRate() {
    if (!state.stats) return 0;
    const now = Date.now() + history.skewMs;
    const { t, processed } = history.series;
    let base = -1;
    for (let i = t.length - 1; i >= 0; i -= 1) {
      base = i;
      if (t[i] <= now - THROUGHPUT_WINDOW_MS) break;
    }
    if (base >= 0 && state.stats.totalProcessed >= processed[base] && now - t[base] >= 1000) {
      return (state.stats.totalProcessed - processed[base]) / ((now - t[base]) / 1000);
    }
    return Date.now() - state.statsAt > THROUGHPUT_WINDOW_MS ? 0 : state.stats.jobsPerSecond || 0;
  }

  function fmtRate(rate) {
    if (rate === 0) return "0";
    return rate >= 10 ? rate.toFixed(1) : rate.toFixed(2);
  }

  // -- charts --------------------------------------------------------------------------------------------------

  // `skewMs`: the server's clock minus this browser's, from the last response (sample times are the server's).
  const history = { range: "15m", series: { t: [], processed: [] }, skewMs: 0, timer: null, loading: false };
  const charts = {
    throughput: new TimeChart($("chart-throughput"), {
      series: [{ label: "jobs/s", color: "--chart-p50", fill: true }],
    }),
    queue: new TimeChart($("chart-queue"), {
      series: [
        { label: "waiting", color: "--chart-p95", fill: true },
        { label: "running", color: "--chart-p50" },
      ],
    }),
    wait: new TimeChart($("chart-wait"), {
      series: [
        { label: "p50", color: "--chart-p50" },
        { label: "p95", color: "--chart-p95" },
      ],
      format: fmtAxisMs,
    }),
    exec: new TimeChart($("chart-exec"), {
      series: [
        { label: "p50", color: "--chart-p50" },
        { label: "p95", color: "--chart-p95" },
      ],
      format: fmtAxisMs,
    }),
  };
  const rangeButtons = [...document.querySelectorAll(".ranges .range")];

  /** The server's history for the chosen range: full charts as soon as the page opens, refreshed while open. */
  async function loadHistory() {
    if (history.loading) return;
    history.loading = true;
    const range = history.range;
    try {
      const response = await fetch(`/queue/history?range=${encodeURIComponent(range)}`, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      if (range !== history.range) return; // the user picked another range meanwhile
      history.skewMs = typeof body.now === "number" ? body.now - Date.now() : 0;
      drawHistory(body);
      $("charts-note").textContent = "";
    } catch (err) {
      $("charts-note").textContent = `history unavailable (${err.message}); retrying`;
    } finally {
      history.loading = false;
    }
  }

  function drawHistory(body) {
    const s = body.series;
    history.series = s;
    const to = Date.now() + history.skewMs;
    const span = { from: to - RANGES[history.range], to };
    charts.throughput.setData(s.t, [s.throughput], span);
    charts.queue.setData(s.t, [s.queueLength, s.running], span);
    charts.wait.setData(s.t, [s.waitP50, s.waitP95], span);
    charts.exec.setData(s.t, [s.execP50, s.execP95], span);
    document.querySelector(".charts").dataset.range = history.range;
    renderStats();
  }

  function chooseRange(range) {
    if (!RANGES[range]) return;
    history.range = range;
    for (const button of rangeButtons) button.setAttribute("aria-pressed", String(button.dataset.range === range));
    try {
      localStorage.setItem("conveyor.chartRange", range);
    } catch (err) {
      // not remembered
    }
    clearInterval(history.timer);
    history.timer = setInterval(loadHistory, REFRESH_MS[range]);
    history.loading = false;
    loadHistory();
  }

  for (const button of rangeButtons) button.addEventListener("click", () => chooseRange(button.dataset.range));

  // -- build cache ---------------------------------------------------------------------------------------------

  /** The build cache's counters (GET /cache/status): hits as the value, the rest below it. */
  async function loadCache() {
    try {
      const response = await fetch("/cache/status", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const b = (await response.json()).builds;
      $("stat-cache").textContent = b.enabled ? fmtNumber(b.hits) : "off";
      const sizes = `${fmtNumber(b.entries)} builds, ${fmtBytes(b.bytes)}`;
      $("stat-cache-sub").textContent = b.enabled
        ? `${fmtNumber(b.misses)} misses · ${sizes} · ${fmtNumber(b.evictions)} evicted`
        : "CACHE_MAX_MB=0";
    } catch (err) {
      $("stat-cache-sub").textContent = `unavailable (${err.message})`;
    }
  }

  // -- admin ---------------------------------------------------------------------------------------------------

  function setAdmin(admin, user, message) {
    state.admin = admin;
    state.user = user;
    ui.adminBadge.dataset.state = admin ? "admin" : "viewer";
    ui.adminBadge.textContent = admin ? "admin" : "read-only";
    ui.authMessage.textContent = message;
    ui.authSubmit.textContent = admin ? "Switch key" : "Sign in";
    table.render();
  }

  function stopJob(id) {
    if (!state.admin) return;
    if (socket.send({ type: "stop", jobId: id })) {
      table.markStopping(id, true);
    } else {
      toast("Not connected: the stop was not sent.");
    }
  }

  let toastTimer = null;
  function toast(text) {
    ui.toast.textContent = text;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (ui.toast.hidden = true), 5000);
  }

  ui.authForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.apiKey.value.trim();
    if (!key) return;
    state.key = key;
    state.authPending = true;
    ui.apiKey.value = "";
    const sent = socket.send({ type: "auth", key });
    ui.authMessage.textContent = sent ? "Checking the key…" : "Not connected; the key is sent on reconnect.";
  });

  // -- messages ------------------------------------------------------------------------------------------------

  function onMessage(message) {
    switch (message.type) {
      case "snapshot":
        table.reset(message.jobs);
        onStats(message.stats);
        break;
      case "stats":
        onStats(message);
        break;
      case "auth":
        state.authPending = false;
        setAdmin(
          Boolean(message.admin),
          message.user,
          message.admin
            ? `Signed in as ${message.user}: job ids, whole jobs, and Cancel and Stop on any job.`
            : `${message.user} is not an admin; the dashboard stays read-only.`,
        );
        openLinkedJob();
        break;
      case "error":
        onError(message);
        break;
      default:
        if (message.handle && (message.type === "queued" || message.type === "running" || FINAL.has(message.type))) {
          table.apply(message);
        }
    }
  }

  function onStats(stats) {
    // Strip `type` so the stored stats have the snapshot's shape.
    const { type, ...rest } = stats;
    state.stats = rest;
    state.statsAt = Date.now();
    renderStats();
  }

  function onError(message) {
    const text = message.message || message.error || "error";
    if (state.authPending && message.error === "Unauthorized") {
      state.authPending = false;
      state.key = null;
      setAdmin(false, null, `Key refused: ${text}`);
      return;
    }
    if (message.jobId) table.markStopping(message.jobId, false);
    toast(text);
  }

  const socket = new Socket({
    onMessage,
    onReady: () => {
      // Re-authenticate first, so the fresh snapshot's table is drawn with the right controls.
      if (state.key) {
        state.authPending = true;
        socket.send({ type: "auth", key: state.key });
      }
      socket.send({ type: "subscribe", topic: "queue" });
    },
    onClose: () => {
      if (state.admin) setAdmin(false, null, "Reconnecting; actions return once the key is accepted again.");
      table.closeDetail();
    },
  });

  let savedRange = null;
  try {
    savedRange = localStorage.getItem("conveyor.chartRange");
  } catch (err) {
    savedRange = null;
  }
  chooseRange(RANGES[savedRange] ? savedRange : "15m");
  loadCache();
  setInterval(loadCache, 5000);
  // Running and queued rows show live times; the rate moves without a push.
  setInterval(() => {
    renderStats();
    if (table.hasActive) table.render();
  }, 1000);
})();

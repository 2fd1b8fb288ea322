/* The dashboard: live queue statistics, charts and job table over the WebSocket queue topic; admin stop actions. */
"use strict";

(() => {
  const { fmtNumber, Socket } = Conveyor;
  const { Ring, TimeChart, cssVar } = Charts;
  const { JobTable, FINAL } = Jobs;
  const config = Conveyor.config();

  const WINDOW_MS = (config.chartWindowMinutes || 15) * 60_000;
  const SAMPLE_MS = Math.max(2000, config.statsIntervalMs || 0);
  const THROUGHPUT_WINDOW_MS = 60_000; // the server's jobsPerSecond covers the last minute

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
    set("stat-rate", currentRate().toFixed(2));
    set("stat-completed", fmtNumber(s.totalCompleted));
    set("stat-processed", `of ${fmtNumber(s.totalProcessed)} processed`);
    set("stat-failed", fmtNumber(s.totalFailed));
    set("stat-timeout", fmtNumber(s.totalTimeout));
    set("stat-cancelled", fmtNumber(s.totalCancelled));
    set("stat-rejected", fmtNumber(s.totalRejected));
    set("stat-ratelimited", fmtNumber(s.totalRateLimited));
  }

  /**
   * The server pushes stats only when something changes, so its last jobsPerSecond can go stale. Every finish
   * triggers a push, so a minute without one means nothing finished in the last minute: the rate is 0.
   */
  function currentRate() {
    if (!state.stats) return 0;
    return Date.now() - state.statsAt > THROUGHPUT_WINDOW_MS ? 0 : state.stats.jobsPerSecond || 0;
  }

  // -- charts --------------------------------------------------------------------------------------------------

  const samples = new Ring(Math.ceil(WINDOW_MS / SAMPLE_MS) + 1);
  const p50 = cssVar("--chart-p50", "#4cc2ff");
  const p95 = cssVar("--chart-p95", "#f5a524");
  const chartOptions = { windowMs: WINDOW_MS, gapMs: SAMPLE_MS * 2.5 };
  const charts = [
    new TimeChart($("chart-throughput"), {
      ...chartOptions,
      series: [{ key: "rate", color: p50, fill: "rgba(76, 194, 255, 0.15)" }],
      format: (v) => String(Number(v.toFixed(2))),
    }),
    new TimeChart($("chart-wait"), {
      ...chartOptions,
      series: [
        { key: "waitP50", color: p50 },
        { key: "waitP95", color: p95 },
      ],
      format: fmtAxisMs,
    }),
    new TimeChart($("chart-exec"), {
      ...chartOptions,
      series: [
        { key: "execP50", color: p50 },
        { key: "execP95", color: p95 },
      ],
      format: fmtAxisMs,
    }),
  ];
  let baseline = null; // {t, processed} of the previous sample

  function fmtAxisMs(ms) {
    if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)}s`;
    return `${Number(ms.toFixed(2))}ms`;
  }

  function takeSample() {
    const s = state.stats;
    if (!s || !socket.ready) return;
    const now = Date.now();
    let rate = 0;
    // A restarted server starts its totals at 0 again: count from there, never a negative rate.
    if (baseline && s.totalProcessed >= baseline.processed) {
      rate = (s.totalProcessed - baseline.processed) / ((now - baseline.t) / 1000);
    }
    baseline = { t: now, processed: s.totalProcessed };
    samples.push({
      t: now,
      rate,
      waitP50: s.waitTime?.p50 ?? 0,
      waitP95: s.waitTime?.p95 ?? 0,
      execP50: s.executionTime?.p50 ?? 0,
      execP95: s.executionTime?.p95 ?? 0,
    });
    drawCharts();
  }

  function drawCharts() {
    for (const chart of charts) chart.draw(samples);
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
    const first = !state.stats;
    // Strip `type` so the stored stats have the snapshot's shape.
    const { type, ...rest } = stats;
    state.stats = rest;
    state.statsAt = Date.now();
    renderStats();
    if (first) takeSample();
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
      baseline = null;
    },
  });

  setInterval(takeSample, SAMPLE_MS);
  // Running and queued rows show live times; the rate may decay to 0 without a push.
  setInterval(() => {
    renderStats();
    if (table.hasActive) table.render();
  }, 1000);
  drawCharts();
})();

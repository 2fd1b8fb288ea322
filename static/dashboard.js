/* The dashboard: live queue statistics, charts and job table over the WebSocket queue topic; admin stop actions. */
"use strict";

(() => {
  const { el, fmtMs, fmtClock, fmtNumber, Socket } = Conveyor;
  const { Ring, TimeChart, cssVar } = Charts;
  const config = Conveyor.config();

  const WINDOW_MS = (config.chartWindowMinutes || 15) * 60_000;
  const SAMPLE_MS = Math.max(2000, config.statsIntervalMs || 0);
  const THROUGHPUT_WINDOW_MS = 60_000; // the server's jobsPerSecond covers the last minute
  const MAX_JOBS = 500;
  const MAX_ROWS = 200;
  const FINAL = new Set(["completed", "failed", "timeout", "cancelled"]);

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
    jobs: new Map(),
    admin: false,
    user: null,
    key: null, // kept in memory only, to re-authenticate after a reconnect
    authPending: false,
    selected: null,
    stopping: new Set(),
  };

  // -- jobs ----------------------------------------------------------------------------------------------------

  const toMs = (value) => (typeof value === "number" ? value : value ? Date.parse(value) : null);

  function fromSummary(summary) {
    return {
      id: summary.id,
      language: summary.language,
      priority: summary.priority,
      status: summary.status,
      createdAt: toMs(summary.createdAt),
      startedAt: toMs(summary.startedAt),
      finishedAt: toMs(summary.finishedAt),
      waitTimeMs: summary.waitTimeMs,
      executionTimeMs: summary.executionTimeMs,
      compileTimeMs: summary.compileTimeMs ?? null,
      exitCode: summary.exitCode,
      signal: summary.signal,
      reason: summary.reason,
      truncated: summary.truncated,
    };
  }

  function jobFor(id) {
    let job = state.jobs.get(id);
    if (!job) {
      job = { id, status: "queued", language: null, priority: null, createdAt: null };
      state.jobs.set(id, job);
    }
    return job;
  }

  /** Apply one lifecycle event from the queue topic (never output: the topic does not carry it). */
  function applyEvent(message) {
    const job = jobFor(message.jobId);
    if (message.type === "queued") {
      Object.assign(job, {
        status: "queued",
        language: message.language ?? job.language,
        priority: message.priority ?? job.priority,
        createdAt: toMs(message.createdAt) ?? Date.now(),
      });
    } else if (message.type === "running") {
      Object.assign(job, { status: "running", startedAt: toMs(message.startedAt), waitTimeMs: message.waitTimeMs });
    } else if (FINAL.has(message.type)) {
      Object.assign(job, {
        status: message.type,
        finishedAt: Date.now(),
        exitCode: message.exitCode,
        signal: message.signal,
        reason: message.reason,
        truncated: message.truncated,
        waitTimeMs: message.waitTimeMs,
        executionTimeMs: message.executionTimeMs,
        compileTimeMs: message.compileTimeMs,
        language: message.language ?? job.language,
      });
      state.stopping.delete(job.id);
    }
    trimJobs();
    scheduleRender();
  }

  function trimJobs() {
    if (state.jobs.size <= MAX_JOBS) return;
    for (const [id, job] of state.jobs) {
      if (state.jobs.size <= MAX_JOBS) break;
      if (FINAL.has(job.status) && id !== state.selected) state.jobs.delete(id);
    }
  }

  const isActive = (job) => job.status === "queued" || job.status === "running";
  const liveWait = (job) => (job.status === "queued" && job.createdAt ? Math.max(0, Date.now() - job.createdAt) : job.waitTimeMs);
  const liveRun = (job) =>
    job.status === "running" && job.startedAt ? Math.max(0, Date.now() - job.startedAt) : job.executionTimeMs;

  // -- rendering -----------------------------------------------------------------------------------------------

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      renderTable();
      renderDetail();
    });
  }

  function badge(status) {
    return el("span", { className: `badge badge-${status}`, dataset: { status } }, status);
  }

  function actionButton(job) {
    if (!state.admin || !isActive(job)) return null;
    const label = job.status === "queued" ? "Cancel" : "Stop";
    const busy = state.stopping.has(job.id);
    return el(
      "button",
      {
        type: "button",
        className: "btn btn-small btn-danger action",
        dataset: { action: "stop", jobId: job.id },
        disabled: busy,
        onclick: (event) => {
          event.stopPropagation();
          stopJob(job.id);
        },
      },
      busy ? "…" : label,
    );
  }

  function matches(job) {
    const status = ui.filterStatus.value;
    if (status === "active" ? !isActive(job) : status && job.status !== status) return false;
    if (ui.filterLanguage.value && job.language !== ui.filterLanguage.value) return false;
    const needle = ui.filterId.value.trim().toLowerCase();
    return !needle || job.id.toLowerCase().includes(needle);
  }

  function renderTable() {
    syncLanguages();
    // Active jobs first (the ones an admin may act on), then newest first.
    const all = [...state.jobs.values()];
    const shown = all
      .filter(matches)
      .sort((a, b) => isActive(b) - isActive(a) || (b.createdAt || 0) - (a.createdAt || 0))
      .slice(0, MAX_ROWS);
    ui.actionsHead.hidden = !state.admin;
    ui.body.replaceChildren(
      ...shown.map((job) =>
        el(
          "tr",
          {
            dataset: { jobId: job.id, status: job.status },
            className: job.id === state.selected ? "selected" : "",
            tabindex: 0,
            onclick: () => select(job.id),
            onkeydown: (event) => event.key === "Enter" && select(job.id),
          },
          el("td", { className: "mono", title: job.id }, job.id.slice(0, 12)),
          el("td", {}, badge(job.status)),
          el("td", {}, job.language || "–"),
          el("td", { className: "num" }, job.priority ?? "–"),
          el("td", { className: "num" }, fmtMs(liveWait(job))),
          el("td", { className: "num" }, fmtMs(liveRun(job))),
          el("td", { className: "mono muted" }, fmtClock(job.createdAt)),
          state.admin ? el("td", { className: "actions-col" }, actionButton(job)) : null,
        ),
      ),
    );
    ui.empty.hidden = shown.length > 0;
    ui.empty.textContent = all.length ? "No jobs match the filters." : "No jobs yet.";
    ui.count.textContent = shown.length === all.length ? `(${all.length})` : `(${shown.length} of ${all.length})`;
  }

  function syncLanguages() {
    const languages = [...new Set([...state.jobs.values()].map((j) => j.language).filter(Boolean))].sort();
    const current = [...ui.filterLanguage.options].slice(1).map((o) => o.value);
    if (languages.join() === current.join()) return;
    const selected = ui.filterLanguage.value;
    ui.filterLanguage.replaceChildren(
      el("option", { value: "" }, "all languages"),
      ...languages.map((language) => el("option", { value: language }, language)),
    );
    ui.filterLanguage.value = languages.includes(selected) ? selected : "";
  }

  function select(id) {
    state.selected = id;
    scheduleRender();
  }

  function renderDetail() {
    const job = state.selected ? state.jobs.get(state.selected) : null;
    ui.detailList.hidden = !job;
    ui.detailEmpty.hidden = Boolean(job);
    ui.detailClose.hidden = !job;
    if (!job) {
      ui.detailActions.replaceChildren();
      return;
    }
    const rows = [
      ["Job id", el("span", { className: "mono wrap" }, job.id)],
      ["Status", badge(job.status)],
      ["Language", job.language || "–"],
      ["Priority", job.priority ?? "–"],
      ["Created", fmtClock(job.createdAt)],
      ["Started", fmtClock(job.startedAt)],
      ["Finished", fmtClock(job.finishedAt)],
      ["Wait", fmtMs(liveWait(job))],
      ["Run", fmtMs(liveRun(job))],
      ["Compile", fmtMs(job.compileTimeMs)],
      ["Exit code", job.exitCode ?? "–"],
      ["Signal", job.signal || "–"],
      ["Reason", job.reason || "–"],
      ["Truncated", job.truncated ? "yes" : "no"],
    ];
    ui.detailList.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
    ui.detailActions.replaceChildren(...[actionButton(job)].filter(Boolean));
  }

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
    scheduleRender();
  }

  function stopJob(id) {
    if (!state.admin) return;
    if (socket.send({ type: "stop", jobId: id })) {
      state.stopping.add(id);
      scheduleRender();
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
    if (!socket.send({ type: "auth", key })) ui.authMessage.textContent = "Not connected; the key is sent on reconnect.";
    else ui.authMessage.textContent = "Checking the key…";
  });

  // -- messages ------------------------------------------------------------------------------------------------

  function onMessage(message) {
    switch (message.type) {
      case "snapshot":
        state.jobs = new Map(message.jobs.map((summary) => [summary.id, fromSummary(summary)]));
        state.stopping.clear();
        onStats(message.stats);
        scheduleRender();
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
            ? `Signed in as ${message.user}: Cancel and Stop act on any job.`
            : `${message.user} is not an admin; the dashboard stays read-only.`,
        );
        break;
      case "error":
        onError(message);
        break;
      default:
        if (message.jobId && (message.type === "queued" || message.type === "running" || FINAL.has(message.type))) {
          applyEvent(message);
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
    if (message.jobId) {
      state.stopping.delete(message.jobId);
      scheduleRender();
    }
    toast(text);
  }

  ui.detailClose.addEventListener("click", () => select(null));
  for (const input of [ui.filterStatus, ui.filterLanguage]) input.addEventListener("change", scheduleRender);
  ui.filterId.addEventListener("input", scheduleRender);

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
      baseline = null;
    },
  });

  setInterval(takeSample, SAMPLE_MS);
  // Running and queued rows show live times; the rate may decay to 0 without a push.
  setInterval(() => {
    renderStats();
    if ([...state.jobs.values()].some(isActive)) scheduleRender();
  }, 1000);
  drawCharts();
})();

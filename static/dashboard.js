/* The dashboard: live queue statistics, charts and job table over the WebSocket queue topic; admin stop actions. */
"use strict";

(() => {
  const { el, fmtBytes, fmtMs, fmtNumber, Socket } = Conveyor;
  const { TimeChart, fmtAxisMs } = Charts;
  const { FINAL } = JobRecord;
  const config = Conveyor.config();

  const RANGES = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 86_400_000 };
  // The server samples every 5 s; a day's chart changes little between two refreshes a minute apart.
  const REFRESH_MS = { "15m": 5000, "1h": 5000, "24h": 60_000 };
  const THROUGHPUT_WINDOW_MS = 60_000;
  const CARDS_REFRESH_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    body: $("jobs-body"),
    empty: $("jobs-empty"),
    count: $("jobs-count"),
    actionsHead: $("actions-head"),
    filterLanguage: $("filter-language"),
    filterId: $("filter-id"),
    tabs: [...document.querySelectorAll("#status-tabs .tab")],
    tabList: $("status-tabs"),
    sortHeads: [...document.querySelectorAll("#jobs th[data-sort]")],
    pagePrev: $("page-prev"),
    pageNext: $("page-next"),
    pageInfo: $("page-info"),
    pageSize: $("page-size"),
    listNote: $("list-note"),
    selectHead: $("select-head"),
    selectPage: $("select-page"),
    bulk: $("bulk"),
    bulkCount: $("bulk-count"),
    bulkCancel: $("bulk-cancel"),
    bulkClear: $("bulk-clear"),
    bulkConfirm: $("bulk-confirm"),
    bulkQuestion: $("bulk-question"),
    bulkYes: $("bulk-yes"),
    bulkNo: $("bulk-no"),
    detailList: $("detail-list"),
    detailEmpty: $("detail-empty"),
    detailActions: $("detail-actions"),
    detailFull: $("detail-full"),
    detailClose: $("detail-close"),
    authForm: $("auth-form"),
    apiKey: $("api-key"),
    authSubmit: $("auth-submit"),
    authMessage: $("auth-message"),
    signOut: $("sign-out"),
    adminBadge: $("admin-badge"),
    toast: $("toast"),
  };

  const state = {
    stats: null,
    statsAt: 0,
    admin: false,
    user: null,
    authPending: false,
  };
  /** REST as the admin needs no header: the sign-in cookie (HttpOnly, never visible here) goes with each request. */
  const adminHeaders = () => ({});
  const table = new JobTable(ui, {
    canAct: () => state.admin,
    headers: adminHeaders,
    onStop: stopJob,
    onRerun: rerunJob,
    onBulkCancel: cancelJobs,
    loadJob,
  });

  Conveyor.tablist(ui.tabList);

  /** The full job, for an admin. */
  async function loadJob(id) {
    if (!state.admin) return null;
    try {
      const response = await fetch(`/queue/job/${encodeURIComponent(id)}`, {
        headers: { Accept: "application/json", ...adminHeaders() },
      });
      return response.ok ? await response.json() : null;
    } catch (err) {
      return null;
    }
  }

  /** POST as the admin; the JSON answer, or an Error with the server's message. */
  async function adminPost(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json", ...adminHeaders() },
      body: JSON.stringify(body ?? {}),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.message || `HTTP ${response.status}`);
    return answer;
  }

  /** Run again: the job's submission as a new job of the admin's, opened in the detail panel. */
  async function rerunJob(id) {
    if (!state.admin) return;
    try {
      const answer = await adminPost(`/queue/job/${encodeURIComponent(id)}/rerun`);
      toast(`Queued again as ${answer.jobId.slice(0, 12)}.`, "ok");
      table.openId(answer.jobId);
      table.load();
    } catch (err) {
      toast(`Not run again: ${err.message}`);
    }
  }

  /**
   * Cancel the selected jobs (queued ones cancelled, running ones stopped): in requests of at most MAX_BATCH_SIZE
   * ids (the server's limit), one answer per id, summed up.
   */
  async function cancelJobs(ids) {
    if (!state.admin) return;
    ui.bulkCancel.disabled = true;
    const size = Math.max(1, config.maxBatchSize || 20);
    const results = [];
    let failure = null;
    try {
      for (let start = 0; start < ids.length; start += size) {
        const answer = await adminPost("/queue/jobs/cancel", { ids: ids.slice(start, start + size) });
        results.push(...answer.results);
      }
    } catch (err) {
      failure = err;
    } finally {
      ui.bulkCancel.disabled = false;
    }
    const done = results.filter((r) => r.status === 200).length;
    const refused = results.filter((r) => r.status !== 200);
    const why = [...new Set(refused.map((r) => (r.jobStatus ? `already ${r.jobStatus}` : r.error)))].join(", ");
    const not = refused.length ? `; ${refused.length} not (${why})` : "";
    if (failure) {
      const left = ids.length - results.length;
      toast(`${done ? `${done} cancelled${not}; ` : "Nothing cancelled: "}${left} not sent: ${failure.message}`);
    } else {
      toast(`${done} cancelled${not}.`, refused.length ? "" : "ok");
      table.clearChosen();
    }
    table.load();
  }

  function openLinkedJob() {
    const id = JobDetail.hashId();
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

  // -- warm pool, instances ------------------------------------------------------------------------------------

  /** The warm-pool card, from GET /health's `pool` (shown only on a server that has one). */
  async function loadPool() {
    let pool;
    try {
      const response = await fetch("/health", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      pool = (await response.json()).pool;
    } catch (err) {
      return;
    }
    $("card-pool").hidden = !pool;
    if (!pool) return;
    $("stat-pool").textContent = pool.enabled ? `${fmtNumber(pool.ready)} ready` : "off";
    $("stat-pool-sub").textContent = pool.enabled
      ? `${fmtNumber(pool.inUse)} in use · ${fmtNumber(pool.hits)} hits · ${fmtNumber(pool.misses)} misses · ` +
        `refill ${fmtMs(pool.refillMs)}`
      : "no sandboxes kept warm";
    $("stat-pool-languages").textContent = Object.entries(pool.languages || {})
      .map(([name, l]) => `${name} ${l.ready}/${l.target}`)
      .join(" · ");
  }

  /** `fn` now if it last ran `ms` ago or more, else once when that much time has passed; calls between coalesce. */
  function throttled(fn, ms) {
    let timer = null;
    let last = 0;
    return () => {
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, Math.max(0, last + ms - Date.now()));
    };
  }

  function renderBeats() {
    const now = Date.now() + history.skewMs;
    for (const span of document.querySelectorAll("#instances-list [data-role=beat]")) {
      span.textContent = `${fmtMs(Math.max(0, now - Number(span.dataset.at)))} ago`;
    }
  }

  /** The instances working the queue (one embedded; on Redis every live heartbeat). */
  async function loadInstances() {
    const list = $("instances-list");
    let body;
    try {
      const response = await fetch("/queue/instances", { headers: { Accept: "application/json", ...adminHeaders() } });
      body = await response.json();
      if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
    } catch (err) {
      $("instances-mode").textContent = `unavailable (${err.message})`;
      return;
    }
    const n = body.instances.length;
    $("instances-mode").textContent = body.backend === "redis" ? `Redis · ${n} live` : "embedded";
    list.replaceChildren(
      ...body.instances.map((instance) =>
        el(
          "li",
          { className: "instance", dataset: { name: instance.name, ...(instance.here ? { here: "" } : {}) } },
          el(
            "div",
            { className: "instance-head" },
            el("span", { className: "mono wrap" }, instance.name),
            instance.here ? el("span", { className: "badge badge-running" }, "this one") : null,
          ),
          el(
            "div",
            { className: "instance-meta", dataset: { role: "load" } },
            `${instance.running.length} / ${instance.slots} slots busy · heartbeat `,
            el("span", { dataset: { role: "beat", at: instance.lastHeartbeat } }),
          ),
          instance.running.length
            ? el(
                "div",
                { className: "instance-jobs mono" },
                instance.running.map((job) =>
                  el("span", { title: job.id || "display handle" }, (job.id || job.handle).slice(0, 12)),
                ),
              )
            : null,
        ),
      ),
    );
    renderBeats();
  }
  // On every change of what runs where, and at least every few seconds: one request per CARDS_REFRESH_MS at most.
  const instancesSoon = throttled(loadInstances, CARDS_REFRESH_MS);

  // -- admin ---------------------------------------------------------------------------------------------------

  function setAdmin(admin, user, message) {
    state.admin = admin;
    state.user = user;
    ui.adminBadge.dataset.state = admin ? "admin" : "viewer";
    ui.adminBadge.textContent = admin ? "admin" : "read-only";
    ui.authMessage.textContent = message;
    ui.authSubmit.textContent = admin ? "Switch key" : "Sign in";
    ui.signOut.hidden = !user;
    table.render();
    table.load(); // ids come with the admin's key
    loadInstances(); // and in the instances view
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
  function toast(text, kind = "") {
    ui.toast.textContent = text;
    ui.toast.dataset.kind = kind;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (ui.toast.hidden = true), 5000);
  }

  // The key is sent once, for a session cookie the page cannot read (kept across reloads for SESSION_TTL_S); this
  // socket is told the key too, so it changes role now rather than at its next reconnect.
  ui.authForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = ui.apiKey.value.trim();
    if (!key) return;
    ui.apiKey.value = "";
    ui.authMessage.textContent = "Checking the key…";
    let answer;
    try {
      const response = await fetch("/session", {
        method: "POST",
        headers: { Accept: "application/json", Authorization: `Bearer ${key}` },
      });
      answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        setAdmin(false, null, `Key refused: ${answer.message || `HTTP ${response.status}`}`);
        return;
      }
    } catch (err) {
      ui.authMessage.textContent = "Not connected; try again.";
      return;
    }
    // Not connected: the next socket's upgrade carries the cookie, and its `hello` says who it is.
    state.authPending = socket.send({ type: "auth", key });
    if (!state.authPending) setAdmin(Boolean(answer.admin), answer.user, "Signed in; reconnecting…");
  });

  // The cookie is dropped by the server; a reload opens a socket without it.
  ui.signOut.addEventListener("click", async () => {
    await fetch("/session", { method: "DELETE" }).catch(() => null);
    location.reload();
  });

  // -- messages ------------------------------------------------------------------------------------------------

  function onMessage(message) {
    switch (message.type) {
      case "snapshot":
        table.reset();
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
            ? `Signed in as ${message.user}: job ids, whole jobs; Cancel, Stop and Run again on any job.`
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
          if (message.type !== "queued") instancesSoon();
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
      setAdmin(false, null, `Key refused: ${text}`);
      return;
    }
    if (message.jobId) table.markStopping(message.jobId, false);
    toast(text);
  }

  const socket = new Socket({
    onMessage,
    onReady: (hello) => {
      // The upgrade carried the sign-in cookie: `hello` says who this socket is, before the snapshot is drawn.
      if (hello.user) {
        setAdmin(
          Boolean(hello.admin),
          hello.user,
          hello.admin
            ? `Signed in as ${hello.user}: job ids, whole jobs; Cancel, Stop and Run again on any job.`
            : `${hello.user} is not an admin; the dashboard stays read-only.`,
        );
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
  const loadCards = () => {
    loadCache();
    loadPool();
    instancesSoon();
  };
  loadCards();
  setInterval(loadCards, CARDS_REFRESH_MS);
  // Running and queued rows show live times; the rate moves without a push.
  setInterval(() => {
    renderStats();
    renderBeats();
    if (table.hasActive) table.render();
  }, 1000);
})();

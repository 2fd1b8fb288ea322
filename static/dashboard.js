/* The dashboard: live queue statistics, charts and job table over the WebSocket queue topic; admin stop actions.
   This file finds the page's elements, takes the socket's messages and joins the parts: the toast (toast.js), the
   admin session (adminsession.js) and actions (adminactions.js), the job table (jobs.js, with jobrecord.js,
   jobselection.js and jobdetail.js), the charts (charthistory.js), the statistics cards (queuestats.js), the
   build cache and warm pool cards (sandboxcards.js) and the instances (instancelist.js). */
"use strict";

(() => {
  const config = Conveyor.config();
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

  // Its messages and its opening arrive once this script has run, when every part below exists.
  const socket = new Conveyor.Socket({
    onMessage,
    onReady: (hello) => {
      // The upgrade carried the sign-in cookie: `hello` says who this socket is, before the snapshot is drawn.
      if (hello.user) session.greet(hello);
      socket.send({ type: "subscribe", topic: "queue" });
    },
    onClose: () => {
      if (session.admin) session.set(false, null, "Reconnecting; actions return once the key is accepted again.");
      table.closeDetail();
    },
  });

  const toast = new Toast(ui.toast);
  const session = new AdminSession(ui, {
    socket,
    onChange: () => {
      table.render();
      table.load(); // ids come with the admin's key
      instances.load(); // and in the instances view
    },
  });
  const canAct = () => session.admin;
  const table = new JobTable(ui, {
    canAct,
    headers: AdminSession.headers,
    onStop: (id) => actions.stop(id),
    onRerun: (id) => actions.rerun(id),
    onBulkCancel: (ids) => actions.cancel(ids),
    loadJob: (id) => actions.loadJob(id),
  });
  const actions = new AdminActions(ui, { canAct, socket, table, toast, maxBatchSize: config.maxBatchSize });

  Conveyor.tablist(ui.tabList);

  function openLinkedJob() {
    const id = JobDetail.hashId();
    if (id && session.admin) table.openId(id);
  }
  window.addEventListener("hashchange", openLinkedJob);

  const charts = new ChartHistory(
    {
      throughput: $("chart-throughput"),
      queue: $("chart-queue"),
      wait: $("chart-wait"),
      exec: $("chart-exec"),
      area: document.querySelector(".charts"),
      note: $("charts-note"),
      ranges: [...document.querySelectorAll(".ranges .range")],
    },
    { onDraw: () => stats.render() },
  );
  const stats = new QueueStats(
    {
      queue: $("stat-queue"),
      queueMax: $("stat-queue-max"),
      running: $("stat-running"),
      rate: $("stat-rate"),
      completed: $("stat-completed"),
      processed: $("stat-processed"),
      failed: $("stat-failed"),
      timeout: $("stat-timeout"),
      cancelled: $("stat-cancelled"),
      rejected: $("stat-rejected"),
      rateLimited: $("stat-ratelimited"),
    },
    charts,
  );
  const sandbox = new SandboxCards({
    cache: $("stat-cache"),
    cacheSub: $("stat-cache-sub"),
    poolCard: $("card-pool"),
    pool: $("stat-pool"),
    poolSub: $("stat-pool-sub"),
    poolLanguages: $("stat-pool-languages"),
  });
  const instances = new InstanceList(
    { list: $("instances-list"), mode: $("instances-mode") },
    { headers: AdminSession.headers, skewMs: () => charts.skewMs },
  );

  // -- messages ------------------------------------------------------------------------------------------------

  function onMessage(message) {
    switch (message.type) {
      case "snapshot":
        table.reset();
        stats.update(message.stats);
        break;
      case "stats":
        stats.update(message);
        break;
      case "auth":
        session.pending = false;
        session.greet(message);
        openLinkedJob();
        break;
      case "error":
        onError(message);
        break;
      default: {
        const lifecycle = message.type === "queued" || message.type === "running" || JobRecord.FINAL.has(message.type);
        if (message.handle && lifecycle) {
          table.apply(message);
          if (message.type !== "queued") instances.soon();
        }
      }
    }
  }

  function onError(message) {
    const text = message.message || message.error || "error";
    if (session.pending && message.error === "Unauthorized") {
      session.pending = false;
      session.set(false, null, `Key refused: ${text}`);
      return;
    }
    if (message.jobId) table.markStopping(message.jobId, false);
    toast.show(text);
  }

  charts.start();
  const loadCards = () => {
    sandbox.refresh();
    instances.soon();
  };
  loadCards();
  setInterval(loadCards, CARDS_REFRESH_MS);
  // Running and queued rows show live times; the rate moves without a push.
  setInterval(() => {
    stats.render();
    instances.renderBeats();
    if (table.hasActive) table.render();
  }, 1000);
})();

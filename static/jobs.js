/* The dashboard's job list: pages of GET /queue/jobs (sorted, filtered, a tab per status with its count), kept live
 * by queue-topic events, with a detail view. Rows are keyed by display handle: a viewer never gets a job's id (the
 * id is the capability to read it); an admin gets ids too, a full job view (code, input, output) in the detail
 * panel, linkable as #job=<id>, and the controls: Cancel/Stop, Run again, and a selection to cancel in bulk. */
"use strict";

const Jobs = (() => {
  const { el, fmtMs, fmtClock, fmtNumber } = Conveyor;
  const FINAL = new Set(["completed", "failed", "timeout", "cancelled"]);
  const STATUSES = ["all", "queued", "running", "completed", "failed", "timeout", "cancelled"];
  // While events arrive the list is fetched again at most this often: a busy queue costs one request per 2 s of
  // the read bucket (RATE_LIMIT_READ_REQUESTS), whatever its rate; rows on the page change live in between.
  const REFRESH_MS = 2000;
  const RETRY_MS = 5000;
  // Text columns sort A to Z first; figures and times largest or newest first.
  const ASCENDING_FIRST = new Set(["language", "status"]);

  const toMs = (value) => (typeof value === "number" ? value : value ? Date.parse(value) : null);
  const isActive = (job) => job.status === "queued" || job.status === "running";
  const liveWait = (job) =>
    job.status === "queued" && job.createdAt ? Math.max(0, Date.now() - job.createdAt) : job.waitTimeMs;
  const liveRun = (job) =>
    job.status === "running" && job.startedAt ? Math.max(0, Date.now() - job.startedAt) : job.executionTimeMs;

  const JOB_HASH = /^#job=([0-9a-f]{32})$/;

  function fromSummary(summary) {
    return {
      handle: summary.handle,
      id: summary.id ?? null,
      language: summary.language,
      priority: summary.priority,
      status: summary.status,
      createdAt: toMs(summary.createdAt),
      startedAt: toMs(summary.startedAt),
      finishedAt: toMs(summary.finishedAt),
      waitTimeMs: summary.waitTimeMs,
      executionTimeMs: summary.executionTimeMs,
      compileTimeMs: summary.compileTimeMs ?? null,
      cpuTimeMs: summary.cpuTimeMs ?? null,
      memoryPeakBytes: summary.memoryPeakBytes ?? null,
      exitCode: summary.exitCode,
      signal: summary.signal,
      reason: summary.reason,
      truncated: summary.truncated,
    };
  }

  function badge(status) {
    return el("span", { className: `badge badge-${status}`, dataset: { status } }, status);
  }

  function block(title, text, stream) {
    return el(
      "div",
      { className: "detail-block", dataset: { stream } },
      el("div", { className: "detail-block-head" }, title),
      el("pre", { className: "detail-pre" }, text),
    );
  }

  /**
   * The queue topic never carries code, input or output, and neither does the list. Controls exist in the DOM only
   * while `canAct()` (an admin key was accepted): `onStop(id)`, `onRerun(id)` and `onBulkCancel(ids)` do the work.
   * `headers()` are the list requests' (the admin's key, so that ids come back); `loadJob(id)` fetches the full job
   * for an admin's detail view (a promise of the job, or null).
   */
  class JobTable {
    constructor(ui, { canAct, headers, onStop, onRerun, onBulkCancel, loadJob }) {
      Object.assign(this, { ui, canAct, headers, onStop, onRerun, onBulkCancel, loadJob });
      this.query = { status: "all", language: "", q: "", sort: "createdAt", order: "desc", page: 1, pageSize: 25 };
      this.jobs = new Map(); // handle -> job, the page shown
      this.counts = null;
      this.total = 0;
      this.languages = [];
      this.loaded = false;
      this.seq = 0; // the latest list request: an older answer arriving late is dropped
      this.lastLoad = 0;
      this.timer = null;
      this.chosen = new Set(); // ids selected for a bulk cancel
      this.stopping = new Set(); // ids
      this.selected = null; // handle
      this.detailId = null; // id of the full job shown (admins)
      this.detail = null;
      this.renderQueued = false;
      this.bind();
    }

    bind() {
      const ui = this.ui;
      ui.detailClose.addEventListener("click", () => this.select(null));
      ui.filterLanguage.addEventListener("change", () => this.change({ language: ui.filterLanguage.value }));
      let typing = null;
      ui.filterId.addEventListener("input", () => {
        clearTimeout(typing);
        typing = setTimeout(() => this.change({ q: ui.filterId.value.trim().toLowerCase() }), 250);
      });
      for (const tab of ui.tabs) tab.addEventListener("click", () => this.change({ status: tab.dataset.status }));
      for (const th of ui.sortHeads) {
        th.querySelector("button").addEventListener("click", () => {
          const sort = th.dataset.sort;
          const flip = this.query.order === "desc" ? "asc" : "desc";
          const order = sort === this.query.sort ? flip : ASCENDING_FIRST.has(sort) ? "asc" : "desc";
          this.change({ sort, order });
        });
      }
      ui.pagePrev.addEventListener("click", () => this.change({ page: this.query.page - 1 }, false));
      ui.pageNext.addEventListener("click", () => this.change({ page: this.query.page + 1 }, false));
      ui.pageSize.addEventListener("change", () => this.change({ pageSize: Number(ui.pageSize.value) }));
      ui.selectPage.addEventListener("change", () => {
        for (const job of this.jobs.values()) {
          if (!job.id) continue;
          if (ui.selectPage.checked) this.chosen.add(job.id);
          else this.chosen.delete(job.id);
        }
        this.render();
      });
      // A destructive action over many jobs asks first, saying how many (the selection may span pages).
      ui.bulkCancel.addEventListener("click", () => this.chosen.size && this.confirmBulk(true));
      ui.bulkNo.addEventListener("click", () => this.confirmBulk(false));
      ui.bulkYes.addEventListener("click", () => {
        this.confirmBulk(false);
        if (this.chosen.size) this.onBulkCancel([...this.chosen]);
      });
      ui.bulkClear.addEventListener("click", () => this.clearChosen());
    }

    confirmBulk(asking) {
      const ui = this.ui;
      const count = this.chosen.size;
      ui.bulkQuestion.textContent = `Cancel or stop ${count} ${count === 1 ? "job" : "jobs"}?`;
      ui.bulkConfirm.hidden = !asking;
      ui.bulkCancel.hidden = asking;
      ui.bulkClear.hidden = asking;
      (asking ? ui.bulkNo : ui.bulkCancel).focus();
    }

    get hasActive() {
      for (const job of this.jobs.values()) if (isActive(job)) return true;
      return false;
    }

    /** A new query: back to its first page unless the page itself changed. */
    change(changes, firstPage = true) {
      Object.assign(this.query, changes, firstPage ? { page: 1 } : {});
      this.query.page = Math.max(1, this.query.page);
      this.load();
    }

    /** Fetch the page now. */
    async load() {
      const seq = ++this.seq;
      clearTimeout(this.timer);
      this.timer = null;
      this.lastLoad = Date.now();
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(this.query)) if (value !== "") params.set(key, String(value));
      let body;
      try {
        const response = await fetch(`/queue/jobs?${params}`, {
          headers: { Accept: "application/json", ...this.headers() },
        });
        body = await response.json();
        if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
      } catch (err) {
        if (seq !== this.seq) return;
        this.ui.listNote.textContent = `list unavailable (${err.message}); retrying`;
        this.timer = setTimeout(() => this.load(), RETRY_MS);
        return;
      }
      if (seq !== this.seq) return;
      const pages = Math.max(1, Math.ceil(body.total / body.pageSize));
      if (this.query.page > pages) {
        this.change({ page: pages }, false); // the last page emptied meanwhile
        return;
      }
      this.ui.listNote.textContent = "";
      const previous = this.jobs;
      this.jobs = new Map(body.jobs.map((summary) => [summary.handle, fromSummary(summary)]));
      for (const [handle, job] of this.jobs) {
        if (previous.get(handle)?.id && !job.id) job.id = previous.get(handle).id;
      }
      Object.assign(this, { counts: body.counts, total: body.total, languages: body.languages, loaded: true });
      this.render();
    }

    /** Something changed: fetch again soon (at most once per REFRESH_MS). */
    refresh() {
      if (this.timer) return;
      const wait = Math.max(0, this.lastLoad + REFRESH_MS - Date.now());
      this.timer = setTimeout(() => {
        this.timer = null;
        this.load();
      }, wait);
    }

    /** A fresh topic snapshot (first subscribe, or after a reconnect): the whole list again. */
    reset() {
      this.stopping.clear();
      if (!this.canAct()) {
        this.closeDetail();
        this.clearChosen();
      }
      this.load();
    }

    /** One lifecycle event: its row changes now if it is on the page; the list and counts follow. */
    apply(message) {
      const job = this.jobs.get(message.handle);
      if (job) {
        if (message.jobId) job.id = message.jobId;
        if (message.type === "running") {
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
            cpuTimeMs: message.cpuTimeMs ?? null,
            memoryPeakBytes: message.memoryPeakBytes ?? null,
          });
        }
        this.render();
      }
      if (FINAL.has(message.type) && message.jobId) {
        this.stopping.delete(message.jobId);
        if (message.jobId === this.detailId) this.loadDetail(message.jobId); // its output is complete now
      }
      this.refresh();
    }

    markStopping(id, busy) {
      if (busy) this.stopping.add(id);
      else this.stopping.delete(id);
      this.render();
    }

    clearChosen() {
      this.chosen.clear();
      this.render();
    }

    select(handle) {
      this.selected = handle;
      const job = handle ? this.jobs.get(handle) : null;
      if (job && job.id && this.canAct()) this.loadDetail(job.id);
      else this.closeDetail();
      this.render();
    }

    /** An admin opens a job by id (a #job=<id> link, a run again): its row if the page has it, else the job alone. */
    openId(id) {
      const row = [...this.jobs.values()].find((job) => job.id === id);
      this.selected = row ? row.handle : null;
      this.loadDetail(id);
      this.render();
    }

    /** The #job=<id> in the address bar, if any. */
    static hashId() {
      const match = location.hash.match(JOB_HASH);
      return match ? match[1] : null;
    }

    loadDetail(id) {
      if (this.detailId !== id) this.detail = null;
      this.detailId = id;
      if (location.hash !== `#job=${id}`) history.replaceState(null, "", `#job=${id}`);
      this.loadJob(id).then((full) => {
        if (this.detailId !== id) return;
        this.detail = full || { id, missing: true };
        this.render();
      });
    }

    closeDetail() {
      // A #job= link stays in the address bar until an admin has opened it.
      if (this.detailId && JOB_HASH.test(location.hash)) {
        history.replaceState(null, "", location.pathname + location.search);
      }
      this.detailId = null;
      this.detail = null;
    }

    /** Coalesce renders to one per animation frame: a burst of events redraws once. */
    render() {
      if (this.renderQueued) return;
      this.renderQueued = true;
      requestAnimationFrame(() => {
        this.renderQueued = false;
        this.renderControls();
        this.renderTable();
        this.renderDetail();
      });
    }

    actionButtons(job) {
      if (!this.canAct() || !job.id) return [];
      const busy = this.stopping.has(job.id);
      const button = (action, text, onclick, extra = "") =>
        el(
          "button",
          {
            type: "button",
            className: `btn btn-small action ${extra}`,
            dataset: { action, jobId: job.id },
            disabled: action === "stop" && busy,
            onclick: (event) => {
              event.stopPropagation();
              onclick();
            },
          },
          text,
        );
      return [
        isActive(job)
          ? button("stop", busy ? "…" : job.status === "queued" ? "Cancel" : "Stop", () => this.onStop(job.id),
              "btn-danger")
          : null,
        button("rerun", "Run again", () => this.onRerun(job.id)),
      ].filter(Boolean);
    }

    renderControls() {
      const ui = this.ui;
      const { status, sort, order, page, pageSize } = this.query;
      for (const tab of ui.tabs) {
        tab.setAttribute("aria-selected", String(tab.dataset.status === status));
        const count = tab.querySelector(".tab-count");
        count.textContent = this.counts ? fmtNumber(this.counts[tab.dataset.status]) : "–";
      }
      for (const th of ui.sortHeads) {
        th.setAttribute("aria-sort", th.dataset.sort !== sort ? "none" : order === "asc" ? "ascending" : "descending");
      }
      const pages = Math.max(1, Math.ceil(this.total / pageSize));
      const jobs = `${fmtNumber(this.total)} ${this.total === 1 ? "job" : "jobs"}`;
      ui.pageInfo.textContent = `page ${page} of ${pages} · ${jobs}`;
      ui.pagePrev.disabled = page <= 1;
      ui.pageNext.disabled = page >= pages;
      ui.pageSize.value = String(pageSize);
      this.syncLanguages();
      const admin = this.canAct();
      if (!admin) this.chosen.clear();
      ui.bulk.hidden = !admin || this.chosen.size === 0;
      ui.bulkCount.textContent = `${this.chosen.size} selected`;
      ui.selectHead.hidden = !admin;
      ui.actionsHead.hidden = !admin;
      const ids = [...this.jobs.values()].filter((job) => job.id).map((job) => job.id);
      ui.selectPage.checked = ids.length > 0 && ids.every((id) => this.chosen.has(id));
    }

    renderTable() {
      const ui = this.ui;
      const admin = this.canAct();
      const shown = [...this.jobs.values()];
      ui.body.replaceChildren(
        ...shown.map((job) =>
          el(
            "tr",
            {
              dataset: { handle: job.handle, status: job.status, ...(job.id ? { jobId: job.id } : {}) },
              className: job.handle === this.selected ? "selected" : "",
              tabindex: 0,
              onclick: () => this.select(job.handle),
              onkeydown: (event) => event.key === "Enter" && this.select(job.handle),
            },
            admin ? el("td", { className: "select-col" }, this.checkbox(job)) : null,
            job.id
              ? el("td", { className: "mono", title: job.id }, job.id.slice(0, 12))
              : el("td", { className: "mono muted", title: "display handle (only admins see job ids)" }, job.handle),
            el("td", {}, badge(job.status)),
            el("td", {}, job.language || "–"),
            el("td", { className: "num" }, job.priority ?? "–"),
            el("td", { className: "num" }, fmtMs(liveWait(job))),
            el("td", { className: "num" }, fmtMs(liveRun(job))),
            el("td", { className: "mono muted" }, fmtClock(job.createdAt)),
            admin ? el("td", { className: "actions-col" }, this.actionButtons(job)) : null,
          ),
        ),
      );
      const all = this.counts ? this.counts.all : 0;
      ui.empty.hidden = shown.length > 0 || !this.loaded;
      ui.empty.textContent = all || this.query.language || this.query.q ? "No jobs match." : "No jobs yet.";
      ui.count.textContent = this.loaded ? `(${fmtNumber(this.total)})` : "";
    }

    checkbox(job) {
      if (!job.id) return null;
      return el("input", {
        type: "checkbox",
        dataset: { role: "select", jobId: job.id },
        "aria-label": `Select job ${job.id.slice(0, 12)}`,
        checked: this.chosen.has(job.id),
        onclick: (event) => event.stopPropagation(),
        onchange: (event) => {
          if (event.target.checked) this.chosen.add(job.id);
          else this.chosen.delete(job.id);
          this.render();
        },
      });
    }

    syncLanguages() {
      const select = this.ui.filterLanguage;
      const chosen = this.query.language;
      const languages = [...new Set([...this.languages, ...(chosen ? [chosen] : [])])].sort();
      const current = [...select.options].slice(1).map((o) => o.value);
      if (languages.join() !== current.join()) {
        select.replaceChildren(
          el("option", { value: "" }, "all languages"),
          ...languages.map((language) => el("option", { value: language }, language)),
        );
      }
      select.value = chosen;
    }

    renderDetail() {
      const ui = this.ui;
      const row = this.selected ? this.jobs.get(this.selected) : null;
      const full = this.detail && !this.detail.missing ? this.detail : null;
      const job = row || (full ? fromSummary({ ...full, handle: null }) : null);
      const shown = Boolean(job || this.detailId);
      ui.detailList.hidden = !shown;
      ui.detailEmpty.hidden = shown;
      ui.detailClose.hidden = !shown;
      ui.detailFull.hidden = !full;
      if (!job) {
        ui.detailActions.replaceChildren();
        ui.detailFull.replaceChildren();
        ui.detailList.replaceChildren(
          ...(this.detailId
            ? [el("dt", {}, "Job id"), el("dd", { className: "wrap" }, this.detailId),
               el("dt", {}, "Job"), el("dd", {}, this.detail ? "not found (evicted, or never existed)" : "loading…")]
            : []),
        );
        return;
      }
      const id = job.id || this.detailId;
      const rows = [
        id
          ? ["Job id", el("a", { className: "mono wrap", href: `#job=${id}`, dataset: { role: "job-link" } }, id)]
          : ["Handle", el("span", { className: "mono" }, job.handle)],
        ["Status", badge(job.status)],
        ...(full && full.submittedBy ? [["Submitted by", full.submittedBy]] : []),
        ["Language", job.language || "–"],
        ["Priority", job.priority ?? "–"],
        ["Created", fmtClock(job.createdAt)],
        ["Started", fmtClock(job.startedAt)],
        ["Finished", fmtClock(job.finishedAt)],
        ["Wait", fmtMs(liveWait(job))],
        ["Run", fmtMs(liveRun(job))],
        ["Compile", fmtMs(job.compileTimeMs)],
        ["CPU", fmtMs(job.cpuTimeMs)],
        ["Memory peak", job.memoryPeakBytes == null ? "–" : `${(job.memoryPeakBytes / 1048576).toFixed(1)} MiB`],
        ["Exit code", job.exitCode ?? "–"],
        ["Signal", job.signal || "–"],
        ["Reason", job.reason || "–"],
        ["Truncated", job.truncated ? "yes" : "no"],
      ];
      ui.detailList.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
      ui.detailActions.replaceChildren(...this.actionButtons({ ...job, id }));
      ui.detailFull.replaceChildren(
        ...(full
          ? [
              block("Code", full.code, "code"),
              block("Input", full.stdin || "(none)", "stdin"),
              block("Output", full.stdout || "(none)", "stdout"),
              block("Errors", full.stderr || "(none)", full.stderr ? "stderr" : "empty"),
              full.compileOutput ? block("Compiler output", full.compileOutput, "compile") : null,
            ].filter(Boolean)
          : []),
      );
    }
  }

  return { JobTable, FINAL, STATUSES };
})();

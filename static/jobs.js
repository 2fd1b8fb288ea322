/* The dashboard's job table: a model fed by queue-topic events, rendered with filters and a detail view.
 * Rows are keyed by display handle: a viewer never gets a job's id (the id is the capability to read it); an
 * admin gets ids too, and a full job view (code, input, output) in the detail panel, linkable as #job=<id>. */
"use strict";

const Jobs = (() => {
  const { el, fmtMs, fmtClock } = Conveyor;
  const FINAL = new Set(["completed", "failed", "timeout", "cancelled"]);
  const MAX_JOBS = 500;
  const MAX_ROWS = 200;

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
   * The queue topic never carries code, input or output, so neither does this table. Action buttons exist in the
   * DOM only while `canAct()` (an admin key was accepted); `onStop(id)` sends the request. `loadJob(id)` fetches
   * the full job for an admin's detail view (a promise of the job, or null).
   */
  class JobTable {
    constructor(ui, { canAct, onStop, loadJob }) {
      this.ui = ui;
      this.canAct = canAct;
      this.onStop = onStop;
      this.loadJob = loadJob;
      this.jobs = new Map(); // handle -> job
      this.stopping = new Set(); // ids
      this.selected = null; // handle
      this.detailId = null; // id of the full job shown (admins)
      this.detail = null;
      this.renderQueued = false;
      ui.detailClose.addEventListener("click", () => this.select(null));
      for (const input of [ui.filterStatus, ui.filterLanguage]) input.addEventListener("change", () => this.render());
      ui.filterId.addEventListener("input", () => this.render());
    }

    get hasActive() {
      for (const job of this.jobs.values()) if (isActive(job)) return true;
      return false;
    }

    /** Replace everything with a fresh snapshot (first subscribe, or after a reconnect). */
    reset(summaries) {
      this.jobs = new Map(summaries.map((summary) => [summary.handle, fromSummary(summary)]));
      this.stopping.clear();
      if (!this.canAct()) this.closeDetail();
      this.render();
    }

    /** Apply one lifecycle event: queued, running or a final status. */
    apply(message) {
      let job = this.jobs.get(message.handle);
      if (!job) {
        job = { handle: message.handle, id: null, status: "queued", language: null, priority: null, createdAt: null };
        this.jobs.set(job.handle, job);
      }
      if (message.jobId) job.id = message.jobId;
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
          cpuTimeMs: message.cpuTimeMs ?? null,
          memoryPeakBytes: message.memoryPeakBytes ?? null,
          language: message.language ?? job.language,
        });
        this.stopping.delete(job.id);
        if (job.id && job.id === this.detailId) this.loadDetail(job.id); // its output is complete now
      }
      this.trim();
      this.render();
    }

    markStopping(id, busy) {
      if (busy) this.stopping.add(id);
      else this.stopping.delete(id);
      this.render();
    }

    trim() {
      for (const [id, job] of this.jobs) {
        if (this.jobs.size <= MAX_JOBS) break;
        if (FINAL.has(job.status) && id !== this.selected) this.jobs.delete(id);
      }
    }

    select(handle) {
      this.selected = handle;
      const job = handle ? this.jobs.get(handle) : null;
      if (job && job.id && this.canAct()) this.loadDetail(job.id);
      else this.closeDetail();
      this.render();
    }

    /** An admin opens a job by id (a #job=<id> link): its row if the table has it, else the job alone. */
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
        this.renderTable();
        this.renderDetail();
      });
    }

    actionButton(job) {
      if (!this.canAct() || !job.id || !isActive(job)) return null;
      const busy = this.stopping.has(job.id);
      return el(
        "button",
        {
          type: "button",
          className: "btn btn-small btn-danger action",
          dataset: { action: "stop", jobId: job.id },
          disabled: busy,
          onclick: (event) => {
            event.stopPropagation();
            this.onStop(job.id);
          },
        },
        busy ? "…" : job.status === "queued" ? "Cancel" : "Stop",
      );
    }

    matches(job) {
      const { filterStatus, filterLanguage, filterId } = this.ui;
      const status = filterStatus.value;
      if (status === "active" ? !isActive(job) : status && job.status !== status) return false;
      if (filterLanguage.value && job.language !== filterLanguage.value) return false;
      const needle = filterId.value.trim().toLowerCase();
      return !needle || job.handle.includes(needle) || Boolean(job.id && job.id.includes(needle));
    }

    renderTable() {
      const ui = this.ui;
      const admin = this.canAct();
      this.syncLanguages();
      // Active jobs first (the ones an admin may act on), then newest first.
      const all = [...this.jobs.values()];
      const shown = all
        .filter((job) => this.matches(job))
        .sort((a, b) => isActive(b) - isActive(a) || (b.createdAt || 0) - (a.createdAt || 0))
        .slice(0, MAX_ROWS);
      ui.actionsHead.hidden = !admin;
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
            job.id
              ? el("td", { className: "mono", title: job.id }, job.id.slice(0, 12))
              : el("td", { className: "mono muted", title: "display handle (only admins see job ids)" }, job.handle),
            el("td", {}, badge(job.status)),
            el("td", {}, job.language || "–"),
            el("td", { className: "num" }, job.priority ?? "–"),
            el("td", { className: "num" }, fmtMs(liveWait(job))),
            el("td", { className: "num" }, fmtMs(liveRun(job))),
            el("td", { className: "mono muted" }, fmtClock(job.createdAt)),
            admin ? el("td", { className: "actions-col" }, this.actionButton(job)) : null,
          ),
        ),
      );
      ui.empty.hidden = shown.length > 0;
      ui.empty.textContent = all.length ? "No jobs match the filters." : "No jobs yet.";
      ui.count.textContent = shown.length === all.length ? `(${all.length})` : `(${shown.length} of ${all.length})`;
    }

    syncLanguages() {
      const select = this.ui.filterLanguage;
      const languages = [...new Set([...this.jobs.values()].map((j) => j.language).filter(Boolean))].sort();
      const current = [...select.options].slice(1).map((o) => o.value);
      if (languages.join() === current.join()) return;
      const chosen = select.value;
      select.replaceChildren(
        el("option", { value: "" }, "all languages"),
        ...languages.map((language) => el("option", { value: language }, language)),
      );
      select.value = languages.includes(chosen) ? chosen : "";
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
      ui.detailActions.replaceChildren(...[this.actionButton({ ...job, id })].filter(Boolean));
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

  return { JobTable, FINAL };
})();

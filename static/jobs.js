/* The dashboard's job table: a model fed by queue-topic events, rendered with filters and a detail view. */
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

  /**
   * Metadata only: the queue topic never carries code, input or output, so neither does this table. Action
   * buttons exist in the DOM only while `canAct()` (an admin key was accepted); `onStop(id)` sends the request.
   */
  class JobTable {
    constructor(ui, { canAct, onStop }) {
      this.ui = ui;
      this.canAct = canAct;
      this.onStop = onStop;
      this.jobs = new Map();
      this.stopping = new Set();
      this.selected = null;
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
      this.jobs = new Map(summaries.map((summary) => [summary.id, fromSummary(summary)]));
      this.stopping.clear();
      this.render();
    }

    /** Apply one lifecycle event: queued, running or a final status. */
    apply(message) {
      let job = this.jobs.get(message.jobId);
      if (!job) {
        job = { id: message.jobId, status: "queued", language: null, priority: null, createdAt: null };
        this.jobs.set(job.id, job);
      }
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

    select(id) {
      this.selected = id;
      this.render();
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
      if (!this.canAct() || !isActive(job)) return null;
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
      return !needle || job.id.toLowerCase().includes(needle);
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
              dataset: { jobId: job.id, status: job.status },
              className: job.id === this.selected ? "selected" : "",
              tabindex: 0,
              onclick: () => this.select(job.id),
              onkeydown: (event) => event.key === "Enter" && this.select(job.id),
            },
            el("td", { className: "mono", title: job.id }, job.id.slice(0, 12)),
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
      const job = this.selected ? this.jobs.get(this.selected) : null;
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
        ["CPU", fmtMs(job.cpuTimeMs)],
        ["Memory peak", job.memoryPeakBytes == null ? "–" : `${(job.memoryPeakBytes / 1048576).toFixed(1)} MiB`],
        ["Exit code", job.exitCode ?? "–"],
        ["Signal", job.signal || "–"],
        ["Reason", job.reason || "–"],
        ["Truncated", job.truncated ? "yes" : "no"],
      ];
      ui.detailList.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
      ui.detailActions.replaceChildren(...[this.actionButton(job)].filter(Boolean));
    }
  }

  return { JobTable, FINAL };
})();

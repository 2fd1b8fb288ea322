/* The dashboard's job list: pages of GET /queue/jobs (sorted, filtered, a tab per status with its count), kept live
 * by queue-topic events. Rows are keyed by display handle: a viewer never gets a job's id (the id is the capability
 * to read it); an admin gets ids too, the whole job in the detail panel (jobdetail.js), and the controls: Cancel/Stop,
 * Run again, and a selection to cancel in bulk (jobselection.js). A row's job is a JobRecord (jobrecord.js). */
"use strict";

/**
 * The queue topic never carries code, input or output, and neither does the list. Controls exist in the DOM only
 * while `canAct()` (an admin key was accepted): `onStop(id)`, `onRerun(id)` and `onBulkCancel(ids)` do the work.
 * `headers()` are the list requests' (the admin's key, so that ids come back); `loadJob(id)` fetches the full job
 * for an admin's detail view (a promise of the job, or null).
 */
class JobTable {
  constructor(ui, { canAct, headers, onStop, onRerun, onBulkCancel, loadJob }) {
    Object.assign(this, { ui, canAct, headers, onStop, onRerun });
    this.query = { status: "all", language: "", q: "", sort: "createdAt", order: "desc", page: 1, pageSize: 25 };
    this.jobs = new Map(); // handle -> job, the page shown
    this.counts = null;
    this.total = 0;
    this.languages = [];
    this.loaded = false;
    this.seq = 0; // the latest list request: an older answer arriving late is dropped
    this.lastLoad = 0;
    this.timer = null;
    this.stopping = new Set(); // ids
    this.renderQueued = false;
    const onChange = () => this.render();
    this.selection = new JobSelection(ui, { shownIds: () => this.shownIds(), onBulkCancel, onChange });
    this.detail = new JobDetail(ui, {
      rows: () => this.jobs,
      canAct,
      loadJob,
      buttons: (job) => this.actionButtons(job),
      onChange,
    });
    this.bind();
  }

  bind() {
    const ui = this.ui;
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
        const order = sort === this.query.sort ? flip : JobTable.ASCENDING_FIRST.has(sort) ? "asc" : "desc";
        this.change({ sort, order });
      });
    }
    ui.pagePrev.addEventListener("click", () => this.change({ page: this.query.page - 1 }, false));
    ui.pageNext.addEventListener("click", () => this.change({ page: this.query.page + 1 }, false));
    ui.pageSize.addEventListener("change", () => this.change({ pageSize: Number(ui.pageSize.value) }));
  }

  get hasActive() {
    for (const job of this.jobs.values()) if (JobRecord.isActive(job)) return true;
    return false;
  }

  /** The ids of the jobs on the page (an admin's; a viewer's rows have none). */
  shownIds() {
    return [...this.jobs.values()].filter((job) => job.id).map((job) => job.id);
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
      this.timer = setTimeout(() => this.load(), JobTable.RETRY_MS);
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
    this.jobs = new Map(body.jobs.map((summary) => [summary.handle, JobRecord.fromSummary(summary)]));
    for (const [handle, job] of this.jobs) {
      if (previous.get(handle)?.id && !job.id) job.id = previous.get(handle).id;
    }
    Object.assign(this, { counts: body.counts, total: body.total, languages: body.languages, loaded: true });
    this.render();
  }

  /** Something changed: fetch again soon (at most once per REFRESH_MS). */
  refresh() {
    if (this.timer) return;
    const wait = Math.max(0, this.lastLoad + JobTable.REFRESH_MS - Date.now());
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
      JobRecord.update(job, message);
      this.render();
    }
    if (JobRecord.FINAL.has(message.type) && message.jobId) {
      this.stopping.delete(message.jobId);
      if (message.jobId === this.detail.id) this.detail.load(message.jobId); // its output is complete now
    }
    this.refresh();
  }

  markStopping(id, busy) {
    if (busy) this.stopping.add(id);
    else this.stopping.delete(id);
    this.render();
  }

  clearChosen() {
    this.selection.clear();
  }

  /** An admin opens a job by id (a #job=<id> link, a run again). */
  openId(id) {
    this.detail.openId(id);
  }

  closeDetail() {
    this.detail.close();
  }

  /** Coalesce renders to one per animation frame: a burst of events redraws once. */
  render() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.renderControls();
      this.renderTable();
      this.detail.render();
    });
  }

  actionButtons(job) {
    if (!this.canAct() || !job.id) return [];
    const busy = this.stopping.has(job.id);
    const button = (action, text, onclick, extra = "") =>
      Conveyor.el(
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
      JobRecord.isActive(job)
        ? button("stop", busy ? "…" : job.status === "queued" ? "Cancel" : "Stop", () => this.onStop(job.id),
            "btn-danger")
        : null,
      button("rerun", "Run again", () => this.onRerun(job.id)),
    ].filter(Boolean);
  }

  renderControls() {
    const ui = this.ui;
    const { fmtNumber } = Conveyor;
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
    this.selection.render(admin);
    ui.actionsHead.hidden = !admin;
  }

  renderTable() {
    const { el, fmtMs, fmtClock, fmtNumber } = Conveyor;
    const ui = this.ui;
    const admin = this.canAct();
    const shown = [...this.jobs.values()];
    ui.body.replaceChildren(
      ...shown.map((job) =>
        el(
          "tr",
          {
            dataset: { handle: job.handle, status: job.status, ...(job.id ? { jobId: job.id } : {}) },
            className: job.handle === this.detail.selected ? "selected" : "",
            tabindex: 0,
            onclick: () => this.detail.select(job.handle),
            onkeydown: (event) => event.key === "Enter" && this.detail.select(job.handle),
          },
          admin ? el("td", { className: "select-col" }, this.selection.checkbox(job)) : null,
          job.id
            ? el("td", { className: "mono", title: job.id }, job.id.slice(0, 12))
            : el("td", { className: "mono muted", title: "display handle (only admins see job ids)" }, job.handle),
          el("td", {}, JobRecord.badge(job.status)),
          el("td", {}, job.language || "–"),
          el("td", { className: "num" }, job.priority ?? "–"),
          el("td", { className: "num" }, fmtMs(JobRecord.liveWait(job))),
          el("td", { className: "num" }, fmtMs(JobRecord.liveRun(job))),
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

  syncLanguages() {
    const select = this.ui.filterLanguage;
    const chosen = this.query.language;
    const languages = [...new Set([...this.languages, ...(chosen ? [chosen] : [])])].sort();
    const current = [...select.options].slice(1).map((o) => o.value);
    if (languages.join() !== current.join()) {
      select.replaceChildren(
        Conveyor.el("option", { value: "" }, "all languages"),
        ...languages.map((language) => Conveyor.el("option", { value: language }, language)),
      );
    }
    select.value = chosen;
  }
}

// While events arrive the list is fetched again at most this often: a busy queue costs one request per 2 s of the
// read bucket (RATE_LIMIT_READ_REQUESTS), whatever its rate; rows on the page change live in between.
JobTable.REFRESH_MS = 2000;
JobTable.RETRY_MS = 5000;
// Text columns sort A to Z first; figures and times largest or newest first.
JobTable.ASCENDING_FIRST = new Set(["language", "status"]);

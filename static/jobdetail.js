/* The dashboard's job detail panel: the selected row's metadata for anyone; for an admin the whole job (code, input,
   output) fetched by id, with its controls, linkable as #job=<id>. */
"use strict";

class JobDetail {
  /**
   * @param {{detailList: HTMLElement, detailEmpty: HTMLElement, detailActions: HTMLElement, detailFull: HTMLElement,
   *          detailClose: HTMLButtonElement}} ui
   * @param {{rows: () => Map<string, object>, canAct: () => boolean, loadJob: (id: string) => Promise<object|null>,
   *          buttons: (job: object) => HTMLElement[], onChange: () => void}} parts `rows` the page's jobs by handle;
   *   `buttons` a job's controls; `onChange` redraws the table
   */
  constructor(ui, { rows, canAct, loadJob, buttons, onChange }) {
    Object.assign(this, { ui, rows, canAct, loadJob, buttons, onChange });
    this.selected = null; // handle
    this.id = null; // id of the full job shown (admins)
    this.full = null;
    ui.detailClose.addEventListener("click", () => this.select(null));
  }

  /** The #job=<id> in the address bar, if any. */
  static hashId() {
    const match = location.hash.match(JobDetail.HASH);
    return match ? match[1] : null;
  }

  select(handle) {
    this.selected = handle;
    const job = handle ? this.rows().get(handle) : null;
    if (job && job.id && this.canAct()) this.load(job.id);
    else this.close();
    this.onChange();
  }

  /** An admin opens a job by id (a #job=<id> link, a run again): its row if the page has it, else the job alone. */
  openId(id) {
    const row = [...this.rows().values()].find((job) => job.id === id);
    this.selected = row ? row.handle : null;
    this.load(id);
    this.onChange();
  }

  load(id) {
    if (this.id !== id) this.full = null;
    this.id = id;
    if (location.hash !== `#job=${id}`) history.replaceState(null, "", `#job=${id}`);
    this.loadJob(id).then((full) => {
      if (this.id !== id) return;
      this.full = full || { id, missing: true };
      this.onChange();
    });
  }

  close() {
    // A #job= link stays in the address bar until an admin has opened it.
    if (this.id && JobDetail.HASH.test(location.hash)) {
      history.replaceState(null, "", location.pathname + location.search);
    }
    this.id = null;
    this.full = null;
  }

  render() {
    const ui = this.ui;
    const row = this.selected ? this.rows().get(this.selected) : null;
    const full = this.full && !this.full.missing ? this.full : null;
    const job = row || (full ? JobRecord.fromSummary({ ...full, handle: null }) : null);
    const shown = Boolean(job || this.id);
    ui.detailList.hidden = !shown;
    ui.detailEmpty.hidden = shown;
    ui.detailClose.hidden = !shown;
    ui.detailFull.hidden = !full;
    if (!job) {
      this.renderMissing();
      return;
    }
    const id = job.id || this.id;
    const { el } = Conveyor;
    ui.detailList.replaceChildren(
      ...this.terms(job, id, full).flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]),
    );
    ui.detailActions.replaceChildren(...this.buttons({ ...job, id }));
    ui.detailFull.replaceChildren(
      ...(full
        ? [
            JobDetail.block("Code", full.code, "code"),
            JobDetail.block("Input", full.stdin || "(none)", "stdin"),
            JobDetail.block("Output", full.stdout || "(none)", "stdout"),
            JobDetail.block("Errors", full.stderr || "(none)", full.stderr ? "stderr" : "empty"),
            full.compileOutput ? JobDetail.block("Compiler output", full.compileOutput, "compile") : null,
          ].filter(Boolean)
        : []),
    );
  }

  /** No job to show: the id asked for, while it loads or once it is known to be gone; else nothing. */
  renderMissing() {
    const { el } = Conveyor;
    const ui = this.ui;
    ui.detailActions.replaceChildren();
    ui.detailFull.replaceChildren();
    ui.detailList.replaceChildren(
      ...(this.id
        ? [el("dt", {}, "Job id"), el("dd", { className: "wrap" }, this.id),
           el("dt", {}, "Job"), el("dd", {}, this.full ? "not found (evicted, or never existed)" : "loading…")]
        : []),
    );
  }

  /** The metadata list as [term, value] pairs. */
  terms(job, id, full) {
    const { el, fmtMs, fmtClock } = Conveyor;
    return [
      id
        ? ["Job id", el("a", { className: "mono wrap", href: `#job=${id}`, dataset: { role: "job-link" } }, id)]
        : ["Handle", el("span", { className: "mono" }, job.handle)],
      ["Status", JobRecord.badge(job.status)],
      ...(full && full.submittedBy ? [["Submitted by", full.submittedBy]] : []),
      ["Language", job.language || "–"],
      ["Priority", job.priority ?? "–"],
      ["Created", fmtClock(job.createdAt)],
      ["Started", fmtClock(job.startedAt)],
      ["Finished", fmtClock(job.finishedAt)],
      ["Wait", fmtMs(JobRecord.liveWait(job))],
      ["Run", fmtMs(JobRecord.liveRun(job))],
      ["Compile", fmtMs(job.compileTimeMs)],
      ["CPU", fmtMs(job.cpuTimeMs)],
      ["Memory peak", job.memoryPeakBytes == null ? "–" : `${(job.memoryPeakBytes / 1048576).toFixed(1)} MiB`],
      ["Exit code", job.exitCode ?? "–"],
      ["Signal", job.signal || "–"],
      ["Reason", job.reason || "–"],
      ["Truncated", job.truncated ? "yes" : "no"],
    ];
  }

  static block(title, text, stream) {
    const { el } = Conveyor;
    return el(
      "div",
      { className: "detail-block", dataset: { stream } },
      el("div", { className: "detail-block-head" }, title),
      el("pre", { className: "detail-pre" }, text),
    );
  }
}

JobDetail.HASH = /^#job=([0-9a-f]{32})$/;

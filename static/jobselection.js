/* The dashboard's selection of jobs to cancel in bulk (an admin's): a checkbox per row with an id, one for the page,
   and the bulk bar that says how many are chosen and asks before cancelling them. The selection may span pages. */
"use strict";

class JobSelection {
  /**
   * @param {{selectHead: HTMLElement, selectPage: HTMLInputElement, bulk: HTMLElement, bulkCount: HTMLElement,
   *          bulkCancel: HTMLButtonElement, bulkClear: HTMLButtonElement, bulkConfirm: HTMLElement,
   *          bulkQuestion: HTMLElement, bulkYes: HTMLButtonElement, bulkNo: HTMLButtonElement}} ui
   * @param {{shownIds: () => string[], onBulkCancel: (ids: string[]) => void, onChange: () => void}} parts
   *   `shownIds` the ids of the jobs on the page; `onChange` redraws the table
   */
  constructor(ui, { shownIds, onBulkCancel, onChange }) {
    Object.assign(this, { ui, shownIds, onBulkCancel, onChange });
    this.chosen = new Set(); // ids selected for a bulk cancel
    this.bind();
  }

  get size() {
    return this.chosen.size;
  }

  bind() {
    const ui = this.ui;
    ui.selectPage.addEventListener("change", () => {
      for (const id of this.shownIds()) {
        if (ui.selectPage.checked) this.chosen.add(id);
        else this.chosen.delete(id);
      }
      this.onChange();
    });
    // A destructive action over many jobs asks first, saying how many (the selection may span pages).
    ui.bulkCancel.addEventListener("click", () => this.chosen.size && this.confirm(true));
    ui.bulkNo.addEventListener("click", () => this.confirm(false));
    ui.bulkYes.addEventListener("click", () => {
      this.confirm(false);
      if (this.chosen.size) this.onBulkCancel([...this.chosen]);
    });
    ui.bulkClear.addEventListener("click", () => this.clear());
  }

  confirm(asking) {
    const ui = this.ui;
    const count = this.chosen.size;
    ui.bulkQuestion.textContent = `Cancel or stop ${count} ${count === 1 ? "job" : "jobs"}?`;
    ui.bulkConfirm.hidden = !asking;
    ui.bulkCancel.hidden = asking;
    ui.bulkClear.hidden = asking;
    (asking ? ui.bulkNo : ui.bulkCancel).focus();
  }

  clear() {
    this.chosen.clear();
    this.onChange();
  }

  /** The row's checkbox, for a job whose id is known. */
  checkbox(job) {
    if (!job.id) return null;
    return Conveyor.el("input", {
      type: "checkbox",
      dataset: { role: "select", jobId: job.id },
      "aria-label": `Select job ${job.id.slice(0, 12)}`,
      checked: this.chosen.has(job.id),
      onclick: (event) => event.stopPropagation(),
      onchange: (event) => {
        if (event.target.checked) this.chosen.add(job.id);
        else this.chosen.delete(job.id);
        this.onChange();
      },
    });
  }

  /** The bulk bar and the page's checkbox; nothing stays chosen for a viewer. */
  render(admin) {
    const ui = this.ui;
    if (!admin) this.chosen.clear();
    ui.bulk.hidden = !admin || this.chosen.size === 0;
    ui.bulkCount.textContent = `${this.chosen.size} selected`;
    ui.selectHead.hidden = !admin;
    const ids = this.shownIds();
    ui.selectPage.checked = ids.length > 0 && ids.every((id) => this.chosen.has(id));
  }
}

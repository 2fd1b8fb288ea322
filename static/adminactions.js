/* The dashboard's admin actions on jobs: the whole job (GET /queue/job/<id>), Stop or Cancel (a `stop` message on
   the socket), Run again (POST .../rerun) and a bulk cancel (POST /queue/jobs/cancel), each said in a toast. */
"use strict";

class AdminActions {
  /**
   * @param {{bulkCancel: HTMLButtonElement}} ui the bulk bar's Cancel button, disabled while its requests run
   * @param {{canAct: () => boolean, socket: Conveyor.Socket, table: JobTable, toast: Toast, maxBatchSize: number}}
   *   parts `maxBatchSize` the server's limit of ids per request
   */
  constructor(ui, { canAct, socket, table, toast, maxBatchSize }) {
    Object.assign(this, { ui, canAct, socket, table, toast, maxBatchSize });
  }

  /** The full job, for an admin. */
  async loadJob(id) {
    if (!this.canAct()) return null;
    try {
      const response = await fetch(`/queue/job/${encodeURIComponent(id)}`, {
        headers: { Accept: "application/json", ...AdminSession.headers() },
      });
      return response.ok ? await response.json() : null;
    } catch (err) {
      return null;
    }
  }

  /** POST as the admin; the JSON answer, or an Error with the server's message. */
  async post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json", ...AdminSession.headers() },
      body: JSON.stringify(body ?? {}),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.message || `HTTP ${response.status}`);
    return answer;
  }

  stop(id) {
    if (!this.canAct()) return;
    if (this.socket.send({ type: "stop", jobId: id })) {
      this.table.markStopping(id, true);
    } else {
      this.toast.show("Not connected: the stop was not sent.");
    }
  }

  /** Run again: the job's submission as a new job of the admin's, opened in the detail panel. */
  async rerun(id) {
    if (!this.canAct()) return;
    try {
      const answer = await this.post(`/queue/job/${encodeURIComponent(id)}/rerun`);
      this.toast.show(`Queued again as ${answer.jobId.slice(0, 12)}.`, "ok");
      this.table.openId(answer.jobId);
      this.table.load();
    } catch (err) {
      this.toast.show(`Not run again: ${err.message}`);
    }
  }

  /**
   * Cancel the selected jobs (queued ones cancelled, running ones stopped): in requests of at most MAX_BATCH_SIZE
   * ids (the server's limit), one answer per id, summed up.
   */
  async cancel(ids) {
    if (!this.canAct()) return;
    this.ui.bulkCancel.disabled = true;
    const size = Math.max(1, this.maxBatchSize || 20);
    const results = [];
    let failure = null;
    try {
      for (let start = 0; start < ids.length; start += size) {
        const answer = await this.post("/queue/jobs/cancel", { ids: ids.slice(start, start + size) });
        results.push(...answer.results);
      }
    } catch (err) {
      failure = err;
    } finally {
      this.ui.bulkCancel.disabled = false;
    }
    const done = results.filter((r) => r.status === 200).length;
    const refused = results.filter((r) => r.status !== 200);
    const why = [...new Set(refused.map((r) => (r.jobStatus ? `already ${r.jobStatus}` : r.error)))].join(", ");
    const not = refused.length ? `; ${refused.length} not (${why})` : "";
    if (failure) {
      const left = ids.length - results.length;
      const sent = done ? `${done} cancelled${not}; ` : "Nothing cancelled: ";
      this.toast.show(`${sent}${left} not sent: ${failure.message}`);
    } else {
      this.toast.show(`${done} cancelled${not}.`, refused.length ? "" : "ok");
      this.table.clearChosen();
    }
    this.table.load();
  }
}

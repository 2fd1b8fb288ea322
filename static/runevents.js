/* What the server's WebSocket messages about the run shown do to the editor: its id once accepted, its place in
   line, the clock, its output, test verdicts, the final status and figures, and errors. */
"use strict";

class RunEvents {
  /**
   * @param {{output: HTMLElement, testsSummary: HTMLElement}} fields
   * @param {{job: object, resumed: string | null, run: Run, liveInput: LiveInput, shareLinks: ShareLinks,
   *          lastRun: LastRun, testCases: TestCases, quota: QuotaHint, pane: OutputPane, status: StatusLine,
   *          onChange: () => void}} parts `job` the run shown; `resumed` the run a reload took back;
   *   `onChange` the editor's controls
   */
  constructor(fields, parts) {
    this.fields = fields;
    Object.assign(this, parts);
  }

  onMessage(message) {
    const job = this.job;
    if (message.type === "error") return this.onError(message);
    if (message.type === "queued" && message.requestId === job.requestId && job.state === "submitting") {
      this.accepted(message.jobId);
    }
    if (!job.id || message.jobId !== job.id) return;
    if (message.type === "position") {
      if (job.state === "queued") this.status.set("queued", `queued (#${message.position} in line)`);
      return;
    }
    if (message.type === "subscribed") return this.subscribed(message);
    if (typeof message.seq === "number") {
      if (message.seq <= job.lastSeq) return; // replayed after a reconnect, already shown
      job.lastSeq = message.seq;
    }
    this.onEvent(message);
    this.onChange();
  }

  /** The server took this page's run: it is kept for a reload, named in the address bar, and took a token. */
  accepted(jobId) {
    this.job.id = jobId;
    this.job.state = "queued";
    sessionStorage.setItem(Run.KEY, jobId);
    this.shareLinks.showRunLink(jobId);
    this.quota.refresh(); // the run took a token
  }

  subscribed(message) {
    const job = this.job;
    if (!StatusLine.FINAL.has(message.status) || job.state === "finished") return;
    // A shared run whose events are gone from the store: what the job record says (stdout, then stderr).
    if (job.record && job.record.id === job.id) return this.finishFromRecord(job.record);
    this.pane.note("(the run ended while the page was offline)");
  }

  /** One of the run's numbered events, new to this page. */
  onEvent(message) {
    const job = this.job;
    switch (message.type) {
      case "queued":
        this.status.set("queued", message.position ? `queued (#${message.position} in line)` : "queued");
        break;
      case "running":
        job.state = "running";
        job.startedAt = Math.min(Date.now(), message.startedAt || Date.now());
        job.lastActivity = Date.now();
        this.run.sendPaneInput();
        this.status.startClock(job.startedAt, () => this.liveInput.showWaitHint());
        break;
      case "output":
        job.lastActivity = Date.now();
        this.pane.append(message.stream === "stderr" ? "stderr" : "stdout", message.data);
        break;
      case "test":
        this.testCases.show(message);
        break;
      default:
        if (StatusLine.FINAL.has(message.type)) this.finished(message);
    }
  }

  async finished(message) {
    const { job, pane } = this;
    this.status.stopClock();
    job.state = "finished";
    this.liveInput.showWaitHint();
    sessionStorage.removeItem(Run.KEY);
    this.status.set(message.type, OutputPane.finalText(message));
    if (job.tests) this.showVerdicts(message);
    const figures = OutputPane.figuresOf(message);
    pane.showFigures(figures);
    if (!this.fields.output.textContent) pane.note(job.tests ? "(the tests' verdicts are under Tests)" : "(no output)");
    if (OutputPane.COMPILE_REASONS.has(message.reason) || job.tests) await this.fetchResults(job.id, message);
    this.onChange();
    if (!job.record) this.lastRun.save(job.id, figures); // a shared run opened here is not this browser's last run
  }

  /** The compiler's output and every test's result (a test run that did not compile sends no `test` events). */
  async fetchResults(jobId, message) {
    const { data } = await ShareLinks.fetchJob(jobId);
    if (data && this.job.id === jobId) {
      this.pane.compile(data.compileOutput);
      if (this.job.tests) this.showTestResults(data.tests, message);
    }
  }

  finishFromRecord(record) {
    if (record.stdout) this.pane.append("stdout", record.stdout);
    if (record.stderr) this.pane.append("stderr", record.stderr);
    this.finished({ ...record, type: record.status });
  }

  showTestResults(results, message) {
    for (const result of Array.isArray(results) ? results : []) this.testCases.show(result);
    this.testCases.settle("not run");
    this.fields.testsSummary.textContent = this.testCases.summary();
    if (this.job.state === "finished") this.showVerdicts(message);
  }

  /**
   * A judged run that ran is `completed` whatever its tests' verdicts: the status says how the tests went
   * instead, green only when every one was accepted.
   */
  showVerdicts(message) {
    const counts = this.testCases.verdictCounts();
    const judged = Object.values(counts).reduce((sum, n) => sum + n, 0);
    if (message.type !== "completed" || !judged) return;
    const total = this.testCases.length;
    const tests = total === 1 ? "test" : "tests";
    const accepted = counts.accepted || 0;
    if (accepted === total) return this.status.set("completed", `all ${total} ${tests} accepted`);
    const others = Object.entries(counts)
      .filter(([verdict]) => verdict !== "accepted")
      .map(([verdict, n]) => `${verdict.replace(/_/g, " ")} ×${n}`);
    this.status.set("failed", `${total - accepted} of ${total} ${tests} failed: ${others.join(", ")}`);
  }

  onError(message) {
    // The pane's input or its end of input, sent after the program had finished: nothing anyone lost.
    if (message.requestId === PaneInput.REQUEST && message.error === "Conflict") return;
    const job = this.job;
    const mine =
      (message.requestId && message.requestId === job.requestId) || (message.jobId && message.jobId === job.id);
    const text = message.message || message.error || "error";
    if (mine && message.error === "Too many requests" && typeof message.retryAfter === "number") {
      this.quota.startCountdown(message.retryAfter);
    }
    if (mine && job.state === "submitting") {
      job.state = "idle";
      this.testCases.settle("");
      this.status.set("error", `not started: ${text}`);
    } else if (mine && message.error === "Not found" && job.id === this.resumed) {
      job.state = "idle";
      sessionStorage.removeItem(Run.KEY);
      this.status.set("idle", "ready");
    } else if (mine && message.error === "Not found" && message.requestId === ShareLinks.REQUEST) {
      this.shareLinks.missing(404); // gone between the page's read and its subscribe
    } else if (mine && message.error === "Not found" && job.record) {
      this.pane.note("(only whoever started this run can send it input or stop it)", "error");
    } else {
      this.pane.note(text, "error");
    }
    this.onChange();
  }
}

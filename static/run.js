/* The editor's run, as the page sends it: the `run` message (with the stdin pane's text, or the test cases to
   judge), the pane's text that did not fit it, a stop, and the subscribe that takes the run back after a reconnect
   or a reload. What the server answers is static/runevents.js. */
"use strict";

class Run {
  /**
   * @param {{language: HTMLSelectElement, run: HTMLButtonElement, runTests: HTMLButtonElement,
   *          stdin: HTMLTextAreaElement, live: HTMLInputElement, testTimeout: HTMLInputElement,
   *          testsSummary: HTMLElement, output: HTMLElement}} fields
   * @param {{job: object, socket: Conveyor.Socket, config: object, code: CodeArea, runOptions: RunOptions,
   *          testCases: TestCases, pane: OutputPane, status: StatusLine, onChange: () => void}} parts `job` the run
   *   shown; `onChange` the editor's controls
   */
  constructor(fields, parts) {
    this.fields = fields;
    Object.assign(this, parts);
    this.counter = 0; // numbers each run's requestId
  }

  /** Run the code: with the stdin pane's input and live input, or (`tests`) once per test case, judged. */
  start({ tests = false } = {}) {
    const fields = this.fields;
    if (tests ? fields.runTests.disabled : fields.run.disabled) return;
    const language = fields.language.value;
    this.reset(tests);
    // A plain run is interactive (line-buffered C stdout, input while it runs): the pane's text goes with it, what
    // does not fit one frame follows in `stdin` messages, then end of input unless live. A judged run gets each
    // test's stdin whole.
    const { requestId } = this.job;
    const message = { type: "run", language, code: this.code.value, requestId, ...this.runOptions.values() };
    const planned = tests ? this.withTests(message) : this.withInput(message);
    if (!planned) return this.onChange();
    this.send(planned);
  }

  /** A new run replaces the one shown: its state, output, figures and verdicts. */
  reset(tests) {
    const { job, fields } = this;
    this.counter += 1;
    Object.assign(job, { id: null, requestId: `run-${this.counter}`, state: "submitting", lastSeq: 0 });
    Object.assign(job, { eofSent: false, tests, record: null, live: !tests && fields.live.checked });
    Object.assign(job, { pendingInput: [], paneInputSent: false, waitHinted: false });
    this.status.stopClock();
    fields.output.replaceChildren();
    delete fields.output.dataset.restored;
    this.pane.showFigures([]);
    fields.testsSummary.textContent = "";
    if (tests) this.testCases.pending();
  }

  withTests(message) {
    message.tests = this.testCases.values();
    // Each test within this wall time (the server refuses more than JOB_TIMEOUT_MS, naming the field).
    const limit = Number(this.fields.testTimeout.value);
    if (this.fields.testTimeout.value.trim() && Number.isFinite(limit)) message.timeoutMs = Math.round(limit);
    return message;
  }

  /** The run message with as much of the pane's text as fits it (the rest waits in the job); null when refused. */
  withInput(message) {
    const planned = PaneInput.plan({ ...message, interactive: true }, this.fields.stdin.value, {
      maxMessageBytes: this.config.wsMaxMessageBytes,
      maxStdinBytes: this.config.maxStdinBytes,
    });
    if (planned.error) {
      this.job.state = "idle";
      this.status.set("error", `not started: ${planned.error}`);
      return null;
    }
    this.job.pendingInput = planned.rest;
    return planned.run;
  }

  send(message) {
    this.revealOutput();
    const sent = this.socket.send(message);
    if (!sent) {
      this.job.state = "idle";
      this.testCases.settle("");
      this.status.set("error", "not connected: the run was not sent");
    } else {
      this.status.set("submitting", "submitting…");
    }
    this.onChange();
  }

  /** On a narrow screen the output pane sits below the fold: bring it into view when a run starts. */
  revealOutput() {
    const pane = this.fields.output.closest(".output-pane");
    const box = pane.getBoundingClientRect();
    if (box.bottom > innerHeight || box.top < 0) pane.scrollIntoView({ block: "nearest" });
  }

  /** The pane's text that did not fit the run message, then the end of input unless the run is live. */
  sendPaneInput() {
    const job = this.job;
    if (job.paneInputSent || job.tests || job.record) return;
    const jobId = job.id;
    for (const data of job.pendingInput) {
      if (!this.socket.send({ type: "stdin", jobId, data, requestId: PaneInput.REQUEST })) return; // again on reconnect
    }
    job.pendingInput = [];
    if (!job.live) {
      if (!this.socket.send({ type: "eof", jobId, requestId: PaneInput.REQUEST })) return;
      job.eofSent = true;
    }
    job.paneInputSent = true;
  }

  stop() {
    const job = this.job;
    if (job.id && (job.state === "queued" || job.state === "running")) {
      this.socket.send({ type: "stop", jobId: job.id });
      this.status.set("stopping", "stopping…");
    }
  }

  /** The socket is ready (again): resume the run the page was showing, replaying what was missed, then live. */
  resume() {
    const job = this.job;
    if (job.id && (job.state === "queued" || job.state === "running")) {
      const first = job.record && job.lastSeq === 0; // a shared run's first subscribe, not a reconnect
      const requestId = first ? ShareLinks.REQUEST : undefined;
      this.socket.send({ type: "subscribe", jobId: job.id, since: job.lastSeq, requestId });
      if (!first) this.pane.note("(reconnected)");
      if (job.state === "running") this.sendPaneInput();
    } else if (job.state === "submitting") {
      job.state = "idle";
      this.status.set("error", "the connection dropped before the run was accepted; run again");
    }
    this.onChange();
  }

  /** The socket closed; `wasReady`: it had been open (not a failed attempt to connect). */
  lost(wasReady) {
    const state = this.job.state;
    if (wasReady && (state === "queued" || state === "running")) this.pane.note("(connection lost; resuming…)");
    this.onChange();
  }
}

// A reloaded page takes back its run: the id is kept for this tab (sessionStorage), the owner token is the
// server's cookie.
Run.KEY = "conveyor.run";

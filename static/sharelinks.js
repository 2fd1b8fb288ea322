/* The editor's share links. A run's link (/?job=<id>) shows that run, its code, input and output, to whoever may
   read it while the server keeps it; a code link (/#code=…, static/fragment.js) carries the program itself. This
   puts them in the address bar and the clipboard, and opens what a link names. */
"use strict";

class ShareLinks {
  /**
   * @param {{copyLink: HTMLButtonElement, codeLink: HTMLButtonElement, shareNote: HTMLElement,
   *          language: HTMLSelectElement, stdin: HTMLTextAreaElement, output: HTMLElement}} fields
   * @param {{job: object, socket: Conveyor.Socket, retentionSeconds: number, code: CodeArea, languages: Languages,
   *          testCases: TestCases, pane: OutputPane, status: StatusLine, lastRun: LastRun,
   *          showTab: (name: string) => void, onChange: () => void}} parts `job` the run shown; `onChange` the
   *   editor's controls
   */
  constructor(fields, parts) {
    this.fields = fields;
    Object.assign(this, parts);
    fields.copyLink.addEventListener("click", () => this.copyRunLink());
    fields.codeLink.addEventListener("click", () => this.copyCodeLink());
  }

  /** The address bar names the run shown (replaceState: no new history entry), so it can be copied and shared. */
  showRunLink(jobId) {
    const url = new URL(location.href);
    url.search = `?job=${encodeURIComponent(jobId)}`;
    url.hash = "";
    history.replaceState(null, "", url);
    this.fields.copyLink.hidden = false;
    this.showNote();
  }

  /** How long a run's link works: the server keeps finished runs JOB_RETENTION_SECONDS (and a bounded number). */
  showNote() {
    const seconds = this.retentionSeconds;
    if (typeof seconds !== "number") return;
    const note = this.fields.shareNote;
    const span = seconds >= 86_400 ? `${+(seconds / 86_400).toFixed(1)} d` : seconds >= 3600
      ? `${+(seconds / 3600).toFixed(1)} h` : `${Math.max(1, Math.round(seconds / 60))} min`;
    note.textContent = seconds ? `run link: ~${span}` : "run link: not kept";
    note.title =
      `The server keeps a finished run ${seconds ? `about ${span}` : "not at all"} (fewer when it holds many): ` +
      "after that its link shows nothing. A code link does not expire.";
    note.hidden = this.fields.copyLink.hidden;
  }

  /** Put `url` on the clipboard and say so on `button` for two seconds; false when there is no clipboard. */
  static async copy(url, button, copied, idle) {
    try {
      await navigator.clipboard.writeText(url);
    } catch (err) {
      return false;
    }
    button.textContent = copied;
    setTimeout(() => {
      button.textContent = idle;
    }, 2000);
    return true;
  }

  async copyRunLink() {
    const url = location.href;
    if (!(await ShareLinks.copy(url, this.fields.copyLink, "Link copied", "Copy link"))) {
      this.pane.note(`(copy this link to share the run: ${url})`); // no clipboard here (an http page, a refusal)
    }
  }

  /** Copy a link that holds the program itself (static/fragment.js). */
  async copyCodeLink() {
    const { language, stdin, codeLink } = this.fields;
    const tests = this.testCases.values();
    const url = await CodeLink.make({ language: language.value, code: this.code.value, stdin: stdin.value, tests });
    if (!url) {
      this.pane.note("(this program is too long for a code link: run it and share the run's link instead)", "error");
      return;
    }
    if (!(await ShareLinks.copy(url, codeLink, "Code link copied", "Copy code link"))) {
      this.pane.note(`(copy this link to share the code: ${url})`);
    }
  }

  /** A code link opened: its program replaces what the editor had (nothing of it came from the server). */
  async openCodeLink() {
    let program;
    try {
      program = await CodeLink.read();
    } catch (err) {
      const damaged = "This code link is damaged (cut short when it was copied?): nothing could be read from it.";
      this.pane.note(damaged, "error");
      return;
    }
    if (!program) return;
    await this.languages.ready;
    const { language, stdin, output } = this.fields;
    if (this.languages.has(program.language)) {
      language.value = program.language;
    } else if (program.language) {
      this.pane.note(`(this code's language, ${program.language}, is not offered here)`, "error");
    }
    this.languages.setCode(program.code);
    this.code.setLanguage(language.value);
    stdin.value = program.stdin;
    if (program.tests.length) {
      const text = (value) => String(value ?? "");
      this.testCases.load(program.tests.map((t) => ({ stdin: text(t.stdin), expectedOutput: text(t.expectedOutput) })));
      this.showTab("tests");
    }
    output.replaceChildren();
    this.pane.note("(opened from a code link: the code, stdin and tests came in the address, not from the server)");
    this.onChange();
  }

  /**
   * Open a shared run: its code, language, stdin and tests from GET /queue/job/{id} (which applies the ownership
   * rules), then its events replayed over the socket from the first, so output keeps the order it was read in.
   */
  async openRun(jobId) {
    this.job.state = "loading";
    this.status.set("queued", "loading the shared run…");
    const [{ status, data }] = await Promise.all([ShareLinks.fetchJob(jobId), this.languages.ready]);
    if (data) return this.showRun(jobId, data);
    // This browser's own last run, gone from the server (expired) or out of reach: its saved copy.
    const saved = this.lastRun.read();
    if (!saved || saved.jobId !== jobId) return this.missing(status);
    this.job.state = "idle";
    this.lastRun.restore();
    this.fields.copyLink.hidden = false;
    this.showNote();
    return this.onChange();
  }

  /** A shared run's job record in the editor, then subscribed to from its first event. */
  showRun(jobId, data) {
    const { language, stdin, copyLink } = this.fields;
    if (this.languages.has(data.language)) language.value = data.language;
    else this.pane.note(`(this run's language, ${data.language}, is not offered here)`, "error");
    this.languages.setCode(typeof data.code === "string" ? data.code : "");
    this.code.setLanguage(this.languages.modeOf(language.value));
    stdin.value = typeof data.stdin === "string" ? data.stdin : "";
    const tests = Array.isArray(data.tests);
    if (tests) {
      this.testCases.load(data.tests);
      this.showTab("tests");
    }
    Object.assign(this.job, { id: jobId, state: "queued", lastSeq: 0, tests, record: data, requestId: null });
    copyLink.hidden = false;
    this.showNote();
    if (this.socket.ready) this.socket.send({ type: "subscribe", jobId, since: 0, requestId: ShareLinks.REQUEST });
    this.onChange();
  }

  /** An unknown, expired or someone else's run: one clear message (the server answers all three alike). */
  missing(status) {
    Object.assign(this.job, { id: null, state: "idle", record: null });
    this.fields.copyLink.hidden = true;
    this.showNote();
    if (status === 404 || status === 400) {
      this.status.set("error", "shared run not found");
      this.pane.note(
        "No run can be shown for this link: it is mistyped, the run has expired (finished runs are kept for a " +
          "while), or it belongs to someone else. You can still write and run code here.",
        "error",
      );
    } else {
      this.status.set("error", "shared run not loaded");
      const why = status ? `HTTP ${status}` : "no connection";
      this.pane.note(`The shared run could not be loaded (${why}); reload the page to try again.`, "error");
    }
    this.onChange();
  }

  /** The job as GET /queue/job/{id} shows it to this browser: `{status, data}`, status 0 when unreachable. */
  static async fetchJob(jobId) {
    try {
      const url = `/queue/job/${encodeURIComponent(jobId)}`;
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      return { status: response.status, data: response.ok ? await response.json() : null };
    } catch (err) {
      return { status: 0, data: null };
    }
  }
}

// The request id of a shared run's first subscribe, so that its "Not found" is told apart from a reconnect's.
ShareLinks.REQUEST = "shared-run";

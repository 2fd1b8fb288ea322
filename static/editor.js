/* The editor: pick a language, run code over the WebSocket, stream its output, feed it input, stop it, run it
   against test cases; the last run's output survives a reload, a run has a share link (/?job=<id>), and the
   remaining quota is shown. */
"use strict";

(() => {
  const { el, Socket } = Conveyor;
  const config = Conveyor.config();

  const FINAL = new Set(["completed", "failed", "timeout", "cancelled"]);
  const { COMPILE_REASONS } = OutputPane;
  const LAST_RUN_KEY = "conveyor.lastRun";
  // Languages whose source is not text one types: a prebuilt binary (Judge0's "Executable") stays in the API.
  const NOT_TYPED = new Set(["executable"]);
  // The saved copy of the last run's output is cut here: localStorage holds ~5 MB per origin, shared by all keys.
  const MAX_SAVED_OUTPUT = 64 * 1024;

  const $ = (id) => document.getElementById(id);
  const ui = {
    language: $("language"),
    run: $("run"),
    stop: $("stop"),
    status: $("status"),
    announce: $("status-announce"),
    codeEditor: $("code-editor"),
    codeSize: $("code-size"),
    figures: $("figures"),
    quota: $("quota"),
    output: $("output"),
    stdin: $("stdin"),
    inputForm: $("input-form"),
    input: $("input"),
    live: $("live"),
    inputHint: $("input-hint"),
    eof: $("eof"),
    copyLink: $("copy-link"),
    codeLink: $("code-link"),
    shareNote: $("share-note"),
    tabs: { stdin: $("tab-stdin"), tests: $("tab-tests"), options: $("tab-options") },
    bodies: { stdin: $("stdin-body"), tests: $("tests-body"), options: $("options-body") },
    download: $("download"),
    paneNote: $("pane-note"),
    addTest: $("add-test"),
    runTests: $("run-tests"),
    testsSummary: $("tests-summary"),
    testsCount: $("tests-count"),
    testTimeout: $("test-timeout"),
  };

  // The run being shown. `lastSeq` is the newest event seen, so a reconnect resumes exactly after it.
  const job = {
    id: null,
    requestId: null,
    state: "idle", // idle | submitting | queued | running | finished
    lastSeq: 0,
    startedAt: 0, // local Date.now() at the start, for the ticking clock
    eofSent: false,
    tests: false, // a run of the test cases
    live: false, // stdin stays open for typed lines; otherwise it ends after the pane's text
    pendingInput: [], // the pane's text past the run message, sent once the program runs
    paneInputSent: false,
    lastActivity: 0, // Date.now() of the last output or input, for the "may be waiting for input" hint
    waitHinted: false,
  };
  // Live input is a choice this browser remembers; a visitor opening a share link starts with it off.
  const LIVE_KEY = "conveyor.liveInput";
  // After this long without output from a live run that still runs, the page says it may be waiting for input.
  // The server cannot tell a program blocked in read() from one computing quietly, so the wording says "may".
  const WAIT_HINT_MS = 1500;
  // A shared link (/?job=<id>) shows that run: its code, input and output, for whoever may read it.
  const shared = new URLSearchParams(location.search).get("job");
  const SHARED_REQUEST = "shared-run";
  // A reloaded page takes back its run: the id is kept for this tab, the owner token is the server's cookie.
  const RUN_KEY = "conveyor.run";
  const resumed = shared ? null : sessionStorage.getItem(RUN_KEY);
  // What it was sent is not known: its input stays open to the page, as the run's own page left it.
  if (resumed) Object.assign(job, { id: resumed, state: "queued", paneInputSent: true, live: true });
  let requestCounter = 0;
  let ticker = null;
  let runtimes = [];
  let runtimesLoaded;
  const runtimesReady = new Promise((resolve) => {
    runtimesLoaded = resolve;
  });
  const quota = new QuotaHint(ui.quota, { onChange: () => syncControls() });

  // -- status line ---------------------------------------------------------------------------------------------

  /**
   * The visible status line is not a live region (its clock changes ten times a second); a change of state is
   * read out once through the visually hidden #status-announce, with `spoken` when the shown text has a clock.
   */
  function setStatus(state, text, spoken = text) {
    const changed = ui.status.dataset.state !== state || ui.status.dataset.spoken !== spoken;
    ui.status.dataset.state = state;
    ui.status.dataset.spoken = spoken;
    ui.status.textContent = text;
    ui.status.title = text; // the line is cut with an ellipsis rather than wrapping the toolbar
    if (changed) announce(spoken);
  }

  function announce(text) {
    ui.announce.textContent = text;
  }

  function startTicker() {
    stopTicker();
    const tick = () => {
      setStatus("running", `running ${(Math.max(0, Date.now() - job.startedAt) / 1000).toFixed(1)} s`, "running");
      showWaitHint();
    };
    tick();
    ticker = setInterval(tick, 100);
  }

  /** A live run that has been quiet a while may be blocked reading stdin: say so near the input line. */
  function showWaitHint() {
    const quiet = Date.now() - job.lastActivity >= WAIT_HINT_MS;
    const waiting = job.live && job.state === "running" && !job.eofSent && quiet;
    if (waiting === job.waitHinted) return;
    job.waitHinted = waiting;
    ui.inputHint.hidden = !waiting;
    ui.inputHint.textContent = waiting
      ? "No output for a while: the program may be waiting for input. Type a line and press Enter, or EOF to end input."
      : "";
    ui.inputForm.dataset.waiting = String(waiting);
    if (waiting) announce("no output for a while: the program may be waiting for input");
  }

  function stopTicker() {
    clearInterval(ticker);
    ticker = null;
  }

  const pane = new OutputPane(ui.output, ui.figures);
  const appendOutput = (stream, text) => pane.append(stream, text);
  const appendNote = (text, kind) => pane.note(text, kind);
  const showCompileOutput = (text) => pane.compile(text);
  const showFigures = (figures) => pane.showFigures(figures);
  const finalText = (message) => OutputPane.finalText(message);

  /** The figures bar of a finished run; returns its figures (kept with the last run). */
  function renderFigures(message) {
    const figures = OutputPane.figuresOf(message);
    showFigures(figures);
    return figures;
  }

  // -- the last run, kept across reloads --------------------------------------------------------------------------

  function saveLastRun(figures) {
    const chunks = [];
    let budget = MAX_SAVED_OUTPUT;
    for (const node of ui.output.children) {
      const stream = node.dataset.stream || "stdout";
      const text = stream === "compile" ? node.querySelector(".compile-text").textContent : node.textContent;
      if (text.length > budget) {
        chunks.push([stream, text.slice(0, budget)], ["note", "\n(the saved copy of this output stops here)\n"]);
        break;
      }
      chunks.push([stream, text]);
      budget -= text.length;
    }
    const record = {
      jobId: job.id,
      language: ui.language.value,
      stdin: ui.stdin.value.slice(0, MAX_SAVED_OUTPUT),
      status: { state: ui.status.dataset.state, text: ui.status.textContent },
      figures,
      chunks,
      savedAt: Date.now(),
    };
    try {
      localStorage.setItem(LAST_RUN_KEY, JSON.stringify(record));
    } catch (err) {
      // Full or refused storage: the output is simply not restored after a reload.
    }
  }

  function lastRun() {
    try {
      const record = JSON.parse(localStorage.getItem(LAST_RUN_KEY) || "null");
      return record && Array.isArray(record.chunks) ? record : null;
    } catch (err) {
      return null;
    }
  }

  function restoreLastRun() {
    const record = lastRun();
    if (!record) return;
    ui.stdin.value = typeof record.stdin === "string" ? record.stdin : "";
    for (const [stream, text] of record.chunks) {
      if (stream === "compile") showCompileOutput(String(text));
      else if (stream === "note" || stream === "error") appendNote(String(text).replace(/^\n|\n$/g, ""), stream);
      else appendOutput(stream === "stderr" || stream === "stdin" ? stream : "stdout", String(text));
    }
    if (record.status && FINAL.has(record.status.state)) setStatus(record.status.state, String(record.status.text));
    if (Array.isArray(record.figures)) showFigures(record.figures);
    const when = new Date(record.savedAt || Date.now()).toLocaleTimeString([], { hour12: false });
    appendNote(`(restored: your last run, at ${when})`);
    ui.output.dataset.restored = "true";
  }

  // -- share links ------------------------------------------------------------------------------------------------

  /** The address bar names the run shown (replaceState: no new history entry), so it can be copied and shared. */
  function showShareLink(jobId) {
    const url = new URL(location.href);
    url.search = `?job=${encodeURIComponent(jobId)}`;
    url.hash = "";
    history.replaceState(null, "", url);
    ui.copyLink.hidden = false;
    showShareNote();
  }

  /** How long a run's link works: the server keeps finished runs JOB_RETENTION_SECONDS (and a bounded number). */
  function showShareNote() {
    const seconds = config.jobRetentionSeconds;
    if (typeof seconds !== "number") return;
    const span = seconds >= 86_400 ? `${+(seconds / 86_400).toFixed(1)} d` : seconds >= 3600
      ? `${+(seconds / 3600).toFixed(1)} h` : `${Math.max(1, Math.round(seconds / 60))} min`;
    ui.shareNote.textContent = seconds ? `run link: ~${span}` : "run link: not kept";
    ui.shareNote.title =
      `The server keeps a finished run ${seconds ? `about ${span}` : "not at all"} (fewer when it holds many): ` +
      "after that its link shows nothing. A code link does not expire.";
    ui.shareNote.hidden = ui.copyLink.hidden;
  }

  /** Copy a link that holds the program itself (static/fragment.js). */
  async function copyCodeLink() {
    const tests = testCases.values();
    const url = await CodeLink.make({ language: ui.language.value, code: code.value, stdin: ui.stdin.value, tests });
    if (!url) {
      appendNote("(this program is too long for a code link: run it and share the run's link instead)", "error");
      return;
    }
    try {
      await navigator.clipboard.writeText(url);
      ui.codeLink.textContent = "Code link copied";
      setTimeout(() => {
        ui.codeLink.textContent = "Copy code link";
      }, 2000);
    } catch (err) {
      appendNote(`(copy this link to share the code: ${url})`);
    }
  }

  /** A code link opened: its program replaces what the editor had (nothing of it came from the server). */
  async function openCodeLink() {
    let program;
    try {
      program = await CodeLink.read();
    } catch (err) {
      appendNote("This code link is damaged (cut short when it was copied?): nothing could be read from it.", "error");
      return;
    }
    if (!program) return;
    await runtimesReady;
    if (runtimes.some((r) => r.id === program.language)) ui.language.value = program.language;
    else if (program.language) appendNote(`(this code's language, ${program.language}, is not offered here)`, "error");
    loadingCode = true;
    try {
      code.value = program.code;
    } finally {
      loadingCode = false;
    }
    code.setLanguage(ui.language.value);
    ui.stdin.value = program.stdin;
    if (program.tests.length) {
      testCases.load(program.tests.map((t) => ({ stdin: String(t.stdin ?? ""), expectedOutput: String(t.expectedOutput ?? "") })));
      showTab("tests");
    }
    ui.output.replaceChildren();
    appendNote("(opened from a code link: the code, stdin and tests came in the address, not from the server)");
    syncControls();
  }

  async function copyLink() {
    const url = location.href;
    try {
      await navigator.clipboard.writeText(url);
      ui.copyLink.textContent = "Link copied";
      setTimeout(() => {
        ui.copyLink.textContent = "Copy link";
      }, 2000);
    } catch (err) {
      appendNote(`(copy this link to share the run: ${url})`); // no clipboard here (an http page, a refusal)
    }
  }

  /**
   * Open a shared run: its code, language, stdin and tests from GET /queue/job/{id} (which applies the ownership
   * rules), then its events replayed over the socket from the first, so output keeps the order it was read in.
   */
  async function openShared(jobId) {
    job.state = "loading";
    setStatus("queued", "loading the shared run…");
    const [{ status, data }] = await Promise.all([fetchJob(jobId), runtimesReady]);
    if (!data) {
      // This browser's own last run, gone from the server (expired) or out of reach: its saved copy.
      const saved = lastRun();
      if (saved && saved.jobId === jobId) {
        job.state = "idle";
        restoreLastRun();
        ui.copyLink.hidden = false;
        showShareNote();
        return syncControls();
      }
      return sharedMissing(status);
    }
    if (runtimes.some((r) => r.id === data.language)) ui.language.value = data.language;
    else appendNote(`(this run's language, ${data.language}, is not offered here)`, "error");
    loadingCode = true;
    try {
      code.value = typeof data.code === "string" ? data.code : "";
    } finally {
      loadingCode = false;
    }
    code.setLanguage(modeOf(ui.language.value));
    ui.stdin.value = typeof data.stdin === "string" ? data.stdin : "";
    const tests = Array.isArray(data.tests);
    if (tests) {
      testCases.load(data.tests);
      showTab("tests");
    }
    Object.assign(job, { id: jobId, state: "queued", lastSeq: 0, tests, record: data, requestId: null });
    ui.copyLink.hidden = false;
    showShareNote();
    if (socket.ready) socket.send({ type: "subscribe", jobId, since: 0, requestId: SHARED_REQUEST });
    syncControls();
  }

  /** An unknown, expired or someone else's run: one clear message (the server answers all three alike). */
  function sharedMissing(status) {
    Object.assign(job, { id: null, state: "idle", record: null });
    ui.copyLink.hidden = true;
    showShareNote();
    if (status === 404 || status === 400) {
      setStatus("error", "shared run not found");
      appendNote(
        "No run can be shown for this link: it is mistyped, the run has expired (finished runs are kept for a " +
          "while), or it belongs to someone else. You can still write and run code here.",
        "error",
      );
    } else {
      setStatus("error", "shared run not loaded");
      const why = status ? `HTTP ${status}` : "no connection";
      appendNote(`The shared run could not be loaded (${why}); reload the page to try again.`, "error");
    }
    syncControls();
  }

  // -- tabs: stdin and test cases ----------------------------------------------------------------------------------

  function showTab(name) {
    for (const [key, tab] of Object.entries(ui.tabs)) {
      tab.setAttribute("aria-selected", String(key === name));
      ui.bodies[key].hidden = key !== name;
    }
    const notes = { tests: "compiled once, each test in a fresh sandbox", options: "sent with every run, checked by the server" };
    ui.paneNote.textContent = notes[name] || stdinNote();
    document.querySelector(".editor-layout").dataset.tab = name;
  }

  function shownTab() {
    const [name] = Object.entries(ui.tabs).find(([, tab]) => tab.getAttribute("aria-selected") === "true") || ["stdin"];
    return name;
  }

  function stdinNote() {
    return ui.live.checked ? "sent first; stdin then stays open for live input" : "sent whole, then end of input";
  }

  /** What the next run does with stdin, in the pane note and the input line's placeholder. */
  function showLiveMode() {
    if (shownTab() === "stdin") ui.paneNote.textContent = stdinNote();
    ui.input.placeholder = ui.live.checked
      ? "Live input: Enter sends a line, Ctrl+D ends input"
      : "Live input is off: stdin ends after the pane's text";
  }

  // -- controls ------------------------------------------------------------------------------------------------

  function syncControls() {
    const active = job.state === "submitting" || job.state === "queued" || job.state === "running";
    ui.run.disabled = active || !ui.language.value || !socket.ready || quota.limitedSeconds() > 0;
    ui.runTests.disabled = ui.run.disabled || testCases.length === 0;
    ui.addTest.disabled = testCases.length >= testCases.max;
    ui.stop.disabled = !(job.state === "queued" || job.state === "running") || !job.id;
    const acceptsInput = job.state === "running" && !job.eofSent && socket.ready && !job.tests;
    ui.input.disabled = !acceptsInput;
    ui.eof.disabled = !acceptsInput;
  }

  // -- output pane ---------------------------------------------------------------------------------------------

  /** The job as GET /queue/job/{id} shows it to this browser: `{status, data}`, status 0 when unreachable. */
  async function fetchJob(jobId) {
    try {
      const url = `/queue/job/${encodeURIComponent(jobId)}`;
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      return { status: response.status, data: response.ok ? await response.json() : null };
    } catch (err) {
      return { status: 0, data: null };
    }
  }

  // -- messages ------------------------------------------------------------------------------------------------

  function onMessage(message) {
    if (message.type === "error") return onError(message);
    if (message.type === "queued" && message.requestId === job.requestId && job.state === "submitting") {
      job.id = message.jobId;
      job.state = "queued";
      sessionStorage.setItem(RUN_KEY, job.id);
      showShareLink(job.id);
      quota.refresh(); // the run took a token
    }
    if (!job.id || message.jobId !== job.id) return;
    if (message.type === "position") {
      if (job.state === "queued") setStatus("queued", `queued (#${message.position} in line)`);
      return;
    }
    if (message.type === "subscribed") {
      if (FINAL.has(message.status) && job.state !== "finished") {
        // A shared run whose events are gone from the store: what the job record says (stdout, then stderr).
        if (job.record && job.record.id === job.id) return finishFromRecord(job.record);
        appendNote("(the run ended while the page was offline)");
      }
      return;
    }
    if (typeof message.seq === "number") {
      if (message.seq <= job.lastSeq) return; // replayed after a reconnect, already shown
      job.lastSeq = message.seq;
    }
    switch (message.type) {
      case "queued":
        setStatus("queued", message.position ? `queued (#${message.position} in line)` : "queued");
        break;
      case "running":
        job.state = "running";
        job.startedAt = Math.min(Date.now(), message.startedAt || Date.now());
        job.lastActivity = Date.now();
        sendPaneInput();
        startTicker();
        break;
      case "output":
        job.lastActivity = Date.now();
        appendOutput(message.stream === "stderr" ? "stderr" : "stdout", message.data);
        break;
      case "test":
        testCases.show(message);
        break;
      default:
        if (FINAL.has(message.type)) onFinished(message);
    }
    syncControls();
  }

  async function onFinished(message) {
    stopTicker();
    job.state = "finished";
    showWaitHint();
    sessionStorage.removeItem(RUN_KEY);
    setStatus(message.type, finalText(message));
    if (job.tests) showVerdicts(message);
    const figures = renderFigures(message);
    if (!ui.output.textContent) appendNote(job.tests ? "(the tests' verdicts are under Tests)" : "(no output)");
    const jobId = job.id;
    if (COMPILE_REASONS.has(message.reason) || job.tests) {
      // The compiler's output and every test's result (a test run that did not compile sends no `test` events).
      const { data } = await fetchJob(jobId);
      if (data && job.id === jobId) {
        showCompileOutput(data.compileOutput);
        if (job.tests) showTestResults(data.tests, message);
      }
    }
    syncControls();
    if (!job.record) saveLastRun(figures); // a shared run opened here is not this browser's last run
  }

  function finishFromRecord(record) {
    if (record.stdout) appendOutput("stdout", record.stdout);
    if (record.stderr) appendOutput("stderr", record.stderr);
    onFinished({ ...record, type: record.status });
  }

  function showTestResults(results, message) {
    for (const result of Array.isArray(results) ? results : []) testCases.show(result);
    testCases.settle("not run");
    ui.testsSummary.textContent = testCases.summary();
    if (job.state === "finished") showVerdicts(message);
  }

  /**
   * A judged run that ran is `completed` whatever its tests' verdicts: the status says how the tests went
   * instead, green only when every one was accepted.
   */
  function showVerdicts(message) {
    const counts = testCases.verdictCounts();
    const judged = Object.values(counts).reduce((sum, n) => sum + n, 0);
    if (message.type !== "completed" || !judged) return;
    const total = testCases.length;
    const accepted = counts.accepted || 0;
    if (accepted === total) return setStatus("completed", `all ${total} ${total === 1 ? "test" : "tests"} accepted`);
    const others = Object.entries(counts)
      .filter(([verdict]) => verdict !== "accepted")
      .map(([verdict, n]) => `${verdict.replace(/_/g, " ")} ×${n}`);
    setStatus("failed", `${total - accepted} of ${total} ${total === 1 ? "test" : "tests"} failed: ${others.join(", ")}`);
  }

  function onError(message) {
    // The pane's input or its end of input, sent after the program had finished: nothing anyone lost.
    if (message.requestId === PaneInput.REQUEST && message.error === "Conflict") return;
    const mine =
      (message.requestId && message.requestId === job.requestId) || (message.jobId && message.jobId === job.id);
    const text = message.message || message.error || "error";
    if (mine && message.error === "Too many requests" && typeof message.retryAfter === "number") {
      quota.startCountdown(message.retryAfter);
    }
    if (mine && job.state === "submitting") {
      job.state = "idle";
      testCases.settle("");
      setStatus("error", `not started: ${text}`);
    } else if (mine && message.error === "Not found" && job.id === resumed) {
      job.state = "idle";
      sessionStorage.removeItem(RUN_KEY);
      setStatus("idle", "ready");
    } else if (mine && message.error === "Not found" && message.requestId === SHARED_REQUEST) {
      sharedMissing(404); // gone between the page's read and its subscribe
    } else if (mine && message.error === "Not found" && job.record) {
      appendNote("(only whoever started this run can send it input or stop it)", "error");
    } else {
      appendNote(text, "error");
    }
    syncControls();
  }

  // -- actions -------------------------------------------------------------------------------------------------

  /** Run the code: with the stdin pane's input and live input, or (`tests`) once per test case, judged. */
  function run({ tests = false } = {}) {
    if (tests ? ui.runTests.disabled : ui.run.disabled) return;
    const language = ui.language.value;
    requestCounter += 1;
    Object.assign(job, { id: null, requestId: `run-${requestCounter}`, state: "submitting", lastSeq: 0 });
    Object.assign(job, { eofSent: false, tests, record: null, live: !tests && ui.live.checked });
    Object.assign(job, { pendingInput: [], paneInputSent: false, waitHinted: false });
    stopTicker();
    ui.output.replaceChildren();
    delete ui.output.dataset.restored;
    showFigures([]);
    ui.testsSummary.textContent = "";
    if (tests) testCases.pending();
    // A plain run is interactive (line-buffered C stdout, input while it runs): the pane's text goes with it, what
    // does not fit one frame follows in `stdin` messages, then end of input unless live. A judged run gets each
    // test's stdin whole.
    let message = { type: "run", language, code: code.value, requestId: job.requestId, ...runOptions.values() };
    if (tests) {
      message.tests = testCases.values();
      // Each test within this wall time (the server refuses more than JOB_TIMEOUT_MS, naming the field).
      const limit = Number(ui.testTimeout.value);
      if (ui.testTimeout.value.trim() && Number.isFinite(limit)) message.timeoutMs = Math.round(limit);
    } else {
      const planned = PaneInput.plan({ ...message, interactive: true }, ui.stdin.value, {
        maxMessageBytes: config.wsMaxMessageBytes,
        maxStdinBytes: config.maxStdinBytes,
      });
      if (planned.error) {
        job.state = "idle";
        setStatus("error", `not started: ${planned.error}`);
        return syncControls();
      }
      message = planned.run;
      job.pendingInput = planned.rest;
    }
    revealOutput();
    const sent = socket.send(message);
    if (!sent) {
      job.state = "idle";
      testCases.settle("");
      setStatus("error", "not connected: the run was not sent");
    } else {
      setStatus("submitting", "submitting…");
    }
    syncControls();
  }

  /** The pane's text that did not fit the run message, then the end of input unless the run is live. */
  function sendPaneInput() {
    if (job.paneInputSent || job.tests || job.record) return;
    const jobId = job.id;
    for (const data of job.pendingInput) {
      if (!socket.send({ type: "stdin", jobId, data, requestId: PaneInput.REQUEST })) return; // again on reconnect
    }
    job.pendingInput = [];
    if (!job.live) {
      if (!socket.send({ type: "eof", jobId, requestId: PaneInput.REQUEST })) return;
      job.eofSent = true;
    }
    job.paneInputSent = true;
  }

  /** On a narrow screen the output pane sits below the fold: bring it into view when a run starts. */
  function revealOutput() {
    const pane = ui.output.closest(".output-pane");
    const box = pane.getBoundingClientRect();
    if (box.bottom > innerHeight || box.top < 0) pane.scrollIntoView({ block: "nearest" });
  }

  function stop() {
    if (job.id && (job.state === "queued" || job.state === "running")) {
      socket.send({ type: "stop", jobId: job.id });
      setStatus("stopping", "stopping…");
    }
  }

  function sendLine() {
    if (ui.input.disabled) return;
    const line = ui.input.value;
    if (socket.send({ type: "stdin", jobId: job.id, data: `${line}\n` })) {
      job.lastActivity = Date.now();
      showWaitHint();
      appendOutput("stdin", `${line}\n`);
      ui.input.value = "";
    }
  }

  function sendEof() {
    if (ui.input.disabled) return;
    if (ui.input.value) sendLine();
    if (socket.send({ type: "eof", jobId: job.id })) {
      job.eofSent = true;
      appendNote("(end of input)");
      syncControls();
    }
  }

  // -- code area -----------------------------------------------------------------------------------------------

  function showCodeSize(text) {
    const bytes = new TextEncoder().encode(text).length;
    const max = config.maxCodeBytes;
    ui.codeSize.textContent = max ? `${bytes.toLocaleString("en-US")} / ${max.toLocaleString("en-US")} bytes` : "";
    ui.codeSize.classList.toggle("over", Boolean(max) && bytes > max);
  }

  const runOptions = new RunOptions({
    args: $("opt-args"),
    flags: $("opt-flags"),
    flagsNote: $("opt-flags-note"),
    timeout: $("opt-timeout"),
    memory: $("opt-memory"),
    font: $("opt-font"),
  });

  const testCases = new TestCases($("tests"), {
    max: config.maxTests || 64,
    onChange: () => {
      ui.testsCount.textContent = testCases.length ? `(${testCases.length})` : "";
      ui.testsSummary.textContent = testCases.summary();
      syncControls();
    },
  });

  let loadingCode = false; // a language switch sets the text: that is not an edit to save
  const code = new CodeArea(ui.codeEditor, {
    contentId: "code",
    label: "Source code",
    indentUnit: () => (ui.language.value === "go" ? "\t" : "    "),
    onRun: () => run({ tests: shownTab() === "tests" }),
    onChange: (text) => {
      showCodeSize(text);
      if (!loadingCode) saveCode();
    },
  });

  // -- languages and saved code --------------------------------------------------------------------------------

  // File names for a download; a language not listed here saves as .txt.
  const EXTENSIONS = { python: "py", javascript: "js", typescript: "ts", bash: "sh", c: "c", cpp: "cpp", java: "java",
    rust: "rs", go: "go", perl: "pl", ruby: "rb", php: "php", lua: "lua", kotlin: "kt", csharp: "cs", haskell: "hs" };

  /** Save the code as a file (a Blob URL clicked as a download: nothing goes to the server). */
  function downloadCode() {
    const language = ui.language.value;
    const name = language === "java" ? "Main.java" : `main.${EXTENSIONS[language] || "txt"}`;
    const url = URL.createObjectURL(new Blob([code.value], { type: "text/plain;charset=utf-8" }));
    const link = el("a", { href: url, download: name });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function showCompiled() {
    const entry = runtimes.find((r) => r.id === ui.language.value);
    runOptions.setCompiled(Boolean(entry && entry.compiled));
  }

  function storageKey(language) {
    return `conveyor.code.${language}`;
  }

  function saveCode() {
    try {
      localStorage.setItem(storageKey(ui.language.value), code.value);
    } catch (err) {
      // Private windows may refuse storage; the code simply is not remembered.
    }
  }

  function loadCode(language) {
    let saved = null;
    try {
      saved = localStorage.getItem(storageKey(language));
    } catch (err) {
      saved = null;
    }
    loadingCode = true;
    try {
      code.value = saved !== null ? saved : starterFor(language);
    } finally {
      loadingCode = false;
    }
    code.setLanguage(modeOf(language));
  }

  /** The highlighting mode /runtimes names for a language (languages.toml `mode`), else its id. */
  function modeOf(language) {
    const entry = runtimes.find((r) => r.id === language);
    return (entry && entry.mode) || language;
  }

  function starterFor(language) {
    const entry = runtimes.find((r) => r.id === language);
    const ids = [language, ...((entry && entry.aliases) || [])];
    if (entry && entry.hello) return entry.hello;
    for (const id of ids) if (STARTERS[id]) return STARTERS[id];
    return `// Write a ${entry ? entry.label : language} program here.\n`;
  }

  /** Accept a few shapes of /runtimes entries: the sandbox owns that document. */
  function normalizeRuntime(item) {
    if (typeof item === "string") return { id: item, label: item, aliases: [] };
    const id = item.id || item.name || item.language;
    const name = item.displayName || item.label || NAMES[id] || item.name || id;
    const version = item.version ? ` ${item.version}` : "";
    return {
      id,
      label: `${name}${version}`,
      aliases: item.aliases || [],
      available: item.available !== false,
      compiled: Boolean(item.compiled),
      mode: item.mode || id,
      hello: item.hello || "",
    };
  }

  async function loadRuntimes(attempt = 0) {
    try {
      const response = await fetch("/runtimes", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      const list = Array.isArray(data) ? data : data.runtimes || data.languages || [];
      runtimes = list.map(normalizeRuntime).filter((r) => r.id && r.available !== false && !NOT_TYPED.has(r.id));
    } catch (err) {
      setStatus("error", `could not load languages (${err.message}); retrying…`);
      setTimeout(() => loadRuntimes(attempt + 1), Math.min(10_000, 1000 * 2 ** attempt));
      return;
    }
    let preferred = null;
    try {
      preferred = localStorage.getItem("conveyor.language");
    } catch (err) {
      preferred = null;
    }
    ui.language.replaceChildren(...runtimes.map((r) => el("option", { value: r.id }, r.label)));
    const initial = runtimes.find((r) => r.id === preferred) || runtimes.find((r) => r.id === "python") || runtimes[0];
    if (initial) ui.language.value = initial.id;
    ui.language.disabled = runtimes.length === 0;
    loadCode(ui.language.value);
    showCompiled();
    runtimesLoaded();
    // A restored last run keeps its final status until the next run.
    if (job.state === "idle" && !(ui.output.dataset.restored && runtimes.length)) {
      setStatus("idle", runtimes.length ? "ready" : "no languages available");
    }
    syncControls();
  }

  ui.language.addEventListener("change", () => {
    try {
      localStorage.setItem("conveyor.language", ui.language.value);
    } catch (err) {
      // not remembered
    }
    loadCode(ui.language.value);
    showCompiled();
    syncControls();
  });

  // -- wiring --------------------------------------------------------------------------------------------------

  ui.run.addEventListener("click", () => run());
  ui.runTests.addEventListener("click", () => run({ tests: true }));
  ui.addTest.addEventListener("click", () => {
    const row = testCases.add();
    if (row) row.stdin.focus();
  });
  Conveyor.tablist(ui.tabs.stdin.parentElement);
  ui.tabs.stdin.addEventListener("click", () => showTab("stdin"));
  ui.tabs.tests.addEventListener("click", () => showTab("tests"));
  ui.tabs.options.addEventListener("click", () => showTab("options"));
  ui.download.addEventListener("click", downloadCode);
  ui.copyLink.addEventListener("click", copyLink);
  ui.codeLink.addEventListener("click", copyCodeLink);
  ui.live.addEventListener("change", () => {
    try {
      localStorage.setItem(LIVE_KEY, ui.live.checked ? "1" : "0");
    } catch (err) {
      // not remembered
    }
    showLiveMode();
  });
  ui.stop.addEventListener("click", stop);
  ui.eof.addEventListener("click", sendEof);
  ui.inputForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sendLine();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "d" && event.ctrlKey) {
      event.preventDefault();
      sendEof();
    }
  });
  document.addEventListener("keydown", (event) => {
    // The editor handles its own Ctrl+Enter (and marks the event handled).
    if (event.defaultPrevented) return;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run({ tests: shownTab() === "tests" }); // on the Tests tab, the tests
    }
  });

  const socket = new Socket({
    onMessage,
    onReady: () => {
      // Resume a run the page was showing: replay what was missed, then continue live.
      if (job.id && (job.state === "queued" || job.state === "running")) {
        const first = job.record && job.lastSeq === 0; // a shared run's first subscribe, not a reconnect
        socket.send({ type: "subscribe", jobId: job.id, since: job.lastSeq, requestId: first ? SHARED_REQUEST : undefined });
        if (!first) appendNote("(reconnected)");
        if (job.state === "running") sendPaneInput();
      } else if (job.state === "submitting") {
        job.state = "idle";
        setStatus("error", "the connection dropped before the run was accepted; run again");
      }
      syncControls();
    },
    onClose: (wasReady) => {
      if (wasReady && (job.state === "queued" || job.state === "running")) appendNote("(connection lost; resuming…)");
      syncControls();
    },
  });

  try {
    ui.live.checked = localStorage.getItem(LIVE_KEY) === "1";
  } catch (err) {
    ui.live.checked = false;
  }
  showLiveMode();
  showCodeSize(code.value);
  const codeLinked = !shared && location.hash.startsWith("#code=");
  if (!shared && !codeLinked) restoreLastRun();
  testCases.restore();
  loadRuntimes();
  quota.refresh();
  if (shared) openShared(shared);
  else if (codeLinked) openCodeLink();
})();

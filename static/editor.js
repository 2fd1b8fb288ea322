/* The editor: pick a language, run code over the WebSocket, stream its output, feed it input, stop it, run it
   against test cases; the last run's output survives a reload, a run has a share link (/?job=<id>), and the
   remaining quota is shown. This file finds the page's elements, holds the run shown and joins the parts: the
   status line (statusline.js), the last run (lastrun.js), languages and saved code (languages.js), the input line
   (liveinput.js), share links (sharelinks.js), the run as sent (run.js) and the server's messages (runevents.js). */
"use strict";

(() => {
  const config = Conveyor.config();

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
  // A shared link (/?job=<id>) shows that run: its code, input and output, for whoever may read it.
  const shared = new URLSearchParams(location.search).get("job");
  // A reloaded page takes back its run (Run.KEY). What it was sent is not known: its input stays open to the page,
  // as the run's own page left it.
  const resumed = shared ? null : sessionStorage.getItem(Run.KEY);
  if (resumed) Object.assign(job, { id: resumed, state: "queued", paneInputSent: true, live: true });

  const status = new StatusLine(ui.status, ui.announce);
  const quota = new QuotaHint(ui.quota, { onChange: () => syncControls() });
  const pane = new OutputPane(ui.output, ui.figures);
  const lastRun = new LastRun(ui, pane, status);

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

  const code = new CodeArea(ui.codeEditor, {
    contentId: "code",
    label: "Source code",
    indentUnit: () => (ui.language.value === "go" ? "\t" : "    "),
    onRun: () => run.start({ tests: shownTab() === "tests" }),
    onChange: (text) => {
      showCodeSize(text);
      languages.edited();
    },
  });

  const languages = new Languages(ui.language, code, {
    runOptions,
    status,
    download: ui.download,
    onChange: () => syncControls(),
    onLoaded: (count) => {
      // A restored last run keeps its final status until the next run.
      if (job.state === "idle" && !(ui.output.dataset.restored && count)) {
        status.set("idle", count ? "ready" : "no languages available");
      }
      syncControls();
    },
  });

  // Its messages and its opening arrive once this script has run, when every part below exists.
  const socket = new Conveyor.Socket({
    onMessage: (message) => events.onMessage(message),
    onReady: () => run.resume(),
    onClose: (wasReady) => run.lost(wasReady),
  });

  const liveInput = new LiveInput(
    { live: ui.live, input: ui.input, eof: ui.eof, form: ui.inputForm, hint: ui.inputHint },
    {
      job,
      socket,
      pane,
      status,
      onMode: () => {
        if (shownTab() === "stdin") ui.paneNote.textContent = liveInput.note();
      },
      onChange: () => syncControls(),
    },
  );

  const shareLinks = new ShareLinks(ui, {
    job,
    socket,
    retentionSeconds: config.jobRetentionSeconds,
    code,
    languages,
    testCases,
    pane,
    status,
    lastRun,
    showTab,
    onChange: () => syncControls(),
  });

  const run = new Run(ui, {
    job,
    socket,
    config,
    code,
    runOptions,
    testCases,
    pane,
    status,
    onChange: () => syncControls(),
  });

  const events = new RunEvents(ui, {
    job,
    resumed,
    run,
    liveInput,
    shareLinks,
    lastRun,
    testCases,
    quota,
    pane,
    status,
    onChange: () => syncControls(),
  });

  function showCodeSize(text) {
    const bytes = new TextEncoder().encode(text).length;
    const max = config.maxCodeBytes;
    ui.codeSize.textContent = max ? `${bytes.toLocaleString("en-US")} / ${max.toLocaleString("en-US")} bytes` : "";
    ui.codeSize.classList.toggle("over", Boolean(max) && bytes > max);
  }

  // -- tabs: stdin, test cases and options ------------------------------------------------------------------------

  function showTab(name) {
    for (const [key, tab] of Object.entries(ui.tabs)) {
      tab.setAttribute("aria-selected", String(key === name));
      ui.bodies[key].hidden = key !== name;
    }
    const notes = {
      tests: "compiled once, each test in a fresh sandbox",
      options: "sent with every run, checked by the server",
    };
    ui.paneNote.textContent = notes[name] || liveInput.note();
    document.querySelector(".editor-layout").dataset.tab = name;
  }

  function shownTab() {
    const [name] = Object.entries(ui.tabs).find(([, tab]) => tab.getAttribute("aria-selected") === "true") || ["stdin"];
    return name;
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

  // -- wiring --------------------------------------------------------------------------------------------------

  ui.run.addEventListener("click", () => run.start());
  ui.runTests.addEventListener("click", () => run.start({ tests: true }));
  ui.addTest.addEventListener("click", () => {
    const row = testCases.add();
    if (row) row.stdin.focus();
  });
  Conveyor.tablist(ui.tabs.stdin.parentElement);
  ui.tabs.stdin.addEventListener("click", () => showTab("stdin"));
  ui.tabs.tests.addEventListener("click", () => showTab("tests"));
  ui.tabs.options.addEventListener("click", () => showTab("options"));
  ui.stop.addEventListener("click", () => run.stop());
  document.addEventListener("keydown", (event) => {
    // The editor handles its own Ctrl+Enter (and marks the event handled).
    if (event.defaultPrevented) return;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run.start({ tests: shownTab() === "tests" }); // on the Tests tab, the tests
    }
  });

  liveInput.restore();
  showCodeSize(code.value);
  const codeLinked = !shared && location.hash.startsWith("#code=");
  if (!shared && !codeLinked) lastRun.restore();
  testCases.restore();
  languages.load();
  quota.refresh();
  if (shared) shareLinks.openRun(shared);
  else if (codeLinked) shareLinks.openCodeLink();
})();

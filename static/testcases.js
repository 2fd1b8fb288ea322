/* The editor's test-cases panel: stdin and expected output per test, run together as one judged job (the `tests`
   of a run: compiled once, each test in a fresh sandbox), and a verdict per test as each WebSocket `test` event
   arrives. The editor owns the socket; this owns the rows. */
"use strict";

class TestCases {
  /**
   * @param {HTMLElement} list the <ol> the rows go in
   * @param {{max?: number, onChange?: () => void}} options `max`: the server's MAX_TESTS
   */
  constructor(list, { max = 64, onChange = () => {} } = {}) {
    this.list = list;
    this.max = max;
    this.onChange = onChange;
    this.rows = [];
    this.quiet = false; // loading a shared run's tests: not this browser's own to remember
  }

  get length() {
    return this.rows.length;
  }

  /** The tests as a run sends them. */
  values() {
    return this.rows.map((row) => ({ stdin: row.stdin.value, expectedOutput: row.expected.value }));
  }

  add(test = {}) {
    if (this.rows.length >= this.max) return null;
    const { el } = Conveyor;
    const textarea = (name, label, value) =>
      el("textarea", { className: `test-${name}`, spellcheck: "false", rows: 2, "aria-label": label, placeholder: label }, value || "");
    const row = {
      stdin: textarea("stdin", "stdin", test.stdin),
      expected: textarea("expected", "expected output", test.expectedOutput),
      verdict: el("span", { className: "verdict", dataset: { verdict: "none" } }),
      figures: el("span", { className: "test-figures muted" }),
      output: el("pre", { className: "test-output", hidden: true }),
    };
    const remove = el("button", { type: "button", className: "btn btn-small test-remove", title: "Remove this test" }, "Remove");
    row.title = el("span", { className: "test-title" });
    row.node = el(
      "li",
      { className: "test" },
      el("div", { className: "test-head" }, row.title, row.verdict, row.figures, remove),
      el("div", { className: "test-fields" }, row.stdin, row.expected),
      row.output,
    );
    remove.addEventListener("click", () => this.remove(row));
    for (const area of [row.stdin, row.expected]) {
      area.addEventListener("input", () => {
        this.clear(row);
        this.changed();
      });
    }
    this.rows.push(row);
    this.list.append(row.node);
    this.changed();
    return row;
  }

  remove(row) {
    this.rows = this.rows.filter((r) => r !== row);
    row.node.remove();
    this.changed();
  }

  /** Replace every row (a shared job's tests, with their results when it has them). */
  load(tests) {
    for (const row of this.rows) row.node.remove();
    this.rows = [];
    this.quiet = true;
    try {
      tests.slice(0, this.max).forEach((test) => {
        const row = this.add({ stdin: test.stdin, expectedOutput: test.expectedOutput ?? "" });
        if (row && test.verdict) this.show({ ...test, index: this.rows.length - 1 });
      });
    } finally {
      this.quiet = false;
    }
    this.onChange();
  }

  /** Every row waits for its verdict. */
  pending() {
    for (const row of this.rows) {
      this.clear(row);
      row.verdict.dataset.verdict = "pending";
      row.verdict.textContent = "waiting…";
    }
  }

  clear(row) {
    row.verdict.dataset.verdict = "none";
    row.verdict.textContent = "";
    row.figures.textContent = "";
    row.output.hidden = true;
    row.output.textContent = "";
  }

  /** One test's result: a `test` event, or an entry of a job's `tests`. */
  show(result) {
    const row = this.rows[result.index];
    if (!row || !result.verdict) return;
    const { fmtMs, fmtBytes } = Conveyor;
    row.verdict.dataset.verdict = result.verdict;
    row.verdict.textContent = result.verdict.replace(/_/g, " ");
    const figures = [];
    if (result.timeMs != null) figures.push(fmtMs(result.timeMs));
    if (result.memoryPeakBytes != null) figures.push(fmtBytes(result.memoryPeakBytes));
    row.figures.textContent = figures.join(" · ");
    // What the program printed, when that is what failed it (or when it died): the expected output is above.
    const shown = result.verdict !== "accepted" && result.verdict !== "compile_error";
    const text = shown ? `${result.stdout || ""}${result.stderr ? `\n[stderr]\n${result.stderr}` : ""}` : "";
    row.output.textContent = text;
    row.output.hidden = !text;
  }

  /** Results left waiting (a run that ended before its tests did) say so. */
  settle(text) {
    for (const row of this.rows) {
      if (row.verdict.dataset.verdict === "pending") {
        row.verdict.dataset.verdict = "none";
        row.verdict.textContent = text;
      }
    }
  }

  /** "2 / 3 accepted" once every row has a verdict, else "". */
  summary() {
    const verdicts = this.rows.map((row) => row.verdict.dataset.verdict);
    if (!verdicts.length || verdicts.some((v) => v === "none" || v === "pending")) return "";
    return `${verdicts.filter((v) => v === "accepted").length} / ${verdicts.length} accepted`;
  }

  changed() {
    this.rows.forEach((row, i) => {
      row.title.textContent = `Test ${i + 1}`;
    });
    this.save();
    this.onChange();
  }

  // Kept across reloads like the code, within a budget (localStorage is ~5 MB per origin, shared by all keys).
  save() {
    if (this.quiet) return;
    const text = JSON.stringify(this.values());
    try {
      if (text.length <= TestCases.MAX_SAVED) localStorage.setItem(TestCases.KEY, text);
    } catch (err) {
      // not remembered
    }
  }

  /** The tests this browser had (call once the page is wired: it reports each row through onChange). */
  restore() {
    let saved = [];
    try {
      saved = JSON.parse(localStorage.getItem(TestCases.KEY) || "[]");
    } catch (err) {
      saved = [];
    }
    if (!Array.isArray(saved)) return;
    for (const test of saved.slice(0, this.max)) {
      if (test && typeof test === "object") this.add({ stdin: String(test.stdin ?? ""), expectedOutput: String(test.expectedOutput ?? "") });
    }
  }
}

TestCases.KEY = "conveyor.tests";
TestCases.MAX_SAVED = 64 * 1024;

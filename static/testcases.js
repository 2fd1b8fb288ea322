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
      el("textarea", { className: `test-${name}`, spellcheck: "false", rows: 2, "aria-label": label }, value || "");
    // A visible caption over each field: a placeholder is gone as soon as the field has text.
    const field = (label, area) => el("label", { className: "test-field" }, el("span", { className: "test-field-label" }, label), area);
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
      el("div", { className: "test-fields" }, field("stdin", row.stdin), field("expected output", row.expected)),
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
    const { el, fmtMs, fmtBytes } = Conveyor;
    row.verdict.dataset.verdict = result.verdict;
    row.verdict.textContent = result.verdict.replace(/_/g, " ");
    const figures = [];
    if (result.timeMs != null) figures.push(fmtMs(result.timeMs));
    if (result.memoryPeakBytes != null) figures.push(fmtBytes(result.memoryPeakBytes));
    row.figures.textContent = figures.join(" · ");
    // What the program printed, when that is what failed it (or when it died): a wrong answer as a line diff
    // against the expected output, anything else as printed.
    const shown = result.verdict !== "accepted" && result.verdict !== "compile_error";
    const stderr = result.stderr ? `\n[stderr]\n${result.stderr}` : "";
    row.output.replaceChildren();
    delete row.output.dataset.kind;
    if (shown && result.verdict === "wrong_answer") {
      row.output.dataset.kind = "diff";
      const expected = result.expectedOutput ?? row.expected.value;
      row.output.append(
        el("span", { className: "diff-caption" }, "expected (−) against printed (+), trailing spaces ignored:\n"),
        ...TestCases.lineDiff(expected, result.stdout || "").map(([op, line]) =>
          el("span", { className: `diff-line diff-${{ "-": "del", "+": "add", " ": "same" }[op]}` }, `${op} ${line}\n`),
        ),
        stderr,
      );
    } else if (shown) {
      row.output.append(el("span", { className: "diff-caption" }, "printed:\n"), `${result.stdout || ""}${stderr}`);
    }
    row.output.hidden = !shown || (!result.stdout && !stderr && result.verdict !== "wrong_answer");
  }

  /**
   * A line diff of `expected` and `actual` as [op, line] pairs (op "-" expected only, "+" printed only, " " both),
   * lines compared as the judge does (trailing whitespace ignored). A longest common subsequence, or line by line
   * when the table would be too big for a page.
   */
  static lineDiff(expected, actual) {
    const split = (text) => text.replace(/[\s\0]+$/, "").split("\n");
    const a = split(expected);
    const b = split(actual);
    const key = (line) => line.replace(/[ \t\r\v\f\0]+$/, "");
    if (a.length * b.length > 1_000_000) {
      const out = [];
      for (let i = 0; i < Math.max(a.length, b.length); i += 1) {
        if (i < a.length && i < b.length && key(a[i]) === key(b[i])) out.push([" ", b[i]]);
        else {
          if (i < a.length) out.push(["-", a[i]]);
          if (i < b.length) out.push(["+", b[i]]);
        }
      }
      return out;
    }
    // lcs[i][j]: the longest common subsequence of a[i:] and b[j:].
    const lcs = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
    for (let i = a.length - 1; i >= 0; i -= 1) {
      for (let j = b.length - 1; j >= 0; j -= 1) {
        lcs[i][j] = key(a[i]) === key(b[j]) ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
      }
    }
    const out = [];
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && key(a[i]) === key(b[j])) {
        out.push([" ", b[j]]);
        i += 1;
        j += 1;
      } else if (i < a.length && (j === b.length || lcs[i + 1][j] >= lcs[i][j + 1])) {
        out.push(["-", a[i]]);
        i += 1;
      } else {
        out.push(["+", b[j]]);
        j += 1;
      }
    }
    return out;
  }

  /** Counts of the verdicts of rows that have one: {accepted: 2, wrong_answer: 1, ...}. */
  verdictCounts() {
    const counts = {};
    for (const row of this.rows) {
      const verdict = row.verdict.dataset.verdict;
      if (verdict !== "none" && verdict !== "pending") counts[verdict] = (counts[verdict] || 0) + 1;
    }
    return counts;
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

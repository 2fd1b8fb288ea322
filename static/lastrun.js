/* The editor's last run, kept across reloads (localStorage "conveyor.lastRun"): its output by stream, its stdin,
   status line and figures, shown again with a note when the page comes back. */
"use strict";

class LastRun {
  /**
   * @param {{output: HTMLElement, language: HTMLSelectElement, stdin: HTMLTextAreaElement}} fields the output
   *   pane's <pre>, the language picker and the stdin pane
   * @param {OutputPane} pane @param {StatusLine} status
   */
  constructor({ output, language, stdin }, pane, status) {
    this.output = output;
    this.language = language;
    this.stdin = stdin;
    this.pane = pane;
    this.status = status;
  }

  /** Keep the run `jobId` as the page shows it now, with its `figures` (the figures bar's [label, value] pairs). */
  save(jobId, figures) {
    const chunks = this.chunks();
    const record = {
      jobId,
      language: this.language.value,
      stdin: this.stdin.value.slice(0, LastRun.MAX_SAVED_OUTPUT),
      status: { state: this.status.state, text: this.status.text },
      figures,
      chunks,
      savedAt: Date.now(),
    };
    try {
      localStorage.setItem(LastRun.KEY, JSON.stringify(record));
    } catch (err) {
      // Full or refused storage: the output is simply not restored after a reload.
    }
  }

  /** The output pane's text as [stream, text] pairs, cut at MAX_SAVED_OUTPUT characters with a note saying so. */
  chunks() {
    const chunks = [];
    let budget = LastRun.MAX_SAVED_OUTPUT;
    for (const node of this.output.children) {
      const stream = node.dataset.stream || "stdout";
      const text = stream === "compile" ? node.querySelector(".compile-text").textContent : node.textContent;
      if (text.length > budget) {
        chunks.push([stream, text.slice(0, budget)], ["note", "\n(the saved copy of this output stops here)\n"]);
        break;
      }
      chunks.push([stream, text]);
      budget -= text.length;
    }
    return chunks;
  }

  /** The saved run, null when there is none (or what is stored is not one). */
  read() {
    try {
      const record = JSON.parse(localStorage.getItem(LastRun.KEY) || "null");
      return record && Array.isArray(record.chunks) ? record : null;
    } catch (err) {
      return null;
    }
  }

  /** Show the saved run again: its stdin, output, final status and figures, and when it was saved. */
  restore() {
    const record = this.read();
    if (!record) return;
    const pane = this.pane;
    this.stdin.value = typeof record.stdin === "string" ? record.stdin : "";
    for (const [stream, text] of record.chunks) {
      if (stream === "compile") pane.compile(String(text));
      else if (stream === "note" || stream === "error") pane.note(String(text).replace(/^\n|\n$/g, ""), stream);
      else pane.append(stream === "stderr" || stream === "stdin" ? stream : "stdout", String(text));
    }
    if (record.status && StatusLine.FINAL.has(record.status.state)) {
      this.status.set(record.status.state, String(record.status.text));
    }
    if (Array.isArray(record.figures)) pane.showFigures(record.figures);
    const when = new Date(record.savedAt || Date.now()).toLocaleTimeString([], { hour12: false });
    pane.note(`(restored: your last run, at ${when})`);
    this.output.dataset.restored = "true";
  }
}

LastRun.KEY = "conveyor.lastRun";
// The saved copy of the last run's output is cut here: localStorage holds ~5 MB per origin, shared by all keys.
LastRun.MAX_SAVED_OUTPUT = 64 * 1024;

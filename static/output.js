/* The editor's output pane: program text by stream, notes, the compiler's output and the figures bar above it,
   keeping the last line in view when it was; and the words and figures of a finished run. */
"use strict";

class OutputPane {
  /** @param {HTMLElement} output the <pre> @param {HTMLElement} figures the bar above it */
  constructor(output, figures) {
    this.output = output;
    this.figures = figures;
  }

  nearBottom() {
    const out = this.output;
    return out.scrollHeight - out.scrollTop - out.clientHeight < 40;
  }

  /** Keep the last line in view across `change` when it was in view before. */
  sticking(change) {
    const stick = this.nearBottom();
    change();
    if (stick) this.output.scrollTop = this.output.scrollHeight;
  }

  /** Append program text. Consecutive chunks of one stream share a span, so long outputs stay light. */
  append(stream, text) {
    this.sticking(() => {
      const last = this.output.lastElementChild;
      if (last && last.dataset.stream === stream) {
        last.append(document.createTextNode(text));
      } else {
        this.output.append(Conveyor.el("span", { className: `out out-${stream}`, dataset: { stream } }, text));
      }
    });
  }

  note(text, kind = "note") {
    this.sticking(() => {
      const last = this.output.lastElementChild;
      const needsBreak = last && last.textContent && !last.textContent.endsWith("\n");
      const attrs = { className: `out out-${kind}`, dataset: { stream: kind } };
      this.output.append(Conveyor.el("span", attrs, needsBreak ? "\n" : "", text, "\n"));
    });
  }

  compile(text) {
    if (!text || this.output.textContent.includes(text.trim())) return;
    const { el } = Conveyor;
    // Spans (styled as blocks): the output pane is a <pre>, which holds phrasing content only.
    const block = el(
      "span",
      { className: "compile-block", dataset: { stream: "compile" } },
      el("span", { className: "compile-head" }, "Compiler output"),
      el("span", { className: "compile-text" }, text),
    );
    this.output.prepend(block);
  }

  /** The figures bar: [label, value] pairs. It takes room from the pane: one that showed its last line still does. */
  showFigures(figures) {
    const { el } = Conveyor;
    this.sticking(() => {
      this.figures.replaceChildren(
        ...figures.map(([label, value]) =>
          el("span", { className: "figure", dataset: { figure: label } }, el("span", { className: "figure-label" }, label), value),
        ),
      );
      this.figures.hidden = figures.length === 0;
    });
  }

  /** The status line of a finished run (a terminal event or a job record with its `type`). */
  static finalText(message) {
    const { fmtMs } = Conveyor;
    const present = (value) => value !== null && value !== undefined;
    // A program that never ran has no execution time, whatever the record says about the compile stage.
    const compileFailed = OutputPane.COMPILE_REASONS.has(message.reason);
    const time = present(message.executionTimeMs) && !compileFailed;
    const parts = [];
    switch (message.type) {
      case "completed":
        parts.push("completed", `exit ${message.exitCode}`);
        if (time) parts.push(fmtMs(message.executionTimeMs));
        break;
      case "failed": {
        parts.push(`failed: ${message.reason || "error"}`);
        if (present(message.exitCode)) parts.push(`exit ${message.exitCode}`);
        else if (message.signal) parts.push(message.signal);
        if (time) parts.push(fmtMs(message.executionTimeMs));
        else if (compileFailed && present(message.compileTimeMs)) parts.push(`compiled for ${fmtMs(message.compileTimeMs)}`);
        break;
      }
      case "timeout":
        parts.push(time ? `timeout after ${fmtMs(message.executionTimeMs)}` : "timeout");
        break;
      default:
        parts.push(message.reason && message.reason !== "stopped" ? `cancelled (${message.reason})` : "cancelled");
    }
    if (message.cpuTimeMs != null) parts.push(`CPU ${fmtMs(message.cpuTimeMs)}`);
    if (message.memoryPeakBytes != null) parts.push(`${(message.memoryPeakBytes / 1048576).toFixed(1)} MiB peak`);
    let text = parts.join(", ");
    if (message.truncated) text += " · output truncated";
    return text;
  }

  /**
   * Compile, run, CPU and memory figures of a finished run: only those the server sent (older servers send fewer),
   * and no run time for a program that never ran.
   */
  static figuresOf(message) {
    const { fmtMs, fmtBytes } = Conveyor;
    const figures = [];
    const add = (label, value, format) => value !== null && value !== undefined && figures.push([label, format(value)]);
    add("compile", message.compileTimeMs, fmtMs);
    add("compile CPU", message.compileCpuTimeMs, fmtMs);
    add("compile memory", message.compileMemoryPeakBytes, fmtBytes);
    if (!OutputPane.COMPILE_REASONS.has(message.reason)) {
      add("run", message.executionTimeMs, fmtMs);
      add("CPU", message.cpuTimeMs, fmtMs);
      add("memory", message.memoryPeakBytes, fmtBytes);
    }
    add("wait", message.waitTimeMs, fmtMs);
    return figures;
  }
}

OutputPane.COMPILE_REASONS = new Set(["compile_error", "compile_timeout"]);

/* The editor's Options tab: program arguments, compiler flags and limits sent with every run (the `args`,
   `compilerOptions`, `timeoutMs` and `memoryLimitMb` of a run, docs/judge.md), and the editor's font size; all kept
   across reloads. The server checks every value again and names the field it refuses. */
"use strict";

class RunOptions {
  /**
   * @param {{args: HTMLTextAreaElement, flags: HTMLTextAreaElement, flagsNote: HTMLElement, timeout: HTMLInputElement,
   *          memory: HTMLInputElement, font: HTMLSelectElement}} fields
   */
  constructor(fields) {
    this.fields = fields;
    this.restore();
    for (const field of [fields.args, fields.flags, fields.timeout, fields.memory]) {
      field.addEventListener("input", () => this.save());
    }
    fields.font.addEventListener("change", () => {
      this.applyFont();
      this.save();
    });
    this.applyFont();
  }

  static lines(text) {
    return text.split("\n").map((line) => line.trim()).filter(Boolean);
  }

  /** Compiler flags only for a language with a compile stage (the server refuses them otherwise). */
  setCompiled(compiled) {
    this.fields.flags.disabled = !compiled;
    this.fields.flagsNote.textContent = compiled ? "" : "(this language is not compiled)";
  }

  /** The run fields these options add; `forTests` leaves out what a judged run does not take from here. */
  values() {
    const { args, flags, timeout, memory } = this.fields;
    const out = {};
    const argv = RunOptions.lines(args.value);
    if (argv.length) out.args = argv;
    const options = RunOptions.lines(flags.value);
    if (options.length && !flags.disabled) out.compilerOptions = options;
    const number = (input) => (input.value.trim() && Number.isFinite(Number(input.value)) ? Math.round(Number(input.value)) : null);
    if (number(timeout) !== null) out.timeoutMs = number(timeout);
    if (number(memory) !== null) out.memoryLimitMb = number(memory);
    return out;
  }

  applyFont() {
    document.documentElement.style.setProperty("--code-font-size", `${Number(this.fields.font.value) || 13}px`);
  }

  save() {
    const { args, flags, timeout, memory, font } = this.fields;
    const record = { args: args.value, flags: flags.value, timeout: timeout.value, memory: memory.value, font: font.value };
    try {
      localStorage.setItem(RunOptions.KEY, JSON.stringify(record));
    } catch (err) {
      // not remembered
    }
  }

  restore() {
    let record = null;
    try {
      record = JSON.parse(localStorage.getItem(RunOptions.KEY) || "null");
    } catch (err) {
      record = null;
    }
    if (!record || typeof record !== "object") return;
    const { args, flags, timeout, memory, font } = this.fields;
    const text = (value) => (typeof value === "string" ? value.slice(0, 16_384) : "");
    args.value = text(record.args);
    flags.value = text(record.flags);
    timeout.value = text(record.timeout);
    memory.value = text(record.memory);
    if ([...font.options].some((o) => o.value === record.font)) font.value = record.font;
  }
}

RunOptions.KEY = "conveyor.options";

/* A <textarea> that behaves like a small code editor: line numbers, Tab indents, Enter keeps the indentation. */
"use strict";

class CodeArea {
  /**
   * `indentUnit()` says what one level is for the current language (Go wants a tab). `onChange` runs after every
   * edit, typed or programmatic.
   */
  constructor(textarea, gutter, { indentUnit = () => "    ", onChange = () => {} } = {}) {
    this.area = textarea;
    this.gutter = gutter;
    this.indentUnit = indentUnit;
    this.onChange = onChange;
    // Escape releases the Tab key for one press, so keyboard users can still leave the code area.
    this.tabReleased = false;
    textarea.addEventListener("keydown", (event) => this.onKeyDown(event));
    textarea.addEventListener("input", () => this.changed());
    textarea.addEventListener("scroll", () => {
      this.gutter.scrollTop = this.area.scrollTop;
    });
  }

  get value() {
    return this.area.value;
  }

  set value(text) {
    this.area.value = text;
    this.changed();
  }

  changed() {
    const lines = this.area.value.split("\n").length;
    if (this.gutter.dataset.lines !== String(lines)) {
      this.gutter.dataset.lines = String(lines);
      this.gutter.textContent = Array.from({ length: lines }, (_, i) => i + 1).join("\n");
    }
    this.gutter.scrollTop = this.area.scrollTop;
    this.onChange(this.area.value);
  }

  onKeyDown(event) {
    if (event.key === "Escape") {
      this.tabReleased = true;
      return;
    }
    const plain = !event.ctrlKey && !event.altKey && !event.metaKey;
    if (event.key === "Tab" && plain && !this.tabReleased) {
      event.preventDefault();
      this.indent(event.shiftKey);
    } else if (event.key === "Enter" && plain && !event.shiftKey) {
      event.preventDefault();
      this.newline();
    }
    this.tabReleased = false;
  }

  /** Insert text as if typed, so the browser's undo history keeps working. */
  insert(text) {
    if (!document.execCommand("insertText", false, text)) {
      this.area.setRangeText(text, this.area.selectionStart, this.area.selectionEnd, "end");
      this.changed();
    }
  }

  indent(outdent) {
    const area = this.area;
    const { value, selectionStart, selectionEnd } = area;
    const unit = this.indentUnit();
    if (!outdent && selectionStart === selectionEnd) {
      this.insert(unit);
      return;
    }
    const lineStart = value.lastIndexOf("\n", selectionStart - 1) + 1;
    const changed = value
      .slice(lineStart, selectionEnd)
      .split("\n")
      .map((line) => {
        if (!outdent) return unit + line;
        return line.startsWith("\t") ? line.slice(1) : line.replace(/^ {1,4}/, "");
      })
      .join("\n");
    area.setSelectionRange(lineStart, selectionEnd);
    this.insert(changed);
    area.setSelectionRange(lineStart, lineStart + changed.length);
  }

  /** A new line with the current line's indentation, one level deeper after an opening `:`, `{`, `(` or `[`. */
  newline() {
    const { value, selectionStart } = this.area;
    const lineStart = value.lastIndexOf("\n", selectionStart - 1) + 1;
    const line = value.slice(lineStart, selectionStart);
    let indent = line.match(/^[ \t]*/)[0];
    if (/[:{([]\s*$/.test(line)) indent += line.startsWith("\t") ? "\t" : this.indentUnit();
    this.insert(`\n${indent}`);
  }
}

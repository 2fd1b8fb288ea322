/* The editor's input line under the output: live input on or off (remembered in this browser), typed lines and end
   of input sent to the running program, and a hint when a quiet live run may be waiting for input. */
"use strict";

class LiveInput {
  /**
   * @param {{live: HTMLInputElement, input: HTMLInputElement, eof: HTMLButtonElement, form: HTMLFormElement,
   *          hint: HTMLElement}} fields the "Live input" checkbox, the input line, its EOF button, form and hint
   * @param {{job: object, socket: Conveyor.Socket, pane: OutputPane, status: StatusLine, onMode: () => void,
   *          onChange: () => void}} parts `job` the run shown; `onMode` when live input is switched, `onChange` at
   *   the end of input (the editor's controls)
   */
  constructor(fields, { job, socket, pane, status, onMode, onChange }) {
    Object.assign(this, { fields, job, socket, pane, status, onMode, onChange });
    fields.live.addEventListener("change", () => {
      try {
        localStorage.setItem(LiveInput.KEY, fields.live.checked ? "1" : "0");
      } catch (err) {
        // not remembered
      }
      this.showMode();
    });
    fields.eof.addEventListener("click", () => this.sendEof());
    fields.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendLine();
    });
    fields.input.addEventListener("keydown", (event) => {
      if (event.key === "d" && event.ctrlKey) {
        event.preventDefault();
        this.sendEof();
      }
    });
  }

  get checked() {
    return this.fields.live.checked;
  }

  /** This browser's choice; a visitor opening a share link starts with it off. */
  restore() {
    try {
      this.fields.live.checked = localStorage.getItem(LiveInput.KEY) === "1";
    } catch (err) {
      this.fields.live.checked = false;
    }
    this.showMode();
  }

  /** What the next run does with the stdin pane's text, for the pane's note. */
  note() {
    return this.checked ? "sent first; stdin then stays open for live input" : "sent whole, then end of input";
  }

  /** What the next run does with stdin, in the pane note and the input line's placeholder. */
  showMode() {
    this.onMode();
    this.fields.input.placeholder = this.checked
      ? "Live input: Enter sends a line, Ctrl+D ends input"
      : "Live input is off: stdin ends after the pane's text";
  }

  /** A live run that has been quiet a while may be blocked reading stdin: say so near the input line. */
  showWaitHint() {
    const { job, fields } = this;
    const quiet = Date.now() - job.lastActivity >= LiveInput.WAIT_HINT_MS;
    const waiting = job.live && job.state === "running" && !job.eofSent && quiet;
    if (waiting === job.waitHinted) return;
    job.waitHinted = waiting;
    fields.hint.hidden = !waiting;
    fields.hint.textContent = waiting
      ? "No output for a while: the program may be waiting for input. Type a line and press Enter, or EOF to end input."
      : "";
    fields.form.dataset.waiting = String(waiting);
    if (waiting) this.status.announce("no output for a while: the program may be waiting for input");
  }

  sendLine() {
    const input = this.fields.input;
    if (input.disabled) return;
    const line = input.value;
    if (this.socket.send({ type: "stdin", jobId: this.job.id, data: `${line}\n` })) {
      this.job.lastActivity = Date.now();
      this.showWaitHint();
      this.pane.append("stdin", `${line}\n`);
      input.value = "";
    }
  }

  sendEof() {
    const input = this.fields.input;
    if (input.disabled) return;
    if (input.value) this.sendLine();
    if (this.socket.send({ type: "eof", jobId: this.job.id })) {
      this.job.eofSent = true;
      this.pane.note("(end of input)");
      this.onChange();
    }
  }
}

// Live input is a choice this browser remembers.
LiveInput.KEY = "conveyor.liveInput";
// After this long without output from a live run that still runs, the page says it may be waiting for input.
// The server cannot tell a program blocked in read() from one computing quietly, so the wording says "may".
LiveInput.WAIT_HINT_MS = 1500;

/* The editor's status line: the state of the run shown, with a clock while it runs. The line itself is not a live
   region; a change of state, and the page's other announcements, are read out through #status-announce. */
"use strict";

class StatusLine {
  /** @param {HTMLElement} node the visible line @param {HTMLElement} announcer the visually hidden live region */
  constructor(node, announcer) {
    this.node = node;
    this.announcer = announcer;
    this.ticker = null;
  }

  get state() {
    return this.node.dataset.state;
  }

  get text() {
    return this.node.textContent;
  }

  /**
   * The visible status line is not a live region (its clock changes ten times a second); a change of state is
   * read out once through the visually hidden #status-announce, with `spoken` when the shown text has a clock.
   */
  set(state, text, spoken = text) {
    const node = this.node;
    const changed = node.dataset.state !== state || node.dataset.spoken !== spoken;
    node.dataset.state = state;
    node.dataset.spoken = spoken;
    node.textContent = text;
    node.title = text; // the line is cut with an ellipsis rather than wrapping the toolbar
    if (changed) this.announce(spoken);
  }

  announce(text) {
    this.announcer.textContent = text;
  }

  /** "running 1.2 s" from `startedAt` (local Date.now() ms), ten times a second; `onTick` runs after each tick. */
  startClock(startedAt, onTick) {
    this.stopClock();
    const tick = () => {
      this.set("running", `running ${(Math.max(0, Date.now() - startedAt) / 1000).toFixed(1)} s`, "running");
      onTick();
    };
    tick();
    this.ticker = setInterval(tick, 100);
  }

  stopClock() {
    clearInterval(this.ticker);
    this.ticker = null;
  }
}

// The states a run ends in: its last event's type, its job's status, the status line a restored last run shows.
StatusLine.FINAL = new Set(["completed", "failed", "timeout", "cancelled"]);

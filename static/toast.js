/* The dashboard's toast: one short message (role="alert", so it is read out) that hides itself after a while. */
"use strict";

class Toast {
  /** @param {HTMLElement} node the toast element, hidden until there is something to say */
  constructor(node) {
    this.node = node;
    this.timer = null;
  }

  /** Show `text`, styled by `kind` ("ok", or "" for a failure), replacing any message still shown. */
  show(text, kind = "") {
    this.node.textContent = text;
    this.node.dataset.kind = kind;
    this.node.hidden = false;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => (this.node.hidden = true), Toast.SHOW_MS);
  }
}

Toast.SHOW_MS = 5000;

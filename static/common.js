/* Shared by the editor and the dashboard: page config, DOM helpers, formatting and a reconnecting WebSocket. */
"use strict";

const Conveyor = (() => {
  /** The server's settings for this page, from the JSON script tag the template fills. */
  function config() {
    const node = document.getElementById("config");
    try {
      return node ? JSON.parse(node.textContent || "{}") : {};
    } catch (err) {
      return {};
    }
  }

  /**
   * Build an element. Children that are strings become text nodes: data from the server or from programs is
   * never parsed as HTML.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** "35 ms", "1.2 s", "2 min 5 s"; "–" when unknown. */
  function fmtMs(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    if (ms === 0) return "0 ms";
    if (ms < 1) return "<1 ms";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
    const minutes = Math.floor(ms / 60_000);
    return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
  }

  /** "512 B", "3.4 KiB", "9.0 MiB"; "–" when unknown. */
  function fmtBytes(bytes) {
    if (bytes === null || bytes === undefined || Number.isNaN(bytes)) return "–";
    if (bytes < 1024) return `${Math.round(bytes)} B`;
    const units = ["KiB", "MiB", "GiB"];
    let value = bytes / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
  }

  /** Local wall-clock time of an ISO string or epoch milliseconds. */
  function fmtClock(value) {
    if (value === null || value === undefined) return "–";
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return "–";
    return date.toLocaleTimeString([], { hour12: false });
  }

  function fmtNumber(value) {
    if (value === null || value === undefined) return "–";
    return Number(value).toLocaleString("en-US");
  }

  /**
   * A WebSocket to this server's /ws that reconnects with exponential backoff and jitter (so a restarted server
   * is not hit by every browser at the same instant). `onReady` runs after each `hello`, which is where callers
   * re-authenticate and re-subscribe.
   */
  class Socket {
    constructor({ onMessage, onReady, onClose } = {}) {
      this.onMessage = onMessage || (() => {});
      this.onReady = onReady || (() => {});
      this.onClose = onClose || (() => {});
      this.ws = null;
      this.ready = false;
      this.attempt = 0;
      this.timer = null;
      this.indicator = document.getElementById("conn");
      this.indicatorText = document.getElementById("conn-text");
      this.connect();
    }

    url() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      return `${scheme}//${location.host}/ws`;
    }

    setState(state, text) {
      if (this.indicator) this.indicator.dataset.state = state;
      if (this.indicatorText) this.indicatorText.textContent = text;
    }

    connect() {
      clearTimeout(this.timer);
      this.setState("connecting", this.attempt ? "reconnecting…" : "connecting…");
      let ws;
      try {
        ws = new WebSocket(this.url());
      } catch (err) {
        this.scheduleReconnect();
        return;
      }
      this.ws = ws;
      ws.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        if (message.type === "hello") {
          this.ready = true;
          this.attempt = 0;
          this.setState("open", "live");
          this.onReady(message);
        }
        this.onMessage(message);
      });
      ws.addEventListener("close", () => {
        if (this.ws !== ws) return;
        const wasReady = this.ready;
        this.ready = false;
        this.ws = null;
        this.onClose(wasReady);
        this.scheduleReconnect();
      });
    }

    scheduleReconnect() {
      const base = Math.min(10_000, 500 * 2 ** this.attempt);
      const delay = Math.round(base * (0.8 + Math.random() * 0.4));
      this.attempt += 1;
      this.setState("closed", `offline · retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
      this.timer = setTimeout(() => this.connect(), delay);
    }

    /** Send a message now; false when the socket is not open (the caller tells the user). */
    send(message) {
      if (!this.ws || !this.ready || this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(JSON.stringify(message));
      return true;
    }
  }

  /**
   * Keyboard for a role="tablist" (WAI-ARIA tabs, automatic activation): Left/Right (wrapping), Home and End move to
   * a tab and click it; only the selected tab is in the Tab order, kept so as aria-selected changes.
   */
  function tablist(list) {
    const tabs = () => [...list.querySelectorAll('[role="tab"]')];
    const sync = () => tabs().forEach((tab) => (tab.tabIndex = tab.getAttribute("aria-selected") === "true" ? 0 : -1));
    list.addEventListener("keydown", (event) => {
      const all = tabs();
      const at = all.indexOf(document.activeElement);
      if (at < 0) return;
      const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: all.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      const tab = all[(next + all.length) % all.length];
      tab.focus();
      tab.click();
    });
    new MutationObserver(sync).observe(list, { attributes: true, subtree: true, attributeFilter: ["aria-selected"] });
    sync();
  }

  // The skip link moves focus itself: following "#main" alone leaves focus where it was on some pages (/docs, whose
  // Swagger UI owns the address's fragment).
  const skip = document.querySelector(".skip-link");
  if (skip) {
    skip.addEventListener("click", (event) => {
      const main = document.getElementById("main");
      if (!main) return;
      event.preventDefault();
      main.focus();
      main.scrollIntoView({ block: "start" });
    });
  }

  return { config, el, fmtMs, fmtBytes, fmtClock, fmtNumber, Socket, tablist };
})();

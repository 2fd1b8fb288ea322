/* The stdin pane's text on its way to a run: checked against MAX_STDIN_BYTES before sending, split so that no
   WebSocket frame passes WS_MAX_MESSAGE_BYTES (the server closes the socket past it), and followed by end of
   input unless the run is live. */
"use strict";

const PaneInput = (() => {
  const encoder = new TextEncoder();
  const frameBytes = (message) => encoder.encode(JSON.stringify(message)).length;
  // A frame is kept this far under the cap: the server counts the frame, the page counts the JSON text.
  const SLACK = 256;

  /** The longest prefix of `text` (in UTF-16 units, never splitting a surrogate pair) for which `fits` holds. */
  function longestPrefix(text, fits) {
    let lo = 0; // fits
    let hi = text.length; // the answer is at most this
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (fits(text.slice(0, mid))) lo = mid;
      else hi = mid - 1;
    }
    const unit = text.charCodeAt(lo - 1);
    if (lo > 0 && lo < text.length && unit >= 0xd800 && unit <= 0xdbff) lo -= 1; // keep a surrogate pair whole
    return lo;
  }

  /**
   * Plan a run's input: `run` is the run message without `stdin`. Returns `{error}` when the text is over the
   * server's limit, else `{run, rest}`: the run message carrying as much of the text as fits one frame, and the
   * remainder in pieces for `stdin` messages, each one frame.
   */
  function plan(run, text, { maxMessageBytes, maxStdinBytes }) {
    const size = encoder.encode(text).length;
    if (maxStdinBytes != null && size > maxStdinBytes) {
      return { error: `the input is ${Conveyor.fmtBytes(size)}; this server takes at most ${Conveyor.fmtBytes(maxStdinBytes)}` };
    }
    const cap = Math.max(1024, (maxMessageBytes || 262_144) - SLACK);
    if (frameBytes({ ...run, stdin: "" }) > cap) {
      return { error: `the code and its settings do not fit one message of ${Conveyor.fmtBytes(cap + SLACK)}` };
    }
    const firstLength = longestPrefix(text, (part) => frameBytes({ ...run, stdin: part }) <= cap);
    const rest = [];
    let remaining = text.slice(firstLength);
    const probe = { type: "stdin", jobId: "0".repeat(32), data: "", requestId: PaneInput.REQUEST };
    while (remaining) {
      const length = Math.max(2, longestPrefix(remaining, (part) => frameBytes({ ...probe, data: part }) <= cap));
      rest.push(remaining.slice(0, length));
      remaining = remaining.slice(length);
    }
    return { run: { ...run, stdin: text.slice(0, firstLength) }, rest };
  }

  return { plan, REQUEST: "pane-input" };
})();

/* Links that carry a program in the address's fragment (`/#code=<deflated JSON, base64url>`): language, code, stdin
   and tests, compressed by the browser (CompressionStream), kept by nobody. The fragment never leaves the browser:
   the server neither stores nor sees it, so such a link lives as long as the address itself. */
"use strict";

const CodeLink = (() => {
  const PREFIX = "#code=";
  // Addresses past this length are cut by some chat tools and browsers; such a program is shared as a run instead.
  const MAX_URL = 32_000;

  /** `bytes` through `stream`, refusing an output past `limit` bytes as it comes (a crafted fragment cannot make
   *  the page inflate without end). */
  async function pipe(bytes, stream, limit = Infinity) {
    const reader = new Blob([bytes]).stream().pipeThrough(stream).getReader();
    const parts = [];
    let size = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > limit) {
        await reader.cancel();
        throw new Error("too large");
      }
      parts.push(value);
    }
    const out = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  function toBase64Url(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64Url(text) {
    const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  }

  /** The link for `program` ({language, code, stdin, tests}), or null when it would be too long. */
  async function make(program) {
    const json = new TextEncoder().encode(JSON.stringify({ v: 1, ...program }));
    const packed = await pipe(json, new CompressionStream("deflate-raw"));
    const url = new URL(location.href);
    url.search = "";
    url.hash = PREFIX.slice(1) + toBase64Url(packed);
    return url.href.length <= MAX_URL ? url.href : null;
  }

  /** The program in this page's fragment, null when there is none; throws when it is damaged. */
  async function read() {
    if (!location.hash.startsWith(PREFIX)) return null;
    const packed = fromBase64Url(location.hash.slice(PREFIX.length));
    const json = await pipe(packed, new DecompressionStream("deflate-raw"), 8 << 20);
    const program = JSON.parse(new TextDecoder().decode(json));
    if (!program || typeof program !== "object" || typeof program.code !== "string") throw new Error("not a program");
    return {
      language: typeof program.language === "string" ? program.language : "",
      code: program.code,
      stdin: typeof program.stdin === "string" ? program.stdin : "",
      tests: Array.isArray(program.tests) ? program.tests.filter((t) => t && typeof t === "object") : [],
    };
  }

  return { make, read };
})();

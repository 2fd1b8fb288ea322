/* The editor's languages and the code kept for each: the list from GET /runtimes (retried until it loads), the
   language picker (remembered in this browser), each language's code in localStorage (else its starter), and the
   code saved as a file. */
"use strict";

class Languages {
  /**
   * @param {HTMLSelectElement} select the language picker @param {CodeArea} code
   * @param {{runOptions: RunOptions, status: StatusLine, download: HTMLButtonElement, onChange: () => void,
   *          onLoaded: (count: number) => void}} parts `onChange` after a language is picked, `onLoaded` once the
   *   list is in the picker
   */
  constructor(select, code, { runOptions, status, download, onChange, onLoaded }) {
    this.select = select;
    this.code = code;
    this.runOptions = runOptions;
    this.status = status;
    this.onLoaded = onLoaded;
    this.list = [];
    this.loading = false; // a language switch sets the text: that is not an edit to save
    this.ready = new Promise((resolve) => {
      this.resolveReady = resolve;
    });
    select.addEventListener("change", () => {
      try {
        localStorage.setItem("conveyor.language", select.value);
      } catch (err) {
        // not remembered
      }
      this.loadCode(select.value);
      this.showCompiled();
      onChange();
    });
    download.addEventListener("click", () => this.download());
  }

  find(language) {
    return this.list.find((r) => r.id === language);
  }

  has(language) {
    return this.list.some((r) => r.id === language);
  }

  /** GET /runtimes, again after a growing pause while that fails; then the picker and its language's code. */
  async load(attempt = 0) {
    try {
      const response = await fetch("/runtimes", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      const list = Array.isArray(data) ? data : data.runtimes || data.languages || [];
      this.list = list
        .map(Languages.normalize)
        .filter((r) => r.id && r.available !== false && !Languages.NOT_TYPED.has(r.id));
    } catch (err) {
      this.status.set("error", `could not load languages (${err.message}); retrying…`);
      setTimeout(() => this.load(attempt + 1), Math.min(10_000, 1000 * 2 ** attempt));
      return;
    }
    this.fill();
    this.resolveReady();
    this.onLoaded(this.list.length);
  }

  /** The picker holds the list, on this browser's last language, else Python, else the first. */
  fill() {
    let preferred = null;
    try {
      preferred = localStorage.getItem("conveyor.language");
    } catch (err) {
      preferred = null;
    }
    const select = this.select;
    select.replaceChildren(...this.list.map((r) => Conveyor.el("option", { value: r.id }, r.label)));
    const initial = this.find(preferred) || this.find("python") || this.list[0];
    if (initial) select.value = initial.id;
    select.disabled = this.list.length === 0;
    this.loadCode(select.value);
    this.showCompiled();
  }

  /** Accept a few shapes of /runtimes entries: the sandbox owns that document. */
  static normalize(item) {
    if (typeof item === "string") return { id: item, label: item, aliases: [] };
    const id = item.id || item.name || item.language;
    const name = item.displayName || item.label || NAMES[id] || item.name || id;
    const version = item.version ? ` ${item.version}` : "";
    return {
      id,
      label: `${name}${version}`,
      aliases: item.aliases || [],
      available: item.available !== false,
      compiled: Boolean(item.compiled),
      mode: item.mode || id,
      hello: item.hello || "",
    };
  }

  /** Compiler flags only for a language with a compile stage. */
  showCompiled() {
    const entry = this.find(this.select.value);
    this.runOptions.setCompiled(Boolean(entry && entry.compiled));
  }

  /** The highlighting mode /runtimes names for a language (languages.toml `mode`), else its id. */
  modeOf(language) {
    const entry = this.find(language);
    return (entry && entry.mode) || language;
  }

  starterFor(language) {
    const entry = this.find(language);
    const ids = [language, ...((entry && entry.aliases) || [])];
    if (entry && entry.hello) return entry.hello;
    for (const id of ids) if (STARTERS[id]) return STARTERS[id];
    return `// Write a ${entry ? entry.label : language} program here.\n`;
  }

  static storageKey(language) {
    return `conveyor.code.${language}`;
  }

  /** The code area changed: an edit is kept for its language, a text set here is not. */
  edited() {
    if (!this.loading) this.save();
  }

  save() {
    try {
      localStorage.setItem(Languages.storageKey(this.select.value), this.code.value);
    } catch (err) {
      // Private windows may refuse storage; the code simply is not remembered.
    }
  }

  /** The code kept for `language`, else its starter, highlighted as that language. */
  loadCode(language) {
    let saved = null;
    try {
      saved = localStorage.getItem(Languages.storageKey(language));
    } catch (err) {
      saved = null;
    }
    this.setCode(saved !== null ? saved : this.starterFor(language));
    this.code.setLanguage(this.modeOf(language));
  }

  /** Put `text` in the code area without keeping it as the language's code (a switch, a shared run). */
  setCode(text) {
    this.loading = true;
    try {
      this.code.value = text;
    } finally {
      this.loading = false;
    }
  }

  /** Save the code as a file (a Blob URL clicked as a download: nothing goes to the server). */
  download() {
    const language = this.select.value;
    const name = language === "java" ? "Main.java" : `main.${Languages.EXTENSIONS[language] || "txt"}`;
    const url = URL.createObjectURL(new Blob([this.code.value], { type: "text/plain;charset=utf-8" }));
    const link = Conveyor.el("a", { href: url, download: name });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
}

// Languages whose source is not text one types: a prebuilt binary (Judge0's "Executable") stays in the API.
Languages.NOT_TYPED = new Set(["executable"]);
// File names for a download; a language not listed here saves as .txt.
Languages.EXTENSIONS = { python: "py", javascript: "js", typescript: "ts", bash: "sh", c: "c", cpp: "cpp", java: "java",
  rust: "rs", go: "go", perl: "pl", ruby: "rb", php: "php", lua: "lua", kotlin: "kt", csharp: "cs", haskell: "hs" };

/* The code editor: CodeMirror 6 (static/vendor/codemirror.js, global `CM`) with Conveyor's keys and theme. */
"use strict";

class CodeArea {
  /**
   * `parent` receives the editor; its editable element gets `contentId` and `label`. `indentUnit()` says what one
   * level is for the current language (Go wants a tab); `onChange(text)` runs after every edit, typed or set;
   * `onRun()` is Ctrl/Cmd+Enter.
   */
  constructor(parent, { contentId, label, indentUnit = () => "    ", onChange = () => {}, onRun = () => {} } = {}) {
    this.indentUnit = indentUnit;
    this.onChange = onChange;
    this.language = new CM.Compartment();
    this.indent = new CM.Compartment();
    const runKey = { key: "Mod-Enter", run: () => (onRun(), true), preventDefault: true };
    // In a document CodeMirror writes its styles into a <style> element, which the pages' CSP (style-src 'self')
    // blocks; in a shadow root it uses constructable stylesheets, which CSP allows. The page's CSS variables
    // (colours, fonts) still reach inside, so both themes apply.
    const root = parent.attachShadow({ mode: "open" });
    this.view = new CM.EditorView({
      parent: root,
      root,
      state: CM.EditorState.create({
        doc: "",
        extensions: [
          CM.lineNumbers(),
          CM.highlightActiveLineGutter(),
          CM.highlightSpecialChars(),
          CM.history(),
          CM.drawSelection(),
          CM.dropCursor(),
          CM.EditorState.allowMultipleSelections.of(true),
          CM.indentOnInput(),
          CM.syntaxHighlighting(CodeArea.highlightStyle()),
          CM.bracketMatching(),
          CM.closeBrackets(),
          CM.rectangularSelection(),
          CM.crosshairCursor(),
          CM.highlightActiveLine(),
          CM.highlightSelectionMatches(),
          CM.search({ top: true }),
          // Before the default keymap, whose Mod-Enter inserts a blank line. Tab indents; Escape then Tab leaves the
          // editor (CodeMirror's tab-focus mode), which the toolbar hint tells keyboard users.
          CM.keymap.of([
            runKey,
            ...CM.closeBracketsKeymap,
            ...CM.defaultKeymap,
            ...CM.searchKeymap,
            ...CM.historyKeymap,
            CM.indentWithTab,
          ]),
          this.language.of([]),
          this.indent.of(CM.indentUnit.of(indentUnit())),
          CM.EditorView.contentAttributes.of({
            id: contentId || "code",
            "aria-label": label || "Source code",
            spellcheck: "false",
            autocapitalize: "off",
            autocorrect: "off",
          }),
          CM.EditorView.updateListener.of((update) => {
            if (update.docChanged) this.onChange(this.value);
          }),
          CodeArea.theme(),
        ],
      }),
    });
  }

  /** Syntax colours from the page's CSS variables (--tok-*), so the light and dark themes colour the code too. */
  static highlightStyle() {
    const t = CM.tags;
    const color = (name) => `var(--tok-${name})`;
    return CM.HighlightStyle.define([
      { tag: [t.keyword, t.controlKeyword, t.operatorKeyword, t.definitionKeyword, t.moduleKeyword], color: color("keyword") },
      { tag: [t.string, t.special(t.string), t.character, t.regexp], color: color("string") },
      { tag: [t.number, t.bool, t.atom, t.null], color: color("number") },
      { tag: t.comment, color: color("comment"), fontStyle: "italic" },
      { tag: [t.typeName, t.className, t.namespace, t.standard(t.typeName)], color: color("type") },
      { tag: [t.function(t.variableName), t.function(t.propertyName), t.definition(t.variableName), t.macroName], color: color("function") },
      { tag: [t.propertyName, t.attributeName, t.labelName], color: color("property") },
      { tag: [t.operator, t.punctuation, t.bracket], color: color("operator") },
      { tag: [t.meta, t.processingInstruction, t.annotation], color: color("meta") },
      { tag: t.invalid, color: "var(--bad)" },
    ]);
  }

  /** Colours from the page's CSS variables: one CodeMirror theme serves light and dark. */
  static theme() {
    return CM.EditorView.theme({
      "&": { height: "100%", color: "var(--text)", backgroundColor: "var(--bg-inset)", fontSize: "var(--code-font-size, 13px)" },
      "&.cm-focused": { outline: "none", boxShadow: "inset 0 0 0 1px var(--accent)" },
      ".cm-scroller": { fontFamily: "var(--mono)", lineHeight: "1.55" },
      ".cm-content": { padding: "10px 0", caretColor: "var(--accent)" },
      ".cm-line": { padding: "0 12px 0 10px" },
      ".cm-gutters": {
        backgroundColor: "var(--bg-inset)",
        color: "var(--text-faint)",
        borderRight: "1px solid var(--border)",
      },
      ".cm-activeLineGutter": { backgroundColor: "var(--bg-hover)", color: "var(--text-muted)" },
      ".cm-activeLine": { backgroundColor: "color-mix(in srgb, var(--bg-hover) 55%, transparent)" },
      ".cm-cursor, .cm-dropCursor": { borderLeftColor: "var(--accent)" },
      "&.cm-focused > .cm-scroller > .cm-selectionLayer .cm-selectionBackground, .cm-selectionBackground": {
        backgroundColor: "color-mix(in srgb, var(--accent) 28%, transparent)",
      },
      ".cm-selectionMatch": { backgroundColor: "color-mix(in srgb, var(--warn) 22%, transparent)" },
      "&.cm-focused .cm-matchingBracket": {
        backgroundColor: "color-mix(in srgb, var(--ok) 25%, transparent)",
        outline: "1px solid color-mix(in srgb, var(--ok) 60%, transparent)",
      },
      "&.cm-focused .cm-nonmatchingBracket": { backgroundColor: "color-mix(in srgb, var(--bad) 30%, transparent)" },
      ".cm-searchMatch": { backgroundColor: "color-mix(in srgb, var(--warn) 30%, transparent)" },
      ".cm-searchMatch.cm-searchMatch-selected": { backgroundColor: "color-mix(in srgb, var(--accent) 35%, transparent)" },
      ".cm-panels": { backgroundColor: "var(--bg-raised)", color: "var(--text)" },
      ".cm-panels.cm-panels-top": { borderBottom: "1px solid var(--border)" },
      ".cm-panel.cm-search": { padding: "6px 8px", fontFamily: "var(--sans)" },
      ".cm-panel.cm-search input, .cm-panel.cm-search button": { fontSize: "12.5px" },
      ".cm-textfield": {
        backgroundColor: "var(--bg-inset)",
        color: "var(--text)",
        border: "1px solid var(--border-strong)",
        borderRadius: "4px",
      },
      ".cm-button": {
        backgroundImage: "none",
        backgroundColor: "var(--bg-hover)",
        color: "var(--text)",
        border: "1px solid var(--border-strong)",
        borderRadius: "4px",
      },
    });
  }

  get value() {
    return this.view.state.doc.toString();
  }

  /** Replace the whole text (a new language's starter, saved code); not added to the undo history's last step. */
  set value(text) {
    this.view.dispatch({ changes: { from: 0, to: this.view.state.doc.length, insert: text } });
  }

  /** Highlighting and indentation for a language id of /runtimes (no highlighting for one CM does not know). */
  setLanguage(id) {
    const support = CM.languageFor(id);
    this.view.dispatch({
      effects: [
        this.language.reconfigure(support ? support : []),
        this.indent.reconfigure(CM.indentUnit.of(this.indentUnit())),
      ],
    });
    this.view.contentDOM.dataset.language = support ? id : "plain";
  }

  focus() {
    this.view.focus();
  }
}

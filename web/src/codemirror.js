// The CodeMirror 6 pieces the editor page uses, exposed as one global `CM` (static/codearea.js builds the editor).
export { EditorState, Compartment } from "@codemirror/state";
export {
  EditorView,
  keymap,
  lineNumbers,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  drawSelection,
  dropCursor,
  rectangularSelection,
  crosshairCursor,
  placeholder,
} from "@codemirror/view";
export { defaultKeymap, history, historyKeymap, indentWithTab, indentMore, indentLess } from "@codemirror/commands";
export {
  bracketMatching,
  foldGutter,
  foldKeymap,
  indentOnInput,
  indentUnit,
  syntaxHighlighting,
  HighlightStyle,
  StreamLanguage,
} from "@codemirror/language";
export { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
export { search, searchKeymap, highlightSelectionMatches } from "@codemirror/search";
export { tags } from "@lezer/highlight";

import { python } from "@codemirror/lang-python";
import { javascript } from "@codemirror/lang-javascript";
import { cpp } from "@codemirror/lang-cpp";
import { java } from "@codemirror/lang-java";
import { rust } from "@codemirror/lang-rust";
import { StreamLanguage } from "@codemirror/language";
import { shell } from "@codemirror/legacy-modes/mode/shell";
import { perl } from "@codemirror/legacy-modes/mode/perl";

/** Language support by Conveyor's language id (server/languages.toml); null for a language without one. */
export function languageFor(id) {
  switch (id) {
    case "python":
      return python();
    case "javascript":
    case "node":
      return javascript();
    case "c":
    case "cpp":
      return cpp();
    case "java":
      return java();
    case "rust":
      return rust();
    case "bash":
      return StreamLanguage.define(shell);
    case "perl":
      return StreamLanguage.define(perl);
    default:
      return null;
  }
}

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
import { go } from "@codemirror/legacy-modes/mode/go";
import { ruby } from "@codemirror/legacy-modes/mode/ruby";
import { lua } from "@codemirror/legacy-modes/mode/lua";
import { haskell } from "@codemirror/legacy-modes/mode/haskell";
import { r } from "@codemirror/legacy-modes/mode/r";
import { oCaml } from "@codemirror/legacy-modes/mode/mllike";
import { erlang } from "@codemirror/legacy-modes/mode/erlang";
import { clojure } from "@codemirror/legacy-modes/mode/clojure";
import { scheme } from "@codemirror/legacy-modes/mode/scheme";
import { commonLisp } from "@codemirror/legacy-modes/mode/commonlisp";
import { fortran } from "@codemirror/legacy-modes/mode/fortran";
import { pascal } from "@codemirror/legacy-modes/mode/pascal";
import { d } from "@codemirror/legacy-modes/mode/d";
import { tcl } from "@codemirror/legacy-modes/mode/tcl";
import { sqlite } from "@codemirror/legacy-modes/mode/sql";
import { octave } from "@codemirror/legacy-modes/mode/octave";
import { crystal } from "@codemirror/legacy-modes/mode/crystal";
import { coffeeScript } from "@codemirror/legacy-modes/mode/coffeescript";
import { groovy } from "@codemirror/legacy-modes/mode/groovy";
import { verilog } from "@codemirror/legacy-modes/mode/verilog";
import { gas } from "@codemirror/legacy-modes/mode/gas";
import { cobol } from "@codemirror/legacy-modes/mode/cobol";
import { forth } from "@codemirror/legacy-modes/mode/forth";
import { csharp, kotlin, scala, objectiveC } from "@codemirror/legacy-modes/mode/clike";

// Stream modes by the `mode` names of server/sandbox/languages.toml (CodeMirror 5's legacy modes, ported).
const LEGACY = {
  go, ruby, lua, haskell, r, ocaml: oCaml, erlang, clojure, scheme, commonlisp: commonLisp, fortran, pascal, d, tcl,
  sql: sqlite, octave, crystal, coffeescript: coffeeScript, groovy, verilog, gas, cobol, forth, csharp, kotlin, scala,
  objectivec: objectiveC,
};

/** Language support by Conveyor's language id (server/sandbox/languages.toml); null for a language without one. */
export function languageFor(id) {
  switch (id) {
    case "python":
      return python();
    case "javascript":
    case "node":
      return javascript();
    case "typescript":
      return javascript({ typescript: true });
    case "c":
    case "cpp":
      return cpp();
    case "java":
      return java();
    case "rust":
      return rust();
    case "bash":
    case "shell":
      return StreamLanguage.define(shell);
    case "perl":
      return StreamLanguage.define(perl);
    default:
      return LEGACY[id] ? StreamLanguage.define(LEGACY[id]) : null;
  }
}

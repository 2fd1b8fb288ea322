/* Light, dark or the system's theme, applied before the page paints (loaded in <head>, not deferred). */
"use strict";

const Theme = (() => {
  const KEY = "conveyor.theme";
  const CHOICES = ["system", "light", "dark"];
  const media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  const listeners = [];

  function choice() {
    try {
      const saved = localStorage.getItem(KEY);
      return CHOICES.includes(saved) ? saved : "system";
    } catch (err) {
      return "system";
    }
  }

  /** "light" or "dark": the choice, with "system" resolved through prefers-color-scheme. */
  function resolved() {
    const c = choice();
    if (c !== "system") return c;
    return media && media.matches ? "dark" : "light";
  }

  function apply() {
    const root = document.documentElement;
    const theme = resolved();
    root.dataset.theme = theme;
    root.dataset.themeChoice = choice();
    // Swagger UI's own dark styles hang off this class.
    root.classList.toggle("dark-mode", theme === "dark");
    for (const listener of listeners) listener(theme);
  }

  function set(next) {
    try {
      localStorage.setItem(KEY, next);
    } catch (err) {
      // Not remembered (private window); still applied for this page.
    }
    apply();
  }

  /** system -> light -> dark -> system. */
  function cycle() {
    set(CHOICES[(CHOICES.indexOf(choice()) + 1) % CHOICES.length]);
  }

  /** Call `listener(theme)` whenever the resolved theme changes (charts and the editor restyle). */
  function onChange(listener) {
    listeners.push(listener);
  }

  if (media && media.addEventListener) media.addEventListener("change", () => choice() === "system" && apply());
  // Another tab changed the choice.
  window.addEventListener("storage", (event) => event.key === KEY && apply());
  apply();

  function wireButton() {
    const button = document.getElementById("theme-toggle");
    if (!button) return;
    const label = () => {
      const c = choice();
      button.dataset.choice = c;
      button.title = `Theme: ${c} (click for ${CHOICES[(CHOICES.indexOf(c) + 1) % CHOICES.length]})`;
      button.setAttribute("aria-label", button.title);
      button.querySelector(".theme-label").textContent = c;
    };
    button.addEventListener("click", () => {
      cycle();
      label();
    });
    label();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wireButton);
  else wireButton();

  return { choice, resolved, set, cycle, onChange };
})();

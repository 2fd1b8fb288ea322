/* The dashboard's admin session: the key is sent once (POST /session) for a session cookie the page cannot read,
   kept across reloads for SESSION_TTL_S; the socket is told the key too, so it changes role now rather than at its
   next reconnect. Holds who this page is (admin or not), shows it, and signs out (DELETE /session). */
"use strict";

class AdminSession {
  /**
   * @param {{authForm: HTMLFormElement, apiKey: HTMLInputElement, authSubmit: HTMLButtonElement,
   *          authMessage: HTMLElement, signOut: HTMLButtonElement, adminBadge: HTMLElement}} ui
   * @param {{socket: Conveyor.Socket, onChange: () => void}} parts `onChange` runs after each change of role
   */
  constructor(ui, { socket, onChange }) {
    Object.assign(this, { ui, socket, onChange });
    this.admin = false;
    this.user = null;
    this.pending = false; // the socket was sent a key and has not answered yet
    ui.authForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.signIn();
    });
    // The cookie is dropped by the server; a reload opens a socket without it.
    ui.signOut.addEventListener("click", async () => {
      await fetch("/session", { method: "DELETE" }).catch(() => null);
      location.reload();
    });
  }

  /** REST as the admin needs no header: the sign-in cookie (HttpOnly, never visible here) goes with each request. */
  static headers() {
    return {};
  }

  set(admin, user, message) {
    const ui = this.ui;
    this.admin = admin;
    this.user = user;
    ui.adminBadge.dataset.state = admin ? "admin" : "viewer";
    ui.adminBadge.textContent = admin ? "admin" : "read-only";
    ui.authMessage.textContent = message;
    ui.authSubmit.textContent = admin ? "Switch key" : "Sign in";
    ui.signOut.hidden = !user;
    this.onChange();
  }

  /** The socket's `hello` (the upgrade carried the cookie) or its answer to `auth`: who this page is now. */
  greet({ admin, user }) {
    this.set(
      Boolean(admin),
      user,
      admin
        ? `Signed in as ${user}: job ids, whole jobs; Cancel, Stop and Run again on any job.`
        : `${user} is not an admin; the dashboard stays read-only.`,
    );
  }

  async signIn() {
    const ui = this.ui;
    const key = ui.apiKey.value.trim();
    if (!key) return;
    ui.apiKey.value = "";
    ui.authMessage.textContent = "Checking the key…";
    let answer;
    try {
      const response = await fetch("/session", {
        method: "POST",
        headers: { Accept: "application/json", Authorization: `Bearer ${key}` },
      });
      answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        this.set(false, null, `Key refused: ${answer.message || `HTTP ${response.status}`}`);
        return;
      }
    } catch (err) {
      ui.authMessage.textContent = "Not connected; try again.";
      return;
    }
    // Not connected: the next socket's upgrade carries the cookie, and its `hello` says who it is.
    this.pending = this.socket.send({ type: "auth", key });
    if (!this.pending) this.set(Boolean(answer.admin), answer.user, "Signed in; reconnecting…");
  }
}

/* /docs: the OpenAPI description rendered by Swagger UI (bundled), with the WebSocket protocol appended. */
"use strict";

(() => {
  const status = document.getElementById("docs-status");

  async function text(url) {
    const response = await fetch(url, { headers: { Accept: "application/json, text/markdown" } });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.text();
  }

  async function render() {
    let spec;
    let websocket = "";
    try {
      spec = JSON.parse(await text("/openapi.json"));
    } catch (err) {
      status.textContent = `Could not load /openapi.json (${err.message}).`;
      return;
    }
    try {
      websocket = await text("/docs/websocket.md");
    } catch (err) {
      websocket = "The WebSocket protocol could not be loaded; see docs/websocket.md in the repository.";
    }
    // One home for the protocol (docs/websocket.md), shown where people read the API; "Try it out" calls this server.
    // Folded, so the REST operations stay near the top of the page.
    const body = websocket.replace(/^# .*\n/, "");
    spec.info.description = `${spec.info.description}\n\n<details id="websocket-protocol"><summary>WebSocket protocol: GET /ws</summary>\n\n${body}\n\n</details>`;
    spec.servers = [{ url: location.origin, description: "this server" }];
    // Swagger UI renders its server picker without a name, and its operations in a second <main> (the page has
    // one; a named region instead): fixed whenever they are rendered.
    const root = document.getElementById("swagger");
    new MutationObserver(() => {
      const servers = root.querySelector("select#servers:not([aria-label])");
      if (servers) servers.setAttribute("aria-label", "Server");
      for (const main of root.querySelectorAll("main:not([role])")) {
        main.setAttribute("role", "region"); // not "none": Swagger makes it focusable, which keeps a none role off
        main.setAttribute("aria-label", "Operations");
      }
    }).observe(root, { childList: true, subtree: true });
    SwaggerUIBundle({
      spec,
      dom_id: "#swagger",
      // Deep links put a link inside each operation's toggle button: nested controls (WCAG 4.1.2).
      deepLinking: false,
      docExpansion: "list",
      defaultModelsExpandDepth: 0,
      validatorUrl: null,
      onComplete: () => {
        status.hidden = true;
        document.body.dataset.docsReady = "true";
      },
    });
  }

  render();
})();

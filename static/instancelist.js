/* The dashboard's instances view: the servers working the queue (one embedded; on Redis every live heartbeat),
   with each one's busy slots, the jobs it runs and how long ago its last heartbeat was. */
"use strict";

class InstanceList {
  /**
   * @param {{list: HTMLElement, mode: HTMLElement}} fields the list and the note beside its title
   * @param {{headers: () => object, skewMs: () => number}} parts `headers` the request's (the admin's);
   *   `skewMs` the server's clock minus this browser's (heartbeats are the server's times)
   */
  constructor(fields, { headers, skewMs }) {
    Object.assign(this, { fields, headers, skewMs });
    this.soonTimer = null;
    this.soonLast = 0;
  }

  /**
   * Load now if `soon` last loaded REFRESH_MS ago or more, else once when that much time has passed; calls between
   * coalesce. On every change of what runs where, and at least every few seconds: one request per REFRESH_MS.
   */
  soon() {
    if (this.soonTimer) return;
    this.soonTimer = setTimeout(() => {
      this.soonTimer = null;
      this.soonLast = Date.now();
      this.load();
    }, Math.max(0, this.soonLast + InstanceList.REFRESH_MS - Date.now()));
  }

  /** GET /queue/instances, drawn now. */
  async load() {
    const { el } = Conveyor;
    let body;
    try {
      const response = await fetch("/queue/instances", { headers: { Accept: "application/json", ...this.headers() } });
      body = await response.json();
      if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
    } catch (err) {
      this.fields.mode.textContent = `unavailable (${err.message})`;
      return;
    }
    const n = body.instances.length;
    this.fields.mode.textContent = body.backend === "redis" ? `Redis · ${n} live` : "embedded";
    this.fields.list.replaceChildren(
      ...body.instances.map((instance) =>
        el(
          "li",
          { className: "instance", dataset: { name: instance.name, ...(instance.here ? { here: "" } : {}) } },
          el(
            "div",
            { className: "instance-head" },
            el("span", { className: "mono wrap" }, instance.name),
            instance.here ? el("span", { className: "badge badge-running" }, "this one") : null,
          ),
          el(
            "div",
            { className: "instance-meta", dataset: { role: "load" } },
            `${instance.running.length} / ${instance.slots} slots busy · heartbeat `,
            el("span", { dataset: { role: "beat", at: instance.lastHeartbeat } }),
          ),
          instance.running.length
            ? el(
                "div",
                { className: "instance-jobs mono" },
                instance.running.map((job) =>
                  el("span", { title: job.id || "display handle" }, (job.id || job.handle).slice(0, 12)),
                ),
              )
            : null,
        ),
      ),
    );
    this.renderBeats();
  }

  /** "3.1 s ago" beside each heartbeat, moved on every second. */
  renderBeats() {
    const now = Date.now() + this.skewMs();
    for (const span of this.fields.list.querySelectorAll("[data-role=beat]")) {
      span.textContent = `${Conveyor.fmtMs(Math.max(0, now - Number(span.dataset.at)))} ago`;
    }
  }
}

InstanceList.REFRESH_MS = 5000;

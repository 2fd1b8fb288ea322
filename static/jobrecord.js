/* A job as the dashboard shows it: made from a summary of GET /queue/jobs (or a whole job, for an admin), kept
   current by the queue topic's lifecycle events, with its live wait and run times and its status badge. */
"use strict";

class JobRecord {
  /** Epoch milliseconds from a number or an ISO string; null when absent. */
  static toMs(value) {
    return typeof value === "number" ? value : value ? Date.parse(value) : null;
  }

  static fromSummary(summary) {
    const toMs = JobRecord.toMs;
    return {
      handle: summary.handle,
      id: summary.id ?? null,
      language: summary.language,
      priority: summary.priority,
      status: summary.status,
      createdAt: toMs(summary.createdAt),
      startedAt: toMs(summary.startedAt),
      finishedAt: toMs(summary.finishedAt),
      waitTimeMs: summary.waitTimeMs,
      executionTimeMs: summary.executionTimeMs,
      compileTimeMs: summary.compileTimeMs ?? null,
      cpuTimeMs: summary.cpuTimeMs ?? null,
      memoryPeakBytes: summary.memoryPeakBytes ?? null,
      exitCode: summary.exitCode,
      signal: summary.signal,
      reason: summary.reason,
      truncated: summary.truncated,
    };
  }

  /** One lifecycle event (`running` or a final one) on the job it is about; the event's id, if it carries one. */
  static update(job, message) {
    if (message.jobId) job.id = message.jobId;
    if (message.type === "running") {
      Object.assign(job, {
        status: "running",
        startedAt: JobRecord.toMs(message.startedAt),
        waitTimeMs: message.waitTimeMs,
      });
    } else if (JobRecord.FINAL.has(message.type)) {
      Object.assign(job, {
        status: message.type,
        finishedAt: Date.now(),
        exitCode: message.exitCode,
        signal: message.signal,
        reason: message.reason,
        truncated: message.truncated,
        waitTimeMs: message.waitTimeMs,
        executionTimeMs: message.executionTimeMs,
        compileTimeMs: message.compileTimeMs,
        cpuTimeMs: message.cpuTimeMs ?? null,
        memoryPeakBytes: message.memoryPeakBytes ?? null,
      });
    }
  }

  static isActive(job) {
    return job.status === "queued" || job.status === "running";
  }

  /** The wait so far while queued, else the wait the server measured. */
  static liveWait(job) {
    return job.status === "queued" && job.createdAt ? Math.max(0, Date.now() - job.createdAt) : job.waitTimeMs;
  }

  /** The run so far while running, else the run time the server measured. */
  static liveRun(job) {
    return job.status === "running" && job.startedAt ? Math.max(0, Date.now() - job.startedAt) : job.executionTimeMs;
  }

  static badge(status) {
    return Conveyor.el("span", { className: `badge badge-${status}`, dataset: { status } }, status);
  }
}

// The statuses a job ends in, each also the type of the event that says so.
JobRecord.FINAL = new Set(["completed", "failed", "timeout", "cancelled"]);
JobRecord.STATUSES = ["all", "queued", "running", "completed", "failed", "timeout", "cancelled"];

// The staff dashboard: refresh every figure from /dashboard/data/ without reloading, soon
// after any job changes (pushed through the event stream, /api/events/) and every 30 s
// for the figures that move with time alone; every 5 s while the stream is unavailable.
// Retry jobs by fetch. Without this script the forms still work.
(function () {
  "use strict";

  const REFRESH_MS = 5000; // while polling
  const PUSHED_REFRESH_MS = 30000; // while the stream is open
  const CHANGE_DELAY_MS = 300; // changes arriving together make one refresh
  const PUSH_RETRY_MS = 10000;
  const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "expired"];
  const form = document.getElementById("failed-form");
  const canRetry = form.dataset.canRetry === "true"; // the retry_job permission

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function jobLink(job) {
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.href = job.admin_url;
    const code = document.createElement("code");
    code.textContent = job.id.slice(0, 8);
    a.appendChild(code);
    td.appendChild(a);
    return td;
  }

  function fill(tbody, rows, build, emptyText, columns) {
    tbody.replaceChildren(...rows.map(build));
    if (!rows.length && emptyText) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(emptyText);
      td.colSpan = columns;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  function failedRow(job, checked) {
    const tr = document.createElement("tr");
    if (!canRetry) {
      tr.append(jobLink(job), cell(job.type), cell(job.owner), cell(job.error, "error-text"));
      return tr;
    }
    const select = document.createElement("td");
    const box = document.createElement("input");
    Object.assign(box, { type: "checkbox", name: "job", value: job.id, checked: checked.has(job.id) });
    box.setAttribute("aria-label", `Select job ${job.id}`);
    select.appendChild(box);
    const action = document.createElement("td");
    const button = document.createElement("button");
    Object.assign(button, { type: "submit", className: "button", textContent: "Retry" });
    button.setAttribute("formaction", `/dashboard/jobs/${job.id}/retry/`);
    action.appendChild(button);
    tr.append(select, jobLink(job), cell(job.type), cell(job.owner), cell(job.error, "error-text"), action);
    return tr;
  }

  function show(data) {
    STATUSES.forEach((status) => {
      document.querySelector(`[data-total=${status}]`).textContent = data.totals[status];
    });
    document.querySelector("[data-throughput=finished_last_minute]").textContent = data.throughput.finished_last_minute;
    document.querySelector("[data-failed-total]").textContent = data.failed_total;
    const checked = new Set(Array.from(form.querySelectorAll("input[name=job]:checked")).map((b) => b.value));
    fill(document.getElementById("failed-rows"), data.failed, (job) => failedRow(job, checked), "No failed jobs.", canRetry ? 6 : 4);
    fill(document.getElementById("type-rows"), data.by_type, (row) => {
      const tr = document.createElement("tr");
      tr.append(cell(row.type), ...STATUSES.map((s) => cell(String(row[s]), "num")));
      return tr;
    });
    fill(document.getElementById("recent-rows"), data.recent, (job) => {
      const tr = document.createElement("tr");
      const status = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = `badge badge-${job.status}`;
      badge.textContent = job.status;
      status.appendChild(badge);
      tr.append(jobLink(job), cell(job.type), status, cell(job.owner), cell(job.created_at.slice(0, 19)));
      return tr;
    });
  }

  async function refresh() {
    try {
      const response = await fetch("/dashboard/data/", { credentials: "same-origin" });
      if (response.ok) {
        const data = await response.json();
        show(data);
        document.dispatchEvent(new CustomEvent("dashboard:data", { detail: data }));
      }
    } catch (error) {
      // the server is restarting: the next tick tries again
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const action = event.submitter?.getAttribute("formaction") || form.action;
    await fetch(action, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    });
    await refresh();
  });

  let timer = null;
  let pending = null;

  function refreshEvery(ms) {
    if (timer !== null) window.clearInterval(timer);
    timer = window.setInterval(refresh, ms);
  }

  function refreshSoon() {
    if (pending === null) {
      pending = window.setTimeout(() => {
        pending = null;
        refresh();
      }, CHANGE_DELAY_MS);
    }
  }

  function openStream() {
    const source = new EventSource("/api/events/");
    source.addEventListener("open", () => {
      refreshEvery(PUSHED_REFRESH_MS);
      refreshSoon(); // what changed before the stream opened
    });
    source.addEventListener("job", refreshSoon);
    source.addEventListener("batch", refreshSoon);
    source.addEventListener("reset", refreshSoon); // what was missed could not be sent
    source.addEventListener("error", () => {
      refreshEvery(REFRESH_MS); // poll while it reconnects, or until it is tried again
      if (source.readyState === EventSource.CLOSED) {
        window.setTimeout(openStream, PUSH_RETRY_MS);
      }
    });
  }

  document.addEventListener("dashboard:refresh", refresh);
  refreshEvery(REFRESH_MS);
  if (window.EventSource) openStream();
})();

// Controls, schedules and the audit log: each section updated from the same data, and
// their forms (pause, resume, limits, schedule switch, run now) sent by fetch.
(function () {
  "use strict";

  function heldText(held) {
    const parts = Object.entries(held || {}).map(([reason, n]) => `${reason} ${n}`);
    return parts.length ? parts.join(" ") : "0";
  }

  function setState(badge, on, onText, offText, offClass) {
    badge.textContent = on ? onText : offText;
    badge.className = `badge ${on ? "badge-active" : offClass}`;
  }

  function setSwitch(row, paused) {
    const pause = row.querySelector("[data-pause]");
    const resume = row.querySelector("[data-resume]");
    if (pause) pause.hidden = paused;
    if (resume) resume.hidden = !paused;
  }

  function limitsText(limits) {
    const parts = [];
    if (limits.concurrency !== null) parts.push(`at most ${limits.concurrency} running`);
    if (limits.owner_concurrency !== null) parts.push(`${limits.owner_concurrency} per owner`);
    if (limits.rate !== null) parts.push(`${limits.rate} starts per ${limits.period} s`);
    if (limits.owner_rate !== null) parts.push(`${limits.owner_rate} per owner per ${limits.period} s`);
    return parts.length ? parts.join("; ") : "none";
  }

  function showControls(controls) {
    const entries = [
      ...controls.queues.map((entry) => ["queue", entry]),
      ...controls.types.map((entry) => ["type", entry]),
    ];
    entries.forEach(([scope, entry]) => {
      const row = document.querySelector(`[data-control="${scope}:${CSS.escape(entry.name)}"]`);
      if (!row) return;
      setState(row.querySelector("[data-state]"), !entry.paused, "active", "paused", "badge-paused");
      row.querySelector("[data-held]").textContent = heldText(entry.held);
      setSwitch(row, entry.paused);
      const limits = row.querySelector("[data-limits]");
      if (limits) limits.textContent = limitsText(entry.limits);
    });
  }

  function jobLink(job) {
    const fragment = document.createDocumentFragment();
    const a = document.createElement("a");
    a.href = job.admin_url;
    const code = document.createElement("code");
    code.textContent = job.id.slice(0, 8);
    a.appendChild(code);
    const badge = document.createElement("span");
    badge.className = `badge badge-${job.status}`;
    badge.textContent = job.status;
    fragment.append(a, " ", badge);
    return fragment;
  }

  function showSchedules(schedules) {
    schedules.forEach((schedule) => {
      const row = document.querySelector(`[data-schedule="${CSS.escape(schedule.name)}"]`);
      if (!row) return;
      setState(row.querySelector("[data-state]"), schedule.enabled, "on", "paused", "badge-paused");
      setSwitch(row, !schedule.enabled);
      row.querySelector("[data-next-run]").textContent = schedule.next_run_at ? schedule.next_run_at.slice(0, 19) : "-";
      const last = row.querySelector("[data-last-run]");
      last.replaceChildren();
      if (schedule.last_job) {
        last.append(jobLink(schedule.last_job), " ", schedule.last_job.created_at.slice(0, 19));
      } else {
        last.append(schedule.last_run_at ? schedule.last_run_at.slice(0, 19) : "never");
      }
      if (schedule.last_manual_job) {
        const label = document.createElement("span");
        label.className = "muted";
        label.textContent = "run by hand:";
        last.append(document.createElement("br"), label, " ", jobLink(schedule.last_manual_job));
      }
    });
  }

  function showAudit(entries) {
    const tbody = document.getElementById("audit-rows");
    if (!tbody) return;
    const rows = entries.map((entry) => {
      const tr = document.createElement("tr");
      [entry.created_at.slice(0, 19), entry.actor, entry.action, `${entry.target_kind} ${entry.target}`, entry.via].forEach((text) => {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  async function sendOperatorForm(event) {
    const form = event.target.closest("[data-operator-form]");
    if (!form) return;
    event.preventDefault();
    const body = new FormData(form);
    if (event.submitter?.name) body.set(event.submitter.name, event.submitter.value);
    const action = event.submitter?.getAttribute("formaction") || form.action;
    const response = await fetch(action, {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      const errors = Object.entries(answer.errors || {}).map(([field, texts]) => `${field}: ${[].concat(texts).join(" ")}`);
      window.alert(errors.join("\n") || answer.detail || `Refused (${response.status})`);
    }
    document.dispatchEvent(new CustomEvent("dashboard:refresh"));
  }

  document.addEventListener("dashboard:data", (event) => {
    const data = event.detail;
    if (data.controls) showControls(data.controls);
    if (data.schedules) showSchedules(data.schedules);
    if (data.audit) showAudit(data.audit);
  });
  document.addEventListener("submit", sendOperatorForm);
})();

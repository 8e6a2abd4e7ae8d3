// The staff dashboard: refresh every figure from /dashboard/data/ every 5 s without
// reloading, and retry jobs by fetch. Without this script the forms still work.
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
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
      if (response.ok) show(await response.json());
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

  window.setInterval(refresh, REFRESH_MS);
})();

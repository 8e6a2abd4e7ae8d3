// The reports page without reloads: generate, cancel and retry by fetch, filter in place
// (kept in the URL), and follow active reports as their jobs change: pushed through the
// event stream (/api/events/) while it is available, else by polling each active report's
// status endpoint about once a second; both stop when none is active. Without this
// script the page still works through its forms.
(function () {
  "use strict";

  const POLL_MS = 1000;
  const PUSH_RETRY_MS = 10000; // after the stream was refused: poll, then try it again
  // A queued report moves up the line as other users' jobs start, which its own stream
  // does not carry: while pushing, queued rows re-read their place this often (a 304
  // until it changed).
  const LINE_MS = 15000;
  const ACTIVE = new Set(["queued", "running"]);
  const LABELS = { queued: "Queued", running: "Running", succeeded: "Ready", failed: "Failed", cancelled: "Cancelled", expired: "Expired" };
  const rows = document.getElementById("report-rows");
  const reportForm = document.getElementById("report-form");
  const filterForm = document.getElementById("filter-form");
  const etags = new Map();
  let timer = null;
  let source = null; // the event stream, while open or reconnecting
  let pushing = false; // the stream is open: no polling needed
  let pushRetry = null;
  let lineTimer = null;

  function csrfToken() {
    const field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  function fetchHtml(url, options) {
    return fetch(url, Object.assign({ credentials: "same-origin", headers: { "X-Requested-With": "fetch" } }, options));
  }

  function toRow(html) {
    const table = document.createElement("tbody");
    table.innerHTML = html.trim();
    return table.firstElementChild;
  }

  function activeRows() {
    return Array.from(rows.querySelectorAll("tr.report")).filter((tr) => ACTIVE.has(tr.dataset.status));
  }

  function ensureUpdates() {
    if (!activeRows().length) return;
    if (window.EventSource && source === null && pushRetry === null) {
      openStream();
    }
    if (!pushing && timer === null) {
      timer = window.setInterval(poll, POLL_MS);
    }
  }

  function stopPolling() {
    if (timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
  }

  function stopLineRefresh() {
    if (lineTimer !== null) {
      window.clearInterval(lineTimer);
      lineTimer = null;
    }
  }

  function refreshPlacesInLine() {
    activeRows()
      .filter((tr) => tr.dataset.status === "queued")
      .forEach(refreshStatus);
  }

  function stopUpdatesIfIdle() {
    if (activeRows().length) return;
    stopPolling();
    stopLineRefresh();
    if (source !== null) {
      source.close();
      source = null;
      pushing = false;
    }
  }

  function openStream() {
    source = new EventSource("/api/events/?mine=1");
    source.addEventListener("open", () => {
      pushing = true;
      stopPolling();
      poll(); // once: what changed before the stream opened
      if (lineTimer === null) lineTimer = window.setInterval(refreshPlacesInLine, LINE_MS);
    });
    source.addEventListener("job", (event) => followJob(JSON.parse(event.data)));
    // The server could not send what was missed while reconnecting: read it all again.
    source.addEventListener("reset", () => poll());
    source.addEventListener("error", () => {
      pushing = false;
      stopLineRefresh();
      if (source && source.readyState === EventSource.CLOSED) {
        // Refused (503: too busy, or the server cannot push now): poll, try again later.
        source = null;
        pushRetry = window.setTimeout(() => {
          pushRetry = null;
          ensureUpdates();
        }, PUSH_RETRY_MS);
      }
      ensureUpdates(); // poll while it reconnects
    });
  }

  async function followJob(job) {
    const tr = rows.querySelector(`tr.report[data-job="${CSS.escape(String(job.id))}"]`);
    if (!tr) return;
    etags.delete(tr.dataset.id);
    if (job.status !== tr.dataset.status && !ACTIVE.has(job.status)) {
      await replaceRow(tr.dataset.id); // finished: new actions, finish time
    } else if (job.status === "queued") {
      await refreshStatus(tr); // queued again: its place in line comes with its status
    } else {
      showStatus(tr, job);
    }
    stopUpdatesIfIdle();
  }

  async function poll() {
    await Promise.all(activeRows().map(refreshStatus));
    stopUpdatesIfIdle();
  }

  async function refreshStatus(tr) {
    const id = tr.dataset.id;
    const headers = etags.has(id) ? { "If-None-Match": etags.get(id) } : {};
    let response;
    try {
      response = await fetch(`/api/reports/${id}/status/`, { credentials: "same-origin", headers });
    } catch (error) {
      return; // offline for a moment: try again on the next tick
    }
    if (response.status === 304 || !response.ok) return;
    etags.set(id, response.headers.get("ETag"));
    const body = await response.json();
    if (body.status !== tr.dataset.status && !ACTIVE.has(body.status)) {
      await replaceRow(id); // finished: new actions, finish time
      return;
    }
    showStatus(tr, body);
  }

  // A pushed event and a status read may cross on their way: the newer state wins.
  function isOlderThanShown(tr, body) {
    const at = Date.parse(body.updated_at);
    return !Number.isNaN(at) && at < Number(tr.dataset.updatedAt || 0);
  }

  function showStatus(tr, body) {
    if (isOlderThanShown(tr, body)) return;
    const at = Date.parse(body.updated_at);
    if (!Number.isNaN(at)) tr.dataset.updatedAt = String(at);
    tr.dataset.status = body.status;
    const badge = tr.querySelector("[data-role=badge]");
    badge.textContent = LABELS[body.status] || body.status;
    badge.className = `badge badge-${body.status}`;
    const bar = tr.querySelector("[data-role=bar]");
    bar.setAttribute("aria-valuenow", body.progress);
    bar.firstElementChild.style.width = `${body.progress}%`;
    tr.querySelector("[data-role=message]").textContent = body.message;
    const line = tr.querySelector("[data-role=line]");
    if (line && (body.status !== "queued" || "line" in body)) {
      line.textContent = inLine(body.line);
      line.hidden = !body.line;
    }
  }

  // A queued report's place in line in words, as jobs/line.py's in_words says it.
  function inLine(place) {
    if (!place) return "";
    let where;
    if (place.ahead_capped) where = `${place.ahead}+ jobs ahead`;
    else if (place.ahead === 0) where = "next in line";
    else where = `${ordinal(place.ahead + 1)} in line`;
    const wait = place.estimated_wait_seconds;
    return wait === null || wait === undefined ? where : `${where}, about ${roundedDuration(wait)}`;
  }

  function ordinal(n) {
    const suffix = n % 100 >= 10 && n % 100 <= 20 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
    return `${n}${suffix}`;
  }

  function roundedDuration(seconds) {
    const fives = Math.max(5, 5 * Math.round(seconds / 5));
    if (fives < 60) return `${fives} s`;
    const minutes = Math.max(1, Math.round(seconds / 60));
    if (minutes < 60) return `${minutes} min`;
    return `${Math.round(seconds / 3600)} h`;
  }

  async function replaceRow(id) {
    const response = await fetchHtml(`/reports/${id}/row/`);
    const current = document.getElementById(`report-${id}`);
    if (response.ok && current) {
      current.replaceWith(toRow(await response.text()));
    }
  }

  async function submitReport(event) {
    event.preventDefault();
    const response = await fetchHtml(reportForm.action, { method: "POST", body: new FormData(reportForm) });
    const errors = document.getElementById("form-errors");
    if (response.status === 201) {
      errors.innerHTML = "";
      rows.querySelector("tr.empty")?.remove();
      rows.prepend(toRow(await response.text()));
      ensureUpdates();
    } else {
      errors.innerHTML = await response.text();
    }
  }

  async function submitAction(event) {
    const form = event.target.closest("form[data-action]");
    if (!form) return;
    event.preventDefault();
    const tr = form.closest("tr");
    const response = await fetchHtml(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { "X-Requested-With": "fetch", "X-CSRFToken": csrfToken() },
    });
    if (response.ok) {
      etags.delete(tr.dataset.id);
      tr.replaceWith(toRow(await response.text()));
      ensureUpdates();
    } else {
      await replaceRow(tr.dataset.id); // someone else changed it first: show what it is now
    }
  }

  async function applyFilters(event) {
    if (event) event.preventDefault();
    const params = new URLSearchParams(new FormData(filterForm));
    for (const [key, value] of Array.from(params.entries())) {
      if (!value) params.delete(key);
    }
    const query = params.toString();
    const response = await fetchHtml(`/reports/rows/${query ? "?" + query : ""}`);
    if (!response.ok) return;
    rows.innerHTML = await response.text();
    window.history.replaceState(null, "", `/reports/${query ? "?" + query : ""}`);
    etags.clear();
    ensureUpdates();
  }

  function showKindFields() {
    const kind = reportForm.querySelector("[name=kind]").value;
    reportForm.querySelectorAll("[data-kind]").forEach((label) => {
      label.hidden = label.dataset.kind !== kind;
    });
  }

  reportForm.addEventListener("submit", submitReport);
  reportForm.querySelector("[name=kind]").addEventListener("change", showKindFields);
  rows.addEventListener("submit", submitAction);
  filterForm.addEventListener("submit", applyFilters);
  filterForm.querySelector("[name=status]").addEventListener("change", () => applyFilters());
  showKindFields();
  ensureUpdates();
})();

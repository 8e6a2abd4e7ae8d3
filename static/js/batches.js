// The dashboard's batches pages: the live part of the page (`[data-live]`) re-read from
// the server soon after a job or batch changes (pushed through the event stream,
// /api/events/, a batch's page following that batch alone) and every 30 s; every 5 s
// while the stream is unavailable. Cancel by fetch; filters applied on change. Without
// this script the links and forms still work.
(function () {
  "use strict";

  const REFRESH_MS = 5000; // while polling
  const PUSHED_REFRESH_MS = 30000; // while the stream is open
  const CHANGE_DELAY_MS = 300; // changes arriving together make one refresh
  const PUSH_RETRY_MS = 10000;
  const live = document.querySelector("[data-live]");
  const batchId = live.dataset.batch; // set on a batch's page

  async function refresh() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const html = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = html.getElementById(live.id);
      if (fresh) live.replaceChildren(...fresh.childNodes);
      document.dispatchEvent(new CustomEvent("batches:refreshed"));
    } catch (error) {
      // the server is restarting: the next tick tries again
    }
  }

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
    const url = batchId ? `/api/events/?batch=${encodeURIComponent(batchId)}` : "/api/events/";
    const source = new EventSource(url);
    source.addEventListener("open", () => {
      refreshEvery(PUSHED_REFRESH_MS);
      refreshSoon(); // what changed before the stream opened
    });
    source.addEventListener("job", (event) => {
      // On the list, only the jobs of batches move its figures.
      if (batchId || JSON.parse(event.data).batch_id) refreshSoon();
    });
    source.addEventListener("batch", refreshSoon);
    source.addEventListener("reset", refreshSoon); // what was missed could not be sent
    source.addEventListener("error", () => {
      refreshEvery(REFRESH_MS);
      if (source.readyState === EventSource.CLOSED) {
        window.setTimeout(openStream, PUSH_RETRY_MS);
      }
    });
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("[data-batch-cancel]");
    if (!form) return;
    event.preventDefault();
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      window.alert(answer.detail || `Refused (${response.status})`);
    }
    await refresh();
  });

  // Delegated: a refresh replaces the filter of a batch's jobs with a new one.
  document.addEventListener("change", (event) => {
    if (event.target.matches("form.filters select")) event.target.form.submit();
  });

  refreshEvery(REFRESH_MS);
  if (window.EventSource) openStream();
})();

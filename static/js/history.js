// The dashboard's history charts (templates/jobs/_history.html): drawn as SVG from
// /dashboard/history/?window=hour|day, redrawn every 15 s and when the window changes.
(function () {
  "use strict";

  const REFRESH_MS = 15000;
  const SVG = "http://www.w3.org/2000/svg";
  const section = document.getElementById("history");
  if (!section) return;
  const url = section.dataset.historyUrl;
  const buttons = Array.from(section.querySelectorAll("[data-window]"));
  let current = "hour";

  function el(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    Object.entries(attributes || {}).forEach(([key, value]) => node.setAttribute(key, value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function titled(node, text) {
    node.appendChild(el("title", {}, text));
    return node;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
    if (value < 7200) return `${(value / 60).toFixed(1)} min`;
    return `${(value / 3600).toFixed(1)} h`;
  }

  function clock(iso) {
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function empty(svg, width, text) {
    svg.setAttribute("viewBox", `0 0 ${width} 40`);
    svg.replaceChildren(el("text", { x: 8, y: 24, class: "chart-empty" }, text));
  }

  // Stacked bars, one per time bucket, one colour per status.
  function drawFinished(data) {
    const svg = document.getElementById("chart-finished");
    const [width, height, left, bottom, top] = [720, 200, 36, 22, 8];
    const plot = height - bottom - top;
    const totals = data.finished.map((b) => data.statuses.reduce((sum, s) => sum + b[s], 0));
    const max = Math.max(1, ...totals);
    const step = (width - left) / data.finished.length;
    svg.dataset.window = data.window;
    svg.dataset.buckets = String(data.finished.length);
    const nodes = [
      el("line", { x1: left, y1: top + plot, x2: width, y2: top + plot, class: "axis" }),
      el("text", { x: left - 4, y: top + 10, class: "tick", "text-anchor": "end" }, String(max)),
      el("text", { x: left - 4, y: top + plot, class: "tick", "text-anchor": "end" }, "0"),
    ];
    data.finished.forEach((bucket, i) => {
      let y = top + plot;
      data.statuses.forEach((status) => {
        if (!bucket[status]) return;
        const h = (bucket[status] / max) * plot;
        y -= h;
        const bar = el("rect", {
          x: (left + i * step + 0.5).toFixed(2),
          y: y.toFixed(2),
          width: Math.max(1, step - 1).toFixed(2),
          height: h.toFixed(2),
          class: `bar fill-${status}`,
          "data-status": status,
          "data-count": bucket[status],
          "data-start": bucket.start,
        });
        nodes.push(titled(bar, `${clock(bucket.start)}: ${bucket[status]} ${status}`));
      });
    });
    const last = data.finished.length - 1;
    nodes.push(
      el("text", { x: left, y: height - 6, class: "tick" }, clock(data.finished[0].start)),
      el("text", { x: width, y: height - 6, class: "tick", "text-anchor": "end" }, clock(data.finished[last].start)),
    );
    svg.replaceChildren(...nodes);
    const totalsText = document.getElementById("finished-totals");
    totalsText.replaceChildren(
      `${data.label}: `,
      ...data.statuses.flatMap((s, i) => {
        const b = document.createElement("b");
        b.dataset.historyTotal = s;
        b.textContent = data.finished_totals[s];
        return [i ? ", " : "", b, ` ${s}`];
      }),
    );
    section.querySelector("[data-history-bucket]").textContent =
      data.bucket_seconds === 60 ? "minute" : `${data.bucket_seconds / 60} minutes`;
  }

  // Per type, the p95 bar with the p50 bar over it, and both figures as text.
  function drawTimes(svgId, rows, kind) {
    const svg = document.getElementById(svgId);
    const shown = rows.filter((row) => row[`${kind}s`] > 0);
    if (!shown.length) return empty(svg, 480, "No jobs in this window.");
    const [width, row, labelWidth, valueWidth] = [480, 26, 130, 150];
    const plot = width - labelWidth - valueWidth;
    const max = Math.max(...shown.map((r) => r[`${kind}_p95`]), 0.001);
    const nodes = [];
    shown.forEach((r, i) => {
      const y = i * row + 4;
      const p50 = r[`${kind}_p50`];
      const p95 = r[`${kind}_p95`];
      const group = el("g", { "data-type": r.type, class: "times" });
      group.append(
        el("text", { x: labelWidth - 6, y: y + 14, class: "label", "text-anchor": "end" }, r.type),
        titled(
          el("rect", { x: labelWidth, y, height: 18, width: Math.max(1, (p95 / max) * plot).toFixed(2), class: "bar fill-p95", "data-quantile": "0.95", "data-seconds": p95 }),
          `${r.type} p95 ${seconds(p95)}`,
        ),
        titled(
          el("rect", { x: labelWidth, y, height: 18, width: Math.max(1, (p50 / max) * plot).toFixed(2), class: "bar fill-p50", "data-quantile": "0.5", "data-seconds": p50 }),
          `${r.type} p50 ${seconds(p50)}`,
        ),
        el("text", { x: width - valueWidth + 6, y: y + 14, class: "value" }, `p50 ${seconds(p50)} · p95 ${seconds(p95)} (${r[`${kind}s`]})`),
      );
      nodes.push(group);
    });
    svg.setAttribute("viewBox", `0 0 ${width} ${shown.length * row + 8}`);
    svg.replaceChildren(...nodes);
  }

  // Per queue, stacked waiting, held and running jobs.
  function drawQueues(queues) {
    const svg = document.getElementById("chart-queues");
    const [width, row, labelWidth, valueWidth] = [720, 24, 110, 270];
    const plot = width - labelWidth - valueWidth;
    const states = ["waiting", "held", "running"];
    const max = Math.max(1, ...queues.map((q) => states.reduce((sum, s) => sum + q[s], 0)));
    const nodes = queues.map((q, i) => {
      const y = i * row + 4;
      const group = el("g", { "data-queue": q.queue, class: "queue" });
      group.appendChild(el("text", { x: labelWidth - 6, y: y + 13, class: "label", "text-anchor": "end" }, q.queue));
      let x = labelWidth;
      states.forEach((state) => {
        if (!q[state]) return;
        const w = (q[state] / max) * plot;
        group.appendChild(
          titled(el("rect", { x: x.toFixed(2), y, width: w.toFixed(2), height: 16, class: `bar fill-${state}`, "data-state": state, "data-count": q[state] }), `${q.queue}: ${q[state]} ${state}`),
        );
        x += w;
      });
      const broker = q.broker === null ? "broker –" : `broker ${q.broker}`;
      group.appendChild(el("text", { x: width - valueWidth + 6, y: y + 13, class: "value" }, `${q.waiting} waiting · ${q.held} held · ${q.running} running · ${broker}`));
      return group;
    });
    svg.setAttribute("viewBox", `0 0 ${width} ${queues.length * row + 8}`);
    svg.replaceChildren(...nodes);
  }

  function draw(data) {
    drawFinished(data);
    drawTimes("chart-wait", data.durations, "wait");
    drawTimes("chart-run", data.durations, "run");
    drawQueues(data.queues);
    section.dataset.drawn = data.window;
  }

  async function refresh() {
    const asked = current;
    try {
      const response = await fetch(`${url}?window=${asked}`, { credentials: "same-origin" });
      if (response.ok && asked === current) draw(await response.json());
    } catch (error) {
      // the server is restarting: the next tick tries again
    }
  }

  buttons.forEach((button) => {
    button.addEventListener("click", () => {
      current = button.dataset.window;
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      refresh();
    });
  });

  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();

// fleettrace dashboard: the one script of the pages (no build step, no network but
// this server). It shows times in the browser's time zone, refreshes the Overview,
// draws the Cost and Performance charts from their /api/ series and asks before a replay. Values are
// set with textContent or parsed from this server's escaped HTML, never as markup.
"use strict";

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const moment = new Date(el.dateTime);
    if (!Number.isNaN(moment.getTime())) {
      el.title = el.dateTime;
      el.textContent = moment.toLocaleString();
    }
  }
}

// The start of today in the browser's time zone, in Unix seconds: the Overview's
// "today" (the server, without it, counts from UTC midnight and says so).
function dayStart() {
  const midnight = new Date();
  midnight.setHours(0, 0, 0, 0);
  return String(Math.floor(midnight.getTime() / 1000));
}

function refreshLive(section) {
  const every = Number(section.dataset.refresh) || 5000;
  const note = document.createElement("p");
  note.className = "note";
  note.id = "refreshed";
  section.after(note);
  const refresh = async () => {
    try {
      const url = new URL(location.href);
      url.searchParams.set("day_start", dayStart());
      const answer = await fetch(url, { headers: { Accept: "text/html" } });
      if (!answer.ok) {
        note.textContent = "refresh failed (" + answer.status + "); retrying";
        return;
      }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("live");
      const current = document.getElementById("live");
      if (fresh && current) {
        current.replaceWith(document.adoptNode(fresh));
        localTimes(fresh);
        note.textContent = "refreshed " + new Date().toLocaleTimeString();
      }
    } catch (error) {
      note.textContent = "refresh failed; retrying";
    }
  };
  // At once (today from local midnight), then every few seconds.
  refresh();
  setInterval(refresh, every);
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];

// A time chart of one field of a series endpoint's items, one line (or stacked area)
// per key: data-api (the endpoint), data-field (default cost_usd), data-axis,
// data-unit, data-stacked.
async function seriesChart(box) {
  const field = box.dataset.field || "cost_usd";
  const unit = box.dataset.unit || "USD";
  const answer = await fetch(box.dataset.api);
  const body = await answer.json();
  if (!answer.ok) {
    box.textContent = body.error || "the chart could not be read";
    return;
  }
  const times = [...new Set(body.items.map((item) => item.t))].sort((a, b) => a - b);
  const keys = [...new Set(body.items.map((item) => item.key ?? "(none)"))];
  if (times.length === 0) {
    box.textContent = box.dataset.empty || "no calls in this range";
    return;
  }
  const at = new Map(times.map((t, i) => [t, i]));
  // Cost adds up (a step without calls cost nothing); a latency does not (a step
  // without calls has none, drawn as a gap).
  const additive = unit === "USD";
  const columns = keys.map(() => times.map(() => (additive ? 0 : null)));
  for (const item of body.items) {
    const column = columns[keys.indexOf(item.key ?? "(none)")];
    const at_t = at.get(item.t);
    column[at_t] = additive ? column[at_t] + (item[field] ?? 0) : item[field];
  }
  // Calls in the range, none of which reported this figure (time to first token of
  // calls that did not stream): say so rather than draw empty axes.
  if (!additive && columns.every((column) => column.every((value) => value === null))) {
    box.textContent = "no calls in this range reported it";
    return;
  }
  // data-stacked="yes" (cost where each call counts under one key): each key's area
  // sits on the ones before it, so the top edge is the total. Drawn from the top down,
  // each lower area covering the lower part of those above; the legend shows each
  // key's own value, not the running sum.
  const stacked = additive && box.dataset.stacked === "yes";
  let order = keys.map((key, i) => i);
  let drawn = columns;
  if (stacked) {
    const sums = [];
    columns.forEach((column, i) => sums.push(column.map((v, t) => v + (i ? sums[i - 1][t] : 0))));
    order = order.reverse();
    drawn = order.map((i) => sums[i]);
  }
  const series = [{ label: "time" }].concat(
    order.map((i) => ({
      label: keys[i],
      stroke: PALETTE[i % PALETTE.length],
      fill: stacked ? PALETTE[i % PALETTE.length] : undefined,
      width: stacked ? 1 : 2,
      points: { show: times.length < 60 },
      value: (u, v, s, idx) => {
        const own = stacked && idx != null ? columns[i][idx] : v;
        return own == null ? "" : own.toFixed(unit === "USD" ? 6 : 1) + " " + unit;
      },
    })),
  );
  const opts = {
    width: Math.max(box.clientWidth, 400),
    height: 300,
    // The range asked for, whole: a quiet stretch shows as one, not as a zoom.
    scales: { x: { time: true, range: [Date.parse(body.from) / 1000, Date.parse(body.to) / 1000] } },
    series,
    axes: [
      { label: "time (your time zone), one point per " + body.step_s + " s" },
      {
        label: box.dataset.axis || "cost (USD)",
        size: 80,
        values: (u, ticks) => ticks.map((v) => (additive ? v.toFixed(4) : String(+v.toFixed(2)))),
      },
    ],
  };
  // Stacked areas start at zero, so their heights compare.
  if (stacked) opts.scales.y = { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] };
  // Kept where a test (or a curious user in the console) can read the chart's axes.
  window.fleettraceCharts = window.fleettraceCharts || [];
  window.fleettraceCharts.push(new uPlot(opts, [times, ...drawn], box));
}

function confirmReplays(form) {
  form.addEventListener("submit", (event) => {
    const chosen = form.querySelectorAll("input[name=id]:checked").length;
    if (chosen === 0 || !window.confirm("Replay " + chosen + " dead letter(s) onto their streams?")) {
      event.preventDefault();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  const live = document.getElementById("live");
  if (live) refreshLive(live);
  for (const chart of document.querySelectorAll("#cost-chart, #latency-chart, #ttft-chart, #samples-chart")) {
    seriesChart(chart).catch(() => {
      chart.textContent = "the chart could not be read";
    });
  }
  for (const form of document.querySelectorAll("form.replay")) confirmReplays(form);
});

// The metrics dashboard (/ui/dashboard): latency percentiles, cost by tier, cache hit rates, tier
// mix, suggestions and cost strategies, drawn as inline SVG from the /v1/metrics endpoints.
//
// It uses the REST API like any client: GET /v1/metrics/summary, /v1/metrics/timeseries and
// /v1/metrics/cost with the period chosen, sending the key typed in (kept in sessionStorage,
// shared with the approvals page). Every number and text goes on the page through textContent
// or an attribute, never as markup; each chart element carries its figure in data-* attributes.
"use strict";

(() => {
  const KEY_STORAGE = "agentflow.apiKey";
  const REFRESH_MS = 30000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TIERS = ["small", "medium", "large"];
  const TIER_COLORS = { small: "#009E73", medium: "#0072B2", large: "#D55E00", none: "#8c95a5", unknown: "#5b6474" };
  const LINES = [
    { key: "p50_ms", name: "p50", color: "#0072B2" },
    { key: "p95_ms", name: "p95", color: "#E69F00" },
    { key: "p99_ms", name: "p99", color: "#CC3311" },
  ];
  const LEVELS = ["response", "semantic", "tool", "component"];
  const PERIOD_WORDS = { hour: "hour", day: "day", week: "week" };
  const authRequired = document.body.dataset.auth !== "off";

  const $ = (id) => document.getElementById(id);
  const statusLine = $("status");
  const emptyNote = $("empty");
  const content = $("content");
  const keyForm = $("key-form");
  const keyInput = $("api-key");
  let generation = 0; // bumped on every load: answers to older loads are dropped

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  const tip = (text) => svg("title", { text });
  const plot = (chart, label, height) =>
    svg("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": label, "data-chart": chart, class: "plot" });

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (authRequired && apiKey()) headers.Authorization = "Bearer " + apiKey();
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (err) {
      throw new Error(`the API did not answer (${err.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`;
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const num = (n) => n.toLocaleString("en-US");
  const ms = (v) => (isNum(v) ? `${num(Math.round(v))} ms` : "n/a");
  const pct = (v) => (isNum(v) ? `${(v * 100).toFixed(1)} %` : "n/a");
  function usd(v) {
    if (!isNum(v)) return "n/a";
    if (v === 0) return "0 USD";
    return `${Math.abs(v) >= 1 ? v.toFixed(2) : Number(v.toPrecision(3))} USD`;
  }
  function figure(name, v) {
    if (!isNum(v)) return v === null || v === undefined ? "n/a" : String(v);
    if (name.endsWith("_ms")) return ms(v);
    if (name.endsWith("_usd")) return usd(v);
    if (/(rate|share)$/.test(name)) return pct(v);
    return Number.isInteger(v) ? num(v) : String(Number(v.toPrecision(4)));
  }

  function bucketLabel(iso, period) {
    const d = new Date(iso);
    if (period === "week") return d.toLocaleDateString("en-GB", { weekday: "short", day: "numeric" });
    return d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  }

  // A round axis maximum: four equal steps of 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a
  // power of ten, covering v.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const raw = v / 4;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].find((m) => m * power >= raw * (1 - 1e-9));
    return 4 * step * power;
  }

  function legend(items) {
    const list = el("ul", { class: "legend" });
    for (const item of items) {
      const box = svg("rect", { width: 12, height: 12, rx: 2, fill: item.color });
      const swatch = svg("svg", { width: 12, height: 12, "aria-hidden": "true" }, box);
      list.append(el("li", {}, swatch, ` ${item.name}`));
    }
    return list;
  }

  // ------------------------------------------------------------------ charts

  const W = 640;
  const H = 230;
  const PAD = { left: 64, right: 12, top: 12, bottom: 28 };

  // Axes with four horizontal grid lines labelled by fmt, and x labels under some buckets.
  function frame(chart, label, maxY, fmt, buckets, period) {
    const root = plot(chart, label, H);
    const plotH = H - PAD.top - PAD.bottom;
    for (let i = 0; i <= 4; i += 1) {
      const y = PAD.top + plotH - (plotH * i) / 4;
      root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: i ? "gridline" : "axis" }));
      root.append(svg("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick", text: fmt((maxY * i) / 4) }));
    }
    const step = Math.max(1, Math.ceil(buckets.length / 8));
    const slot = (W - PAD.left - PAD.right) / Math.max(buckets.length, 1);
    buckets.forEach((b, i) => {
      if (i % step) return;
      const x = PAD.left + slot * (i + 0.5);
      const text = bucketLabel(b.start, period);
      root.append(svg("text", { x, y: H - 8, "text-anchor": "middle", class: "tick", text }));
    });
    const y = (v) => PAD.top + plotH - (plotH * v) / maxY;
    const x = (i) => PAD.left + slot * (i + 0.5);
    return { root, x, y, slot, plotH };
  }

  function latencyChart(buckets, period) {
    const values = buckets.flatMap((b) => LINES.map((l) => b[l.key])).filter(isNum);
    const maxY = niceMax(Math.max(0, ...values));
    const label = "Response time percentiles over time, in ms";
    const f = frame("latency", label, maxY, (v) => num(Math.round(v)), buckets, period);
    for (const line of LINES) {
      let d = "";
      let pen = false;
      const group = svg("g", { "data-series": line.name });
      buckets.forEach((b, i) => {
        const v = b[line.key];
        if (!isNum(v)) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${f.x(i).toFixed(1)},${f.y(v).toFixed(1)} `;
        pen = true;
        const dot = { cx: f.x(i).toFixed(1), cy: f.y(v).toFixed(1), r: 3, fill: line.color, "data-value": v.toFixed(1) };
        group.append(svg("circle", dot, tip(`${line.name} ${bucketLabel(b.start, period)}: ${ms(v)}`)));
      });
      const values = buckets.map((b) => (isNum(b[line.key]) ? b[line.key].toFixed(1) : "")).join(",");
      group.prepend(svg("path", { d: d.trim() || "M0,0", class: "line", stroke: line.color, "data-values": values }));
      f.root.append(group);
    }
    return [f.root, legend(LINES)];
  }

  function costChart(buckets, period) {
    const keys = [...TIERS];
    for (const b of buckets) for (const k of Object.keys(b.cost_usd_by_tier)) if (!keys.includes(k)) keys.push(k);
    const maxY = niceMax(Math.max(0, ...buckets.map((b) => b.cost_usd)));
    const label = "Cost per bucket stacked by tier, in USD";
    const f = frame("cost", label, maxY, (v) => String(Number(v.toPrecision(3))), buckets, period);
    const width = Math.max(2, f.slot * 0.7);
    buckets.forEach((b, i) => {
      let base = 0;
      for (const tier of keys) {
        const v = b.cost_usd_by_tier[tier] || 0;
        if (v <= 0) continue;
        const top = f.y(base + v);
        const bar = {
          x: (f.x(i) - width / 2).toFixed(1),
          y: top.toFixed(1),
          width: width.toFixed(1),
          height: Math.max(0.5, f.y(base) - top).toFixed(1),
          fill: TIER_COLORS[tier] || "#5b6474",
          "data-tier": tier,
          "data-usd": v,
          "data-bucket": i,
        };
        f.root.append(svg("rect", bar, tip(`${tier} ${bucketLabel(b.start, period)}: ${usd(v)}`)));
        base += v;
      }
    });
    return [f.root, legend(keys.map((k) => ({ name: k, color: TIER_COLORS[k] || "#5b6474" })))];
  }

  // Horizontal bars: rows of {key, label, value (0..1 or null), note}; a dashed rule at `rule`.
  function hbars(chart, label, rows, attr, color, rule) {
    const rowH = 34;
    const left = 110;
    const right = 150;
    const height = rows.length * rowH + 10;
    const root = plot(chart, label, height);
    const span = W - left - right;
    rows.forEach((row, i) => {
      const y = 6 + i * rowH;
      root.append(svg("text", { x: left - 8, y: y + 17, "text-anchor": "end", class: "label", text: row.label }));
      root.append(svg("rect", { x: left, y: y + 4, width: span, height: 18, class: "track" }));
      const v = isNum(row.value) ? row.value : 0;
      const bar = {
        x: left,
        y: y + 4,
        width: (span * v).toFixed(1),
        height: 18,
        fill: row.color || color,
        [attr]: row.key,
        "data-value": isNum(row.value) ? row.value.toFixed(4) : "",
        class: "bar",
      };
      root.append(svg("rect", bar, tip(`${row.label}: ${row.note}`)));
      root.append(svg("text", { x: left + span + 8, y: y + 17, class: "value", text: row.note }));
    });
    if (isNum(rule)) {
      const x = left + span * rule;
      root.append(svg("line", { x1: x, x2: x, y1: 2, y2: height - 2, class: "rule" }));
    }
    return root;
  }

  function cacheChart(cache) {
    const keys = [...LEVELS, ...Object.keys(cache.levels).filter((k) => !LEVELS.includes(k))];
    const rows = keys.map((k) => {
      const s = cache.levels[k] || { hits: 0, misses: 0, hit_rate: null };
      const n = s.hits + s.misses;
      const note = n ? `${pct(s.hit_rate)} of ${num(n)}` : "no lookups";
      return { key: k, label: k, value: s.hit_rate, note };
    });
    return [hbars("cache", "Cache hit rate per level", rows, "data-level", "#2456c9", 0.3)];
  }

  function tierChart(tiers) {
    const rows = [...TIERS, "none"].map((k) => {
      const s = tiers[k] || { jobs: 0, share: null };
      const note = `${num(s.jobs)} jobs · ${pct(s.share)}`;
      return { key: k, label: k, value: s.share, color: TIER_COLORS[k], note };
    });
    return [hbars("tiers", "Jobs per answering tier", rows, "data-tier", null, 0.4)];
  }

  // ------------------------------------------------------------------ panels

  function card(label, value, note) {
    return el(
      "div",
      { class: "card" },
      el("div", { class: "card-label", text: label }),
      el("div", { class: "card-value", text: value }),
      el("div", { class: "card-note muted", text: note || "" }),
    );
  }

  function renderCards(summary, cost) {
    const rt = summary.response_time;
    const large = summary.tiers.large || { share: null, jobs: 0 };
    const w = summary.window;
    $("cards").replaceChildren(
      card("Jobs", num(w.jobs), w.sampled ? `latest ${num(w.jobs)} of ${num(w.jobs_in_period)}` : "ended in the period"),
      card("p95 response", ms(rt.p95_ms), `p50 ${ms(rt.p50_ms)} · p99 ${ms(rt.p99_ms)}`),
      card("Cost", usd(summary.cost.total_usd), `≈ ${usd(cost.monthly_cost_usd)} per 30 days`),
      card("Cache hit rate", pct(summary.cache.hit_rate), `saved ${usd(summary.cache.saved_cost_usd)}`),
      card("Large tier", pct(large.share), `${num(large.jobs)} jobs`),
    );
  }

  function head(title, badgeClass, badge) {
    return el("div", { class: "advice-head" }, el("strong", { text: title }), el("span", { class: badgeClass, text: badge }));
  }

  function figures(dict) {
    const list = el("dl", { class: "figures" });
    for (const [name, value] of Object.entries(dict || {})) {
      list.append(el("dt", { text: name.replace(/_/g, " ") }), el("dd", { text: figure(name, value) }));
    }
    return list;
  }

  function renderSuggestions(items) {
    const box = $("suggestions");
    if (!items.length) {
      box.replaceChildren(el("li", { class: "muted", text: "No rule fired: nothing to suggest for this period." }));
      return;
    }
    box.replaceChildren(...items.map((s) => el("li", { "data-rule": s.rule, class: `impact-${s.impact}` },
      head(s.rule + (s.subject ? ` (${s.subject})` : ""), "badge", `${s.impact} impact · ${s.area.replace(/_/g, " ")}`),
      el("p", { text: s.message }),
      figures(s.figures))));
  }

  function renderStrategies(cost) {
    $("monthly").textContent = `Model spend in the period, extrapolated to 30 days: ${cost.monthly_cost_formula}.`;
    const box = $("strategies");
    if (!cost.strategies.length) {
      box.replaceChildren(el("li", { class: "muted", text: "No strategy applies to this period." }));
      return;
    }
    box.replaceChildren(...cost.strategies.map((s) => {
      const saves = s.estimated_monthly_savings_usd;
      return el("li", { "data-strategy": s.strategy, "data-savings-usd": saves },
        head(s.strategy.replace(/_/g, " "), "badge savings", `saves ≈ ${usd(saves)} / month`),
        el("p", { text: `${s.description}. Because ${s.condition}.` }),
        el("code", { class: "formula", text: s.formula }));
    }));
  }

  function render(period, summary, series, cost) {
    const w = summary.window;
    if (w.jobs === 0) {
      content.hidden = true;
      emptyNote.hidden = false;
      const whose = summary.scope === "own" ? " among this key's jobs" : "";
      emptyNote.textContent = `No job ended in the last ${PERIOD_WORDS[period]}${whose}. Charts appear once jobs finish.`;
      return;
    }
    emptyNote.hidden = true;
    content.hidden = false;
    renderCards(summary, cost);
    $("chart-latency").replaceChildren(...latencyChart(series.buckets, period));
    $("chart-cost").replaceChildren(...costChart(series.buckets, period));
    $("chart-cache").replaceChildren(...cacheChart(summary.cache));
    $("chart-tiers").replaceChildren(...tierChart(summary.tiers));
    renderSuggestions(summary.suggestions);
    renderStrategies(cost);
  }

  // ------------------------------------------------------------------ loading

  function period() {
    const checked = document.querySelector('input[name="period"]:checked');
    return checked ? checked.value : "day";
  }

  async function load() {
    if (authRequired && !apiKey()) {
      content.hidden = true;
      statusLine.textContent = "Enter an API key with the read scope to see the metrics.";
      keyInput.focus();
      return;
    }
    const gen = (generation += 1);
    const p = period();
    statusLine.textContent = "Loading…";
    let answers;
    try {
      answers = await Promise.all(["summary", "timeseries", "cost"].map((what) => api(`/v1/metrics/${what}?period=${p}`)));
    } catch (err) {
      if (gen !== generation) return;
      const hint = err.status === 401 || err.status === 403 ? " Check the API key." : "";
      statusLine.textContent = `Could not load the metrics: ${err.message}.${hint}`;
      return;
    }
    if (gen !== generation) return;
    const [summary, series, cost] = answers;
    render(p, summary, series, cost);
    const w = summary.window;
    const scope = summary.scope === "all" ? "every job" : "this key's jobs";
    const sampled = w.sampled ? ` · sampled: the latest ${num(w.jobs)} jobs` : "";
    statusLine.textContent = `Last ${PERIOD_WORDS[p]}, ${scope}${sampled} · refreshed ${new Date().toLocaleTimeString()}`;
  }

  for (const radio of document.querySelectorAll('input[name="period"]')) radio.addEventListener("change", load);
  $("refresh").addEventListener("click", load);

  if (authRequired) {
    keyForm.hidden = false;
    keyInput.placeholder = apiKey() ? "a key is set for this tab" : "af_…";
    keyInput.required = !apiKey();
    keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = keyInput.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      keyInput.value = "";
      keyInput.placeholder = "a key is set for this tab";
      load();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      keyInput.placeholder = "af_…";
      content.hidden = true;
      emptyNote.hidden = true;
      load();
    });
  }

  load();
  setInterval(load, REFRESH_MS);
})();

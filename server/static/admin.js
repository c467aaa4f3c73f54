// The admin dashboard: asks for an admin token once (kept in this tab's sessionStorage),
// then draws one project from GET /api/v1/projects/{id}/dashboard, one request per refresh.
// Charts: Apache ECharts, served by this server (vendor/echarts.min.js). Data from the API
// reaches the page only as text (textContent) or chart values, never as HTML.
"use strict";

(() => {
  const API = "/api/v1";
  const TOKEN_KEY = "scribbleflow.adminToken";
  const PROJECT_KEY = "scribbleflow.project";
  // How each model version status is drawn in the Dice chart (one series per status).
  const VERSION_STYLES = {
    serving: { name: "serving", color: "#16a34a", symbol: "diamond", size: 18 },
    promoted: { name: "promoted", color: "#2563eb", symbol: "circle", size: 10 },
    rejected: { name: "rejected", color: "#dc2626", symbol: "triangle", size: 13 },
    candidate: { name: "candidate", color: "#6b7280", symbol: "emptyCircle", size: 10 },
    averaged: { name: "served in an average", color: "#93c5fd", symbol: "emptyCircle", size: 8 },
  };
  const JOB_COLORS = {
    succeeded: "#2563eb", failed: "#dc2626", running: "#d97706", queued: "#9ca3af", superseded: "#a78bfa",
    cancelled: "#6b7280",
  };

  const $ = (id) => document.getElementById(id);
  const charts = {};
  let timer = null;
  let projectId = null;

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY) || "";
    let response;
    try {
      response = await fetch(API + path, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    } catch (error) {
      throw new ApiError(0, `the server did not answer (${error.message})`);
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) {
        // not JSON: keep the status text
      }
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  // --- messages, token ----------------------------------------------------------------

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function handleError(error) {
    if (error.status === 401 || error.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      const why = error.status === 401 ? "the token was refused" : "this token is not an admin's";
      showError(`${why} (HTTP ${error.status}): ${error.message}`);
      showLogin();
      return;
    }
    const status = error.status ? ` (HTTP ${error.status})` : "";
    showError(`refresh failed${status}: ${error.message}`);
  }

  function showLogin() {
    stopPolling();
    $("dashboard").hidden = true;
    $("controls").hidden = true;
    $("login").hidden = false;
    $("token").value = "";
    $("token").focus();
  }

  async function start() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      showLogin();
      return;
    }
    $("login").hidden = true;
    try {
      const projects = await (await api("/projects")).json();
      fillProjects(projects);
      $("controls").hidden = false;
      $("dashboard").hidden = false;
      await refresh();
    } catch (error) {
      handleError(error);
    }
  }

  function fillProjects(projects) {
    const select = $("project");
    select.replaceChildren();
    for (const project of projects) {
      const option = document.createElement("option");
      option.value = String(project.id);
      option.textContent = `${project.name} (#${project.id})`;
      select.append(option);
    }
    const remembered = sessionStorage.getItem(PROJECT_KEY);
    if (remembered && projects.some((p) => String(p.id) === remembered)) select.value = remembered;
    projectId = projects.length ? Number(select.value) : null;
    $("empty").hidden = projects.length > 0;
    $("tiles").hidden = $("images").hidden = projects.length === 0;
    document.querySelector(".charts").hidden = projects.length === 0;
  }

  // --- polling -------------------------------------------------------------------------

  function stopPolling() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stopPolling();
    const every = Number($("interval").value);
    if (every > 0) timer = setTimeout(refresh, every);
  }

  async function refresh() {
    stopPolling();
    if (projectId === null) return;
    if (document.hidden) {
      schedule(); // nobody looks: ask again later
      return;
    }
    try {
      const data = await (await api(`/projects/${projectId}/dashboard`)).json();
      clearError();
      render(data);
      schedule();
    } catch (error) {
      handleError(error);
      if (sessionStorage.getItem(TOKEN_KEY)) schedule();
    }
  }

  // --- drawing -------------------------------------------------------------------------

  const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
  const seconds = (value) => (value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} s`);

  function chart(id) {
    if (!charts[id]) charts[id] = echarts.init($(id), null, { renderer: "canvas" });
    return charts[id];
  }

  function baseOption() {
    return {
      animation: false,
      grid: { left: 48, right: 56, top: 54, bottom: 36 },
      tooltip: { trigger: "item", confine: true },
      legend: { top: 0, textStyle: { fontSize: 11 } },
    };
  }

  function versionStatus(version) {
    if (version.serving) return "serving";
    const status = version.details && version.details.status;
    if (status === "rejected") return "rejected";
    if (status === "candidate") return "candidate";
    if (status === "averaged") return "averaged";
    return "promoted";
  }

  function render(data) {
    $("updated").textContent = `updated ${new Date(data.generated_at).toLocaleTimeString()}`;
    renderTiles(data);
    renderDice(data.versions);
    renderJobs(data.jobs);
    renderJobStates(data.job_states);
    renderLatency(data.jobs);
    renderEffort(data.images);
    renderRounds(data.images);
    renderImages(data.images);
  }

  function renderTiles(data) {
    $("tile-serving").textContent = data.serving_version === null ? "none" : `v${data.serving_version}`;
    $("tile-dice").textContent = fmt(data.serving_dice);
    $("tile-images").textContent = `${data.images_accepted} / ${data.images_total}`;
    $("tile-queue").textContent = String(data.queue_depth);
    const states = Object.entries(data.job_states).map(([state, count]) => `${count} ${state}`);
    $("tile-jobs").textContent = states.length ? states.join(", ") : "none";
    const latency = data.round_latency;
    $("tile-round-latency").textContent = latency.rounds
      ? `${seconds(latency.p50_seconds)} / ${seconds(latency.p95_seconds)}` : "no rounds";
    $("tile-round-latency-label").textContent =
      `round latency p50 / p95, last ${Math.round(latency.window_seconds / 60)} min (${latency.rounds} rounds)`;
    const finished = data.jobs.filter((j) => j.annotation_to_model_seconds !== null);
    $("tile-model-latency").textContent = finished.length
      ? seconds(finished[finished.length - 1].annotation_to_model_seconds) : "–";
  }

  function renderDice(versions) {
    // One category per version, in order; each point carries its version number.
    const index = new Map(versions.map((v, k) => [v.version, k]));
    const point = (v) => ({
      value: [index.get(v.version), v.metrics.val_dice ?? null],
      version: v.version,
      reason: (v.details && v.details.reason) || "",
      source: v.source,
    });
    const series = Object.entries(VERSION_STYLES).map(([status, style]) => ({
      id: `versions-${status}`,
      name: style.name,
      type: "scatter",
      symbol: style.symbol,
      symbolSize: style.size,
      itemStyle: { color: style.color },
      z: status === "serving" ? 3 : 2,
      data: versions.filter((v) => versionStatus(v) === status).map(point),
    }));
    // The path of the versions that served, in order.
    series.push({
      id: "serving-path",
      name: "served",
      type: "line",
      showSymbol: false,
      silent: true,
      lineStyle: { color: "#93c5fd", width: 1.5 },
      data: versions
        .filter((v) => v.promoted && v.metrics.val_dice !== undefined && v.metrics.val_dice !== null)
        .map((v) => [index.get(v.version), v.metrics.val_dice]),
    });
    chart("chart-dice").setOption({
      ...baseOption(),
      tooltip: {
        trigger: "item",
        confine: true,
        formatter: (p) => `v${p.data.version} (${p.seriesName}, ${escapeHtml(p.data.source || "?")})<br>` +
          `validation Dice ${fmt(p.value[1])}<br>${escapeHtml(p.data.reason || "")}`,
      },
      xAxis: { type: "category", data: versions.map((v) => `v${v.version}`), name: "model version",
               nameLocation: "middle", nameGap: 24 },
      yAxis: { type: "value", name: "Dice", min: 0, max: 1 },
      series,
    }, { notMerge: true });
  }

  function renderJobStates(states) {
    chart("chart-states").setOption({
      ...baseOption(),
      legend: { top: 0, textStyle: { fontSize: 11 } },
      series: [{
        id: "job-states",
        name: "jobs",
        type: "pie",
        radius: ["35%", "65%"],
        center: ["50%", "58%"],
        label: { formatter: "{b}: {c}" },
        data: Object.entries(states).map(([state, count]) => ({
          name: state, value: count, itemStyle: { color: JOB_COLORS[state] || "#9ca3af" },
        })),
      }],
    }, { notMerge: true });
  }

  function renderJobs(jobs) {
    const names = jobs.map((j) => `#${j.id}`);
    chart("chart-jobs").setOption({
      ...baseOption(),
      tooltip: { trigger: "axis", confine: true },
      xAxis: { type: "category", data: names, name: "job", nameLocation: "middle", nameGap: 24 },
      yAxis: [{ type: "value", name: "seconds" }, { type: "value", name: "loss", splitLine: { show: false } }],
      series: [
        {
          id: "job-seconds",
          name: "run seconds",
          type: "bar",
          data: jobs.map((j) => ({ value: j.run_seconds, itemStyle: { color: JOB_COLORS[j.state] || "#9ca3af" } })),
        },
        {
          id: "job-loss",
          name: "final loss",
          type: "line",
          yAxisIndex: 1,
          connectNulls: true,
          itemStyle: { color: "#059669" },
          data: jobs.map((j) => j.loss),
        },
      ],
    }, { notMerge: true });
  }

  function renderLatency(jobs) {
    const finished = jobs.filter((j) => j.annotation_to_model_seconds !== null);
    chart("chart-latency").setOption({
      ...baseOption(),
      legend: { show: false },
      tooltip: { trigger: "axis", confine: true },
      xAxis: { type: "category", data: finished.map((j) => `#${j.id} (${j.trigger})`), name: "job",
               nameLocation: "middle", nameGap: 24 },
      yAxis: { type: "value", name: "seconds" },
      series: [{
        id: "annotation-to-model",
        name: "annotation → model",
        type: "bar",
        itemStyle: { color: "#7c3aed" },
        data: finished.map((j) => j.annotation_to_model_seconds),
      }],
    }, { notMerge: true });
  }

  function imageName(image) {
    return `${image.stream_position}: ${image.name}`;
  }

  function renderEffort(images) {
    const annotated = images.filter((i) => i.rounds > 0);
    chart("chart-effort").setOption({
      ...baseOption(),
      tooltip: { trigger: "axis", confine: true },
      xAxis: { type: "category", data: annotated.map(imageName), axisLabel: { width: 90, overflow: "truncate" } },
      yAxis: [{ type: "value", name: "count", minInterval: 1 },
              { type: "value", name: "voxels", splitLine: { show: false } }],
      series: [
        { id: "effort-rounds", name: "rounds", type: "bar", data: annotated.map((i) => i.rounds) },
        { id: "effort-slices", name: "slices touched", type: "bar", data: annotated.map((i) => i.effort.slices_touched) },
        { id: "effort-strokes", name: "strokes", type: "bar", data: annotated.map((i) => i.effort.strokes) },
        { id: "effort-clicks", name: "clicks", type: "bar", data: annotated.map((i) => i.effort.clicks) },
        { id: "effort-voxels", name: "scribbled voxels", type: "line", yAxisIndex: 1,
          data: annotated.map((i) => i.effort.voxels) },
      ],
    }, { notMerge: true });
  }

  function renderRounds(images) {
    const scored = images.filter((i) => i.dice_mean_per_round.some((d) => d !== null));
    const most = Math.max(1, ...scored.map((i) => i.dice_mean_per_round.length));
    chart("chart-rounds").setOption({
      ...baseOption(),
      tooltip: { trigger: "axis", confine: true },
      xAxis: { type: "category", data: Array.from({ length: most }, (_, k) => String(k + 1)), name: "round",
               nameLocation: "middle", nameGap: 24 },
      yAxis: { type: "value", name: "Dice", min: 0, max: 1 },
      series: scored.map((image) => ({
        id: `rounds-${image.image_id}`,
        name: imageName(image),
        type: "line",
        data: image.dice_mean_per_round,
      })),
    }, { notMerge: true });
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function renderImages(images) {
    const body = $("images").querySelector("tbody");
    const rows = images.map((image) => {
      const row = document.createElement("tr");
      row.dataset.imageId = String(image.image_id);
      cell(row, String(image.stream_position), "number");
      cell(row, image.name);
      const status = cell(row, "");
      const badge = document.createElement("span");
      badge.className = `status status-${image.status}`;
      badge.textContent = image.status.replace("_", " ");
      status.append(badge);
      if (image.is_validation) {
        const held = document.createElement("span");
        held.className = "validation";
        held.textContent = "validation";
        status.append(held);
      }
      cell(row, String(image.rounds), "number");
      cell(row, String(image.effort.slices_touched), "number");
      cell(row, String(image.effort.strokes), "number");
      cell(row, String(image.effort.clicks), "number");
      cell(row, String(image.effort.voxels), "number");
      const other = image.alternative_dice === null || image.alternative_dice === undefined
        ? "" : ` (${image.opening_source === "atlas" ? "model" : "atlas"} ${fmt(image.alternative_dice)})`;
      cell(row, image.opening_source ? `${image.opening_source} ${fmt(image.opening_dice)}${other}` : "–", "number");
      const last = image.dice_mean_per_round.length ? image.dice_mean_per_round.at(-1) : null;
      cell(row, fmt(last), "number");
      cell(row, image.accepted_at ? new Date(image.accepted_at).toLocaleString() : "–");
      const label = cell(row, "");
      if (image.label_url) {
        const link = document.createElement("a");
        link.href = image.label_url;
        link.textContent = "download";
        link.className = "label-link";
        link.dataset.filename = `label-${image.image_id}.nii.gz`;
        label.append(link);
      } else {
        label.textContent = "–";
      }
      return row;
    });
    body.replaceChildren(...rows);
  }

  // A plain link cannot carry the token: fetch the label with it and hand the browser the bytes.
  async function downloadLabel(link) {
    try {
      const blob = await (await api(link.getAttribute("href").slice(API.length))).blob();
      const url = URL.createObjectURL(blob);
      const save = document.createElement("a");
      save.href = url;
      save.download = link.dataset.filename;
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (error) {
      handleError(error);
    }
  }

  function escapeHtml(text) {
    const span = document.createElement("span");
    span.textContent = text;
    return span.innerHTML;
  }

  // --- wiring --------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      clearError();
      start();
    });
    $("logout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      clearError();
      showLogin();
    });
    $("project").addEventListener("change", () => {
      projectId = Number($("project").value);
      sessionStorage.setItem(PROJECT_KEY, String(projectId));
      refresh();
    });
    $("interval").addEventListener("change", schedule);
    $("refresh").addEventListener("click", refresh);
    $("images").addEventListener("click", (event) => {
      const link = event.target.closest("a.label-link");
      if (!link) return;
      event.preventDefault();
      downloadLabel(link);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && sessionStorage.getItem(TOKEN_KEY) && projectId !== null) refresh();
    });
    window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
    start();
  });
})();

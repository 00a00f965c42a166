// The durably dashboard: plain JavaScript, no framework, no build step.
//
// Every request uses a URL relative to the page, so the dashboard works wherever
// `create_app` is mounted. Views are hash routes: `#/?job=&status=&limit=&offset=` (the runs
// list) and `#/runs/<id>` (one run). Live updates come from two EventSource streams:
// `runs/subscribe` for the list and `subscribe?runId=` for the open run.
"use strict";

(() => {
  // -- plumbing ------------------------------------------------------------------------

  // the API's folder: the page's own (`/api/durably/` for a page there) unless the server
  // says otherwise in <meta name="durably-api"> (the dashboard at `/`, the API at `api/`)
  const API_META = document.querySelector('meta[name="durably-api"]');
  const BASE = new URL(
    (API_META && API_META.content) || ".",
    new URL(location.pathname, location.origin),
  );
  const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const STATUS_AFTER = {
    "run:trigger": "pending",
    "run:retry": "pending",
    "run:start": "running",
    "run:complete": "completed",
    "run:fail": "failed",
    "run:cancel": "cancelled",
  };
  const DEFAULT_LIMIT = 20;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function apiUrl(path, params = {}) {
    const url = new URL(path, BASE);
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
    }
    return url;
  }

  async function api(method, path, params = {}, body = undefined) {
    const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(apiUrl(path, params), init);
    } catch (error) {
      throw new ApiError(0, `the server cannot be reached (${error.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : response.statusText;
      throw new ApiError(response.status, message || `HTTP ${response.status}`);
    }
    return data;
  }

  // Builds an element: h("td", {className: "x"}, "text", childNode). Text is never parsed as HTML.
  function h(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key in node && !key.startsWith("aria")) node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setNotice(node, text, kind = "info") {
    node.textContent = text || "";
    node.dataset.kind = kind;
    show(node, Boolean(text));
  }

  // -- formatting ----------------------------------------------------------------------

  function formatTime(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay
      ? date.toLocaleTimeString(undefined, { hour12: false })
      : date.toLocaleString(undefined, { hour12: false });
  }

  function timeCell(tag, iso) {
    return h(tag, {}, iso ? h("time", { dateTime: iso, title: iso }, formatTime(iso)) : "—");
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
    const minutes = Math.floor(ms / 60_000);
    const seconds = Math.round((ms % 60_000) / 1000);
    return minutes < 60 ? `${minutes} min ${seconds} s` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function between(startIso, endIso) {
    if (!startIso || !endIso) return null;
    return new Date(endIso) - new Date(startIso);
  }

  function json(value, indent = 2) {
    if (value === undefined) return "";
    return JSON.stringify(value, null, indent);
  }

  // A JSON value for a table cell: inline when short, in a disclosure when long.
  function jsonCell(value) {
    if (value === null || value === undefined) return h("span", { className: "muted" }, "—");
    const compact = JSON.stringify(value);
    if (compact.length <= 60) return h("code", { className: "json-inline" }, compact);
    return h(
      "details",
      { className: "json-details" },
      h("summary", {}, h("code", {}, compact.slice(0, 57) + "…")),
      h("pre", { className: "json" }, json(value)),
    );
  }

  function badge(status) {
    return h("span", { className: "badge", dataset: { status } }, status);
  }

  function setBadge(node, status) {
    node.className = "badge";
    node.dataset.status = status;
    node.textContent = status;
  }

  // A progress bar (role=progressbar) with its text; setProgress updates it in place.
  function progressBar() {
    const fill = h("span", { className: "progress-fill" });
    const bar = h(
      "span",
      { className: "progress", role: "progressbar", "aria-valuemin": "0", "aria-label": "Progress" },
      fill,
    );
    return h("span", { className: "progress-cell" }, bar, h("span", { className: "progress-text" }));
  }

  function setProgress(cell, progress, status) {
    const bar = cell.querySelector(".progress");
    const fill = cell.querySelector(".progress-fill");
    const text = cell.querySelector(".progress-text");
    bar.dataset.status = status || "";
    if (!progress) {
      bar.removeAttribute("aria-valuenow");
      bar.removeAttribute("aria-valuemax");
      bar.setAttribute("aria-valuetext", "no progress reported");
      bar.dataset.state = "none";
      fill.style.width = "0%";
      text.textContent = "—";
      return;
    }
    const { current, total, message } = progress;
    bar.setAttribute("aria-valuenow", String(current));
    let label;
    if (typeof total === "number" && total > 0) {
      const ratio = Math.min(1, Math.max(0, current / total));
      bar.setAttribute("aria-valuemax", String(total));
      bar.dataset.state = "determinate";
      fill.style.width = `${(ratio * 100).toFixed(1)}%`;
      label = `${current} / ${total}`;
    } else {
      bar.removeAttribute("aria-valuemax");
      bar.dataset.state = "indeterminate";
      fill.style.width = "100%";
      label = String(current);
    }
    bar.setAttribute("aria-valuetext", message ? `${label}: ${message}` : label);
    text.textContent = message ? `${label} · ${message}` : label;
  }

  // -- connection indicator ------------------------------------------------------------

  function setConnection(state) {
    const node = $("connection");
    node.dataset.state = state;
    node.textContent = { live: "● Live", connecting: "Connecting…", reconnecting: "Reconnecting…", closed: "Disconnected" }[state];
  }

  // -- jobs ----------------------------------------------------------------------------

  const jobs = { list: [], byName: new Map() };

  async function loadJobs() {
    try {
      jobs.list = await api("GET", "jobs");
    } catch (error) {
      jobs.list = [];
      setNotice($("trigger-error"), `Could not load the jobs: ${error.message}`, "error");
    }
    jobs.byName = new Map(jobs.list.map((job) => [job.name, job]));
    fillJobSelects();
  }

  function fillJobSelects() {
    const trigger = $("trigger-job");
    trigger.replaceChildren(...jobs.list.map((job) => h("option", { value: job.name }, job.name)));
    const none = jobs.list.length === 0;
    trigger.disabled = none;
    $("trigger-submit").disabled = none;
    if (none) trigger.append(h("option", { value: "" }, "no jobs registered"));
    else fillInputTemplate();

    const filter = $("filter-job");
    const selected = list.query.job;
    const names = jobs.list.map((job) => job.name);
    if (selected && !names.includes(selected)) names.push(selected);
    filter.replaceChildren(
      h("option", { value: "" }, "All jobs"),
      ...names.map((name) => h("option", { value: name }, name)),
    );
    filter.value = selected || "";
  }

  // An example value from a JSON Schema (pydantic's), to prefill the input box.
  function example(schema, root, depth = 0) {
    if (!schema || typeof schema !== "object" || depth > 6) return null;
    if (schema.$ref) {
      const name = schema.$ref.split("/").pop();
      return example((root.$defs || {})[name], root, depth + 1);
    }
    if ("default" in schema) return schema.default;
    if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
    if ("const" in schema) return schema.const;
    if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
    for (const key of ["anyOf", "oneOf", "allOf"]) {
      if (Array.isArray(schema[key])) {
        const option = schema[key].find((s) => s && s.type !== "null") || schema[key][0];
        return example(option, root, depth + 1);
      }
    }
    switch (schema.type) {
      case "object": {
        const value = {};
        for (const [name, prop] of Object.entries(schema.properties || {})) {
          value[name] = example(prop, root, depth + 1);
        }
        return value;
      }
      case "array": return [];
      case "string": return "";
      case "integer":
      case "number": return 0;
      case "boolean": return false;
      default: return schema.properties ? example({ ...schema, type: "object" }, root, depth) : {};
    }
  }

  let lastTemplate = "{}";

  // Prefills the input with an example for the selected job, unless the user typed something.
  function fillInputTemplate() {
    const textarea = $("trigger-input");
    const job = jobs.byName.get($("trigger-job").value);
    if (textarea.value.trim() !== lastTemplate.trim() && textarea.value.trim() !== "") return;
    const value = job && job.inputSchema ? example(job.inputSchema, job.inputSchema) : {};
    lastTemplate = json(value === null ? {} : value);
    textarea.value = lastTemplate;
  }

  // -- trigger form --------------------------------------------------------------------

  async function onTrigger(event) {
    event.preventDefault();
    const textarea = $("trigger-input");
    const errorBox = $("trigger-error");
    const resultBox = $("trigger-result");
    setNotice(errorBox, "");
    show(resultBox, false);
    textarea.removeAttribute("aria-invalid");

    let input;
    const raw = textarea.value.trim();
    try {
      input = raw === "" ? {} : JSON.parse(raw);
    } catch (error) {
      textarea.setAttribute("aria-invalid", "true");
      setNotice(errorBox, `The input is not valid JSON: ${error.message}`, "error");
      textarea.focus();
      return;
    }
    const body = { jobName: $("trigger-job").value, input };
    const idempotencyKey = $("trigger-idempotency").value.trim();
    const concurrencyKey = $("trigger-concurrency").value.trim();
    if (idempotencyKey) body.idempotencyKey = idempotencyKey;
    if (concurrencyKey) body.concurrencyKey = concurrencyKey;

    const button = $("trigger-submit");
    button.disabled = true;
    try {
      const { runId } = await api("POST", "trigger", {}, body);
      resultBox.replaceChildren(
        "Triggered run ",
        h("a", { href: `#/runs/${encodeURIComponent(runId)}`, className: "mono" }, runId),
        ` of ${body.jobName}.`,
      );
      show(resultBox, true);
      scheduleListReload();
    } catch (error) {
      if (error.status === 400) textarea.setAttribute("aria-invalid", "true");
      setNotice(errorBox, error.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  // -- reads racing events ------------------------------------------------------------

  // A read that started before an event about its run may answer with the state before
  // that event, and overwrite what the event showed. Each event stamps its run with a
  // sequence number; a read remembers the number it started at and, when a newer event
  // about one of its runs came in meanwhile, reads that run again.
  let heardSeq = 0;
  const lastHeard = new Map(); // run id -> heardSeq of its latest event

  function hear(event) {
    if (event.runId) lastHeard.set(event.runId, ++heardSeq);
  }

  const heardSince = (id, seq) => (lastHeard.get(id) || 0) > seq;

  // -- runs list -----------------------------------------------------------------------

  const list = {
    query: { job: "", status: "", limit: DEFAULT_LIMIT, offset: 0 },
    runs: [],               // the runs on this page, newest first
    hasMore: false,
    rows: new Map(),        // run id -> <tr>
    liveSteps: new Map(),   // run id -> name of the step running now (from step:start)
    loading: 0,
  };

  function parseListQuery(params) {
    const int = (value, fallback) => {
      const n = Number.parseInt(value ?? "", 10);
      return Number.isFinite(n) && n >= 0 ? n : fallback;
    };
    const status = params.get("status") || "";
    return {
      job: params.get("job") || "",
      status: STATUSES.includes(status) ? status : "",
      limit: Math.max(1, Math.min(500, int(params.get("limit"), DEFAULT_LIMIT))),
      offset: int(params.get("offset"), 0),
    };
  }

  function listHash(query) {
    const params = new URLSearchParams();
    if (query.job) params.set("job", query.job);
    if (query.status) params.set("status", query.status);
    if (query.limit !== DEFAULT_LIMIT) params.set("limit", String(query.limit));
    if (query.offset) params.set("offset", String(query.offset));
    const text = params.toString();
    return text ? `#/?${text}` : "#/";
  }

  function navigateList(changes) {
    location.hash = listHash({ ...list.query, ...changes });
  }

  async function loadRuns() {
    const { job, status, limit, offset } = list.query;
    const ticket = ++list.loading;
    const seq = heardSeq;
    try {
      // one more than shown tells whether there is a next page
      const runs = await api("GET", "runs", { jobName: job, status, limit: limit + 1, offset });
      if (ticket !== list.loading) return; // a newer load has started
      list.hasMore = runs.length > limit;
      list.runs = runs.slice(0, limit);
      setNotice($("list-error"), "");
      renderRuns();
      for (const run of list.runs) if (heardSince(run.id, seq)) scheduleRowRefresh(run.id);
    } catch (error) {
      if (ticket === list.loading) setNotice($("list-error"), `Could not load the runs: ${error.message}`, "error");
    }
  }

  const scheduleListReload = debounce(loadRuns, 150);

  function renderRuns() {
    const body = $("runs-body");
    const seen = new Set();
    for (const run of list.runs) {
      seen.add(run.id);
      let row = list.rows.get(run.id);
      if (!row) {
        row = createRow(run);
        list.rows.set(run.id, row);
      }
      updateRow(row, run);
      body.append(row); // appending an existing row moves it: the order follows the page
    }
    for (const [id, row] of list.rows) {
      if (!seen.has(id)) {
        row.remove();
        list.rows.delete(id);
        list.liveSteps.delete(id);
      }
    }
    const { job, status, limit, offset } = list.query;
    const empty = list.runs.length === 0;
    show($("runs-empty"), empty);
    $("runs-empty").textContent = offset > 0
      ? "No runs on this page."
      : job || status ? "No runs match these filters." : "No runs yet: trigger one above.";
    $("page-info").textContent = empty
      ? `Page ${Math.floor(offset / limit) + 1}`
      : `Runs ${offset + 1}–${offset + list.runs.length}`;
    $("page-prev").disabled = offset === 0;
    $("page-next").disabled = !list.hasMore;
  }

  function createRow(run) {
    const link = h("a", { href: `#/runs/${encodeURIComponent(run.id)}`, className: "mono" }, run.id);
    const row = h(
      "tr",
      { dataset: { runId: run.id } },
      h("td", { className: "cell-id" }, link),
      h("td", { className: "cell-job" }),
      h("td", { className: "cell-status" }, badge(run.status)),
      h("td", { className: "cell-progress" }, progressBar()),
      h("td", { className: "cell-step" }),
      h("td", { className: "cell-created" }),
      h("td", { className: "cell-updated" }),
    );
    // the whole row opens the run; the link keeps it reachable from the keyboard
    row.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      location.hash = `#/runs/${encodeURIComponent(run.id)}`;
    });
    return row;
  }

  function stepText(run) {
    const live = list.liveSteps.get(run.id);
    if (run.status === "running") return live || `step ${run.currentStepIndex}`;
    if (run.stepCount) return `${run.stepCount} step${run.stepCount === 1 ? "" : "s"}`;
    return "—";
  }

  function updateRow(row, run) {
    row.dataset.status = run.status;
    row.querySelector(".cell-job").textContent = run.jobName;
    setBadge(row.querySelector(".cell-status .badge"), run.status);
    setProgress(row.querySelector(".cell-progress .progress-cell"), run.progress, run.status);
    row.querySelector(".cell-step").textContent = stepText(run);
    row.querySelector(".cell-created").replaceWith(timeCell("td", run.createdAt));
    row.children[5].className = "cell-created";
    row.querySelector(".cell-updated").replaceWith(timeCell("td", run.updatedAt));
    row.children[6].className = "cell-updated";
  }

  function listedRun(id) {
    return list.runs.find((run) => run.id === id);
  }

  // Refreshes one listed run from the server (the events carry only a summary).
  const refreshers = new Map();
  function scheduleRowRefresh(id) {
    if (!refreshers.has(id)) {
      refreshers.set(id, debounce(async () => {
        refreshers.delete(id);
        const seq = heardSeq;
        let fresh;
        try {
          fresh = await api("GET", "run", { runId: id });
        } catch (error) {
          if (error.status === 404) scheduleListReload();
          return;
        }
        const index = list.runs.findIndex((run) => run.id === id);
        if (index === -1) return;
        list.runs[index] = fresh;
        const row = list.rows.get(id);
        if (row) updateRow(row, fresh);
        if (heardSince(id, seq)) scheduleRowRefresh(id);
      }, 120));
    }
    refreshers.get(id)();
  }

  function matchesFilters(jobName, status) {
    const { job, status: wanted } = list.query;
    return (!job || job === jobName) && (!wanted || wanted === status);
  }

  function onRunsEvent(event) {
    const run = listedRun(event.runId);
    const status = STATUS_AFTER[event.type];
    if (event.type === "run:trigger") {
      // a new run goes on top of the first page
      if (list.query.offset === 0 && matchesFilters(event.jobName, "pending")) scheduleListReload();
      return;
    }
    if (status !== undefined) {
      if (list.query.status) scheduleListReload(); // the run may enter or leave the filter
      if (!run) return;
      run.status = status;
      if (status !== "running") list.liveSteps.delete(run.id);
      updateRow(list.rows.get(run.id), run);
      scheduleRowRefresh(run.id);
      return;
    }
    if (!run) return;
    if (event.type === "run:progress") {
      run.progress = event.progress;
      updateRow(list.rows.get(run.id), run);
    } else if (event.type === "step:start") {
      list.liveSteps.set(run.id, event.stepName);
      updateRow(list.rows.get(run.id), run);
    } else if (event.type === "step:complete" || event.type === "step:fail") {
      scheduleRowRefresh(run.id);
    }
  }

  let runsStream = null;
  function openRunsStream() {
    runsStream = new EventSource(apiUrl("runs/subscribe"));
    runsStream.addEventListener("open", () => {
      setConnection("live");
      // what changed before the stream listened (or while it reconnected) is only in the
      // database: read the list again now that nothing more can be missed
      if (view.runId === null) scheduleListReload();
    });
    runsStream.addEventListener("error", () => {
      setConnection(runsStream.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
    runsStream.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      hear(event);
      onRunsEvent(event);
      if (view.runId === event.runId) onOpenRunSummary(event);
    });
  }

  // -- one run -------------------------------------------------------------------------

  const view = {
    runId: null,
    run: null,
    steps: [],
    liveStep: null,          // {name, index, startedAt} while a step runs
    failedStepName: null,    // from run:fail, until the steps say it
    storedLogs: [],
    liveLogs: [],            // log:write events received while the page is open
    stream: null,
    busy: false,
  };

  function closeRunStream() {
    if (view.stream) view.stream.close();
    view.stream = null;
  }

  async function openRun(id) {
    closeRunStream();
    Object.assign(view, {
      runId: id, run: null, steps: [], liveStep: null, failedStepName: null, storedLogs: [], liveLogs: [],
    });
    $("run-id").textContent = id;
    setNotice($("run-message"), "");
    setNotice($("run-missing"), "");
    show($("run-body"), true);
    document.title = `Run ${id} · durably`;
    renderRun();
    // show what is stored at once; the stream reads it again once it listens (see below)
    openRunStream(id);
    await refreshRun();
    await loadLogs();
  }

  function openRunStream(id) {
    const stream = new EventSource(apiUrl("subscribe", { runId: id }));
    view.stream = stream;
    // an EventSource connects asynchronously: what happened before it listened is only in
    // the database, so read the run again on every (re)connection
    stream.addEventListener("open", () => {
      if (view.stream === stream) scheduleRunRefresh();
    });
    stream.addEventListener("message", (message) => {
      if (view.stream !== stream) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      hear(event);
      onRunEvent(event);
    });
    stream.addEventListener("error", () => {
      // a deleted or unknown run answers 404: the browser gives up, and so do we; reading
      // the run once more tells the user why
      if (stream.readyState === EventSource.CLOSED && view.stream === stream) {
        view.stream = null;
        scheduleRunRefresh();
      }
    });
  }

  function onRunEvent(event) {
    const status = STATUS_AFTER[event.type];
    if (status !== undefined && view.run) {
      view.run.status = status;
      if (event.type === "run:fail") {
        view.run.error = event.error ?? view.run.error;
        view.failedStepName = event.failedStepName ?? null;
      }
      if (event.type === "run:complete") {
        view.run.output = event.output ?? null;
        view.run.error = null;
      }
      if (event.type === "run:retry") view.run.error = null;
      if (status !== "running") view.liveStep = null;
      renderRun();
      scheduleRunRefresh();
    }
    switch (event.type) {
      case "run:complete":
        // the server ends this stream now; closing it stops the browser from reconnecting
        closeRunStream();
        scheduleLogsReload();
        break;
      case "run:fail":
      case "run:cancel":
        scheduleLogsReload();
        break;
      case "run:progress":
        if (view.run) {
          view.run.progress = event.progress;
          renderProgress();
        }
        break;
      case "step:start":
        view.liveStep = { name: event.stepName, index: event.stepIndex, startedAt: event.timestamp };
        renderSteps();
        break;
      case "step:complete":
      case "step:fail":
        // show the finished step at once; the refresh below brings the stored record
        upsertStep(stepFromEvent(event));
        view.liveStep = null;
        renderSteps();
        scheduleRunRefresh();
        break;
      case "log:write":
        view.liveLogs.push({
          stepName: event.stepName ?? null,
          level: event.level,
          message: event.message,
          data: event.data ?? null,
          createdAt: event.timestamp,
        });
        renderLogs();
        break;
      default:
        break;
    }
  }

  // A step record built from step:complete/step:fail (duration is in ms on the wire).
  function stepFromEvent(event) {
    const end = Date.parse(event.timestamp);
    const started = Number.isFinite(event.duration) ? new Date(end - event.duration).toISOString() : null;
    return {
      index: event.stepIndex,
      name: event.stepName,
      status: event.type === "step:fail" ? "failed" : "completed",
      output: event.output ?? null,
      error: event.error ?? null,
      startedAt: started,
      completedAt: event.timestamp,
    };
  }

  function upsertStep(step) {
    const steps = view.steps.filter((known) => known.index !== step.index);
    steps.push(step);
    steps.sort((a, b) => a.index - b.index);
    view.steps = steps;
  }

  // The list stream also tells the open run about triggers elsewhere: nothing to do yet,
  // but a summary of a status change is a cheap hint to re-read when our stream is closed.
  function onOpenRunSummary(event) {
    if (view.stream === null && STATUS_AFTER[event.type] !== undefined) {
      scheduleRunRefresh();
      if (event.type === "run:retry" || event.type === "run:start") openRunStream(view.runId);
    }
  }

  async function refreshRun() {
    const id = view.runId;
    const seq = heardSeq;
    try {
      const [run, steps] = await Promise.all([
        api("GET", "run", { runId: id }),
        api("GET", "steps", { runId: id }),
      ]);
      if (view.runId !== id) return;
      view.run = run;
      view.steps = steps;
      if (run.status !== "failed") view.failedStepName = null;
      if (view.liveStep && steps.some((step) => step.index === view.liveStep.index)) view.liveStep = null;
      renderRun();
      if (heardSince(id, seq)) scheduleRunRefresh();
    } catch (error) {
      if (view.runId !== id) return;
      if (error.status === 404) {
        closeRunStream();
        view.run = null;
        show($("run-body"), false);
        setNotice($("run-missing"), `Run ${id} does not exist (it may have been deleted).`, "error");
        renderRun();
      } else {
        setNotice($("run-message"), `Could not load the run: ${error.message}`, "error");
      }
    }
  }

  const scheduleRunRefresh = debounce(refreshRun, 120);

  async function loadLogs() {
    const id = view.runId;
    try {
      const logs = await api("GET", "logs", { runId: id });
      if (view.runId !== id) return;
      view.storedLogs = logs;
      renderLogs();
    } catch {
      // logs are a bonus: the run view stays useful without them
    }
  }

  const scheduleLogsReload = debounce(loadLogs, 200);

  function renderRun() {
    const run = view.run;
    const status = run ? run.status : null;
    if (status) setBadge($("run-status"), status);
    show($("run-status"), Boolean(status));
    $("action-retry").disabled = view.busy || !(status === "failed" || status === "cancelled");
    $("action-cancel").disabled = view.busy || !(status === "pending" || status === "running");
    $("action-delete").disabled = view.busy || !TERMINAL.has(status);
    if (!run) return;

    const fields = [
      ["Job", run.jobName],
      ["Status", badge(run.status)],
      ["Created", timeCell("span", run.createdAt)],
      ["Started", timeCell("span", run.startedAt)],
      ["Completed", timeCell("span", run.completedAt)],
      ["Updated", timeCell("span", run.updatedAt)],
      ["Duration", formatDuration(between(run.startedAt, run.completedAt))],
      ["Steps", String(run.stepCount)],
      ["Current step index", String(run.currentStepIndex)],
      ["Heartbeat", timeCell("span", run.heartbeatAt)],
      ["Idempotency key", run.idempotencyKey ?? "—"],
      ["Concurrency key", run.concurrencyKey ?? "—"],
    ];
    $("run-fields").replaceChildren(
      ...fields.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]),
    );
    renderProgress();

    const failed = run.error !== null && run.error !== undefined && run.error !== "";
    show($("run-error-card"), failed);
    $("run-error").textContent = failed ? run.error : "";
    const failedStep = view.failedStepName
      || (view.steps.find((step) => step.status === "failed") || {}).name;
    show($("run-failed-step"), failed && Boolean(failedStep));
    $("run-failed-step").textContent = failedStep ? `in step “${failedStep}”` : "";

    $("run-input").textContent = json(run.payload);
    $("run-output").textContent = run.output === null || run.output === undefined
      ? (run.status === "completed" ? "null" : "—")
      : json(run.output);
    renderSteps();
  }

  function renderProgress() {
    const holder = $("run-progress");
    if (!holder.firstChild) {
      holder.append(progressBar());
      holder.querySelector(".progress").setAttribute("aria-labelledby", "run-progress-label");
      holder.querySelector(".progress").removeAttribute("aria-label");
    }
    if (view.run) setProgress(holder.firstChild, view.run.progress, view.run.status);
  }

  function renderSteps() {
    const rows = view.steps.map((step) => h(
      "tr",
      { dataset: { stepIndex: step.index, status: step.status } },
      h("td", { className: "num" }, String(step.index)),
      h("td", {}, h("code", {}, step.name)),
      h("td", {}, badge(step.status)),
      timeCell("td", step.startedAt),
      h("td", { className: "num" }, formatDuration(between(step.startedAt, step.completedAt))),
      h("td", {}, step.error ? h("pre", { className: "error-text" }, step.error) : jsonCell(step.output)),
    ));
    const live = view.liveStep;
    if (live && !view.steps.some((step) => step.index === live.index)) {
      rows.push(h(
        "tr",
        { dataset: { stepIndex: live.index, status: "running" } },
        h("td", { className: "num" }, String(live.index)),
        h("td", {}, h("code", {}, live.name)),
        h("td", {}, badge("running")),
        timeCell("td", live.startedAt),
        h("td", { className: "num" }, "…"),
        h("td", {}, h("span", { className: "muted" }, "running")),
      ));
    }
    $("steps-body").replaceChildren(...rows);
    show($("steps-body").closest(".table-wrap"), rows.length > 0);
    show($("steps-empty"), rows.length === 0);
  }

  // Stored logs, then the live ones not stored (yet, or at all without log persistence).
  function mergedLogs() {
    const key = (log) => JSON.stringify([log.stepName ?? null, log.level, log.message, log.data ?? null]);
    const unmatched = new Map();
    for (const log of view.storedLogs) unmatched.set(key(log), (unmatched.get(key(log)) || 0) + 1);
    const extra = [];
    for (const log of view.liveLogs) {
      const count = unmatched.get(key(log)) || 0;
      if (count > 0) unmatched.set(key(log), count - 1);
      else extra.push(log);
    }
    return [...view.storedLogs, ...extra];
  }

  function renderLogs() {
    const logs = mergedLogs();
    $("logs-body").replaceChildren(...logs.map((log) => h(
      "tr",
      { dataset: { level: log.level } },
      timeCell("td", log.createdAt),
      h("td", {}, h("span", { className: "level", dataset: { level: log.level } }, log.level)),
      h("td", {}, log.stepName ? h("code", {}, log.stepName) : h("span", { className: "muted" }, "—")),
      h("td", { className: "log-message" }, log.message),
      h("td", {}, jsonCell(log.data)),
    )));
    show($("logs-body").closest(".table-wrap"), logs.length > 0);
    show($("logs-empty"), logs.length === 0);
  }

  async function runAction(kind) {
    const id = view.runId;
    if (kind === "delete" && !window.confirm(`Delete run ${id} with its steps and logs?`)) return;
    view.busy = true;
    renderRun();
    try {
      if (kind === "retry") await api("POST", "retry", { runId: id });
      else if (kind === "cancel") await api("POST", "cancel", { runId: id });
      else await api("DELETE", "run", { runId: id });
      if (kind === "delete") {
        closeRunStream();
        flash(`Run ${id} was deleted.`);
        location.hash = listHash(list.query);
        return;
      }
      setNotice($("run-message"), kind === "retry" ? "Retry requested: the run is pending again." : "Cancel requested.");
      if (kind === "retry" && view.stream === null) openRunStream(id);
    } catch (error) {
      setNotice($("run-message"), `Could not ${kind} the run: ${error.message}`, "error");
    } finally {
      view.busy = false;
      await refreshRun();
    }
  }

  // A message for the runs list, shown by the next route() to the list and then dropped.
  let flashText = "";
  function flash(text) {
    flashText = text;
  }

  // -- routing -------------------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, queryText = ""] = hash.split("?");
    const match = path.match(/^\/runs\/([^/]+)$/);
    if (match) {
      show($("list-view"), false);
      show($("run-view"), true);
      openRun(decodeURIComponent(match[1]));
      $("run-heading").focus({ preventScroll: true });
      return;
    }
    closeRunStream();
    view.runId = null;
    show($("run-view"), false);
    show($("list-view"), true);
    document.title = "Runs · durably";
    setNotice($("flash"), flashText);
    flashText = "";
    list.query = parseListQuery(new URLSearchParams(queryText));
    $("filter-job").value = list.query.job;
    if ($("filter-job").value !== list.query.job) fillJobSelects();
    $("filter-status").value = list.query.status;
    const size = $("page-size");
    if (![...size.options].some((option) => option.value === String(list.query.limit))) {
      size.append(h("option", {}, String(list.query.limit)));
    }
    size.value = String(list.query.limit);
    loadRuns();
  }

  // -- start ---------------------------------------------------------------------------

  function wire() {
    $("trigger-form").addEventListener("submit", onTrigger);
    $("trigger-job").addEventListener("change", fillInputTemplate);
    $("trigger-input").addEventListener("input", () => $("trigger-input").removeAttribute("aria-invalid"));
    $("filter-job").addEventListener("change", (e) => navigateList({ job: e.target.value, offset: 0 }));
    $("filter-status").addEventListener("change", (e) => navigateList({ status: e.target.value, offset: 0 }));
    $("page-size").addEventListener("change", (e) => navigateList({ limit: Number(e.target.value), offset: 0 }));
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    $("page-prev").addEventListener("click", () => {
      navigateList({ offset: Math.max(0, list.query.offset - list.query.limit) });
    });
    $("page-next").addEventListener("click", () => navigateList({ offset: list.query.offset + list.query.limit }));
    $("action-retry").addEventListener("click", () => runAction("retry"));
    $("action-cancel").addEventListener("click", () => runAction("cancel"));
    $("action-delete").addEventListener("click", () => runAction("delete"));
    window.addEventListener("hashchange", route);
  }

  async function start() {
    wire();
    openRunsStream();
    route();
    await loadJobs();
  }

  start();
})();

// The job page: live state, live logs (resumable by sequence number) and live uPlot charts.
"use strict";
(function () {
  var root = document.getElementById("job");
  if (!root) { return; }

  // ---- state -----------------------------------------------------------------------------
  function applySummary(s) {
    root.querySelectorAll("[data-field]").forEach(function (el) {
      var v = s[el.dataset.field];
      if (v !== undefined) { el.textContent = v === null ? "" : String(v); }
    });
    var state = document.getElementById("job-state");
    state.className = "state st-" + s.state;
    var stop = document.getElementById("btn-stop"), remove = document.getElementById("btn-remove");
    if (stop) { stop.disabled = s.ended; }
    if (remove) { remove.disabled = !s.ended; }
    var cancel = document.getElementById("btn-cancel");
    if (cancel && s.state !== "SCHEDULED" && s.state !== "PENDING") { cancel.remove(); }
  }
  var last = null;
  var states = new EventSource(root.dataset.events);
  states.addEventListener("state", function (e) { last = JSON.parse(e.data); applySummary(last); });
  // htmx re-enables a button when its request returns, possibly after the job ended: decide again.
  document.addEventListener("htmx:afterRequest", function () { if (last) { applySummary(last); } });
  states.addEventListener("end", function () { states.close(); });

  // ---- logs --------------------------------------------------------------------------------
  // The view keeps the newest MAX_CHARS characters; older output stays downloadable ("download
  // all"), it is only not kept in the page, so a job writing 10 MB/s cannot freeze the tab.
  // Text goes into blocks of about BLOCK_CHARS, each closed at a line end: a new frame lays out only
  // its new block, and blocks scrolled out of view are skipped (content-visibility: auto in
  // app.css). One block for the whole log would be laid out again, in full, on every frame.
  var MAX_CHARS = 1 << 19, BLOCK_CHARS = 1 << 13;
  var pre = document.getElementById("logs"), status = document.getElementById("log-status");
  var follow = document.getElementById("log-follow"), windowed = document.getElementById("log-windowed");
  var stats = { lastSeq: 0, chunks: 0, chars: 0, gaps: 0, dups: 0, dropped: 0, connects: 0 };
  var blocks = [], shown = 0, pending = [], scheduled = false, source = null, ended = false, retryMs = 500;

  function newBlock(parent) {
    var block = { el: document.createElement("div"), len: 0, span: null, stream: 0, closed: false };
    block.el.className = "block";
    parent.appendChild(block.el);
    blocks.push(block);
    return block;
  }

  function put(block, stream, text) {
    if (block.span && block.stream === stream) {
      block.span.appendData(text);
    } else {
      var el = document.createElement("span");
      el.className = stream === 2 ? "stderr" : "stdout";
      block.span = document.createTextNode(text);
      el.appendChild(block.span);
      block.el.appendChild(el);
      block.stream = stream;
    }
    block.len += text.length;
    shown += text.length;
    if (block.len >= BLOCK_CHARS && text.charAt(text.length - 1) === "\n") { block.closed = true; }
  }

  function flush() {
    scheduled = false;
    // Output that would be trimmed again in this same frame is never put into the page: under a
    // firehose the DOM only ever receives the newest MAX_CHARS characters.
    var total = 0, i = pending.length - 1;
    for (; i > 0; i--) { total += pending[i][2].length; if (total >= MAX_CHARS) { break; } }
    if (i > 0) {
      pending.slice(0, i).forEach(function (c) { stats.dropped += c[2].length; });
      pending = pending.slice(i);
      blocks.forEach(function (b) { stats.dropped += b.len; });
      blocks = []; shown = 0; pre.textContent = "";
    }
    var frag = document.createDocumentFragment();
    var block = blocks.length ? blocks[blocks.length - 1] : null;
    pending.forEach(function (c) {
      var text = c[2];
      while (text.length) {
        if (!block || block.closed) { block = newBlock(frag); }
        var room = BLOCK_CHARS - block.len, cut = text.length;
        if (text.length > room) {   // close the block at the first line end past its size, if any
          var nl = text.indexOf("\n", Math.max(0, room - 1));
          cut = nl < 0 ? text.length : nl + 1;
        }
        put(block, c[1], text.slice(0, cut));
        text = text.slice(cut);
        if (text.length) { block.closed = true; }
      }
    });
    pending = [];
    pre.appendChild(frag);
    while (shown > MAX_CHARS && blocks.length > 1) {
      var first = blocks.shift();
      first.el.remove();
      shown -= first.len;
      stats.dropped += first.len;
    }
    if (stats.dropped) {
      windowed.hidden = false;
      windowed.textContent = "Showing the newest output; " + stats.dropped +
        " older characters are not kept in this view (download all to see everything).";
    }
    if (follow.checked) { pre.scrollTop = pre.scrollHeight; }
  }

  function onLog(e) {
    JSON.parse(e.data).c.forEach(function (c) {
      if (c[0] <= stats.lastSeq) { stats.dups += 1; return; }
      if (stats.lastSeq && c[0] !== stats.lastSeq + 1) { stats.gaps += 1; }
      stats.lastSeq = c[0];
      stats.chunks += 1;
      stats.chars += c[2].length;
      pending.push(c);
    });
    if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
  }

  function connect() {
    stats.connects += 1;
    status.textContent = "live";
    source = new EventSource(root.dataset.logs + "?from_seq=" + (stats.lastSeq + 1));
    source.addEventListener("log", onLog);
    source.addEventListener("end", function () { ended = true; source.close(); status.textContent = "job ended: complete log shown"; });
    source.addEventListener("failure", function (e) { status.textContent = "error: " + JSON.parse(e.data).message; });
    // Our own reconnect (not EventSource's) so the resume point is always lastSeq + 1.
    source.onopen = function () { retryMs = 500; };
    source.onerror = function () {
      source.close();
      if (ended) { return; }
      // Back off (up to 30 s) so a stopped dashboard or an expired session is not asked every second.
      retryMs = Math.min(retryMs * 2, 30000);
      status.textContent = "reconnecting";
      setTimeout(connect, retryMs);
    };
  }
  window.capsaLogs = { stats: stats, reconnect: function () { if (source) { source.close(); } connect(); } };
  connect();

  // ---- charts ------------------------------------------------------------------------------
  var WINDOW = 900;   // points kept per chart (15 min at the daemon's 1 s sampling)
  var data = { t: [], cpu: [], mem: [], ior: [], iow: [], pids: [] };
  var limits = {}, prev = null, charts = {};
  window.capsaCharts = { points: 0, lastMem: null, memLimit: null };
  var LIMIT = { label: "limit", stroke: "#c53030", dash: [6, 4], points: { show: false } };

  function make(id, series, yLabel) {
    var el = document.getElementById(id);
    var opts = { width: Math.max(260, el.clientWidth || 420), height: 160, series: [{}].concat(series),
                 axes: [{}, { label: yLabel, size: 60 }], legend: { live: false } };
    return new uPlot(opts, [[]].concat(series.map(function () { return []; })), el);
  }
  // A chart's series, with its limit drawn as a dashed line when the job has one.
  function withLimit(series, limit) { return limit ? series.concat([LIMIT]) : series; }
  function ensureCharts() {
    if (charts.cpu || typeof uPlot === "undefined") { return; }
    charts.cpu = make("chart-cpu", withLimit([{ label: "cpu %", stroke: "#2b6cb0", fill: "rgba(43,108,176,.1)" }],
                                             limits.cpu_limit), "%");
    charts.mem = make("chart-mem", withLimit([{ label: "memory MiB", stroke: "#2f855a", fill: "rgba(47,133,90,.1)" }],
                                             limits.memory_limit), "MiB");
    charts.io = make("chart-io", [{ label: "read B/s", stroke: "#6b46c1" }, { label: "write B/s", stroke: "#dd6b20" }], "B/s");
    charts.pids = make("chart-pids", withLimit([{ label: "pids", stroke: "#4a5568" }], limits.pids_limit), "pids");
  }
  function plot(chart, values, limit) {
    var rows = [data.t, values];
    if (limit) { rows.push(data.t.map(function () { return limit; })); }
    chart.setData(rows);
  }
  function redraw() {
    ensureCharts();
    if (!charts.cpu) { return; }
    plot(charts.cpu, data.cpu, limits.cpu_limit);
    plot(charts.mem, data.mem, limits.memory_limit ? limits.memory_limit / 1048576 : null);
    charts.io.setData([data.t, data.ior, data.iow]);
    plot(charts.pids, data.pids, limits.pids_limit);
  }
  function onSamples(e) {
    JSON.parse(e.data).forEach(function (s) {
      var dt = prev ? s.t - prev.t : 0;
      data.t.push(s.t);
      data.cpu.push(s.cpu);
      data.mem.push(s.mem === null ? null : s.mem / 1048576);
      data.ior.push(prev && dt > 0 && s.io_r !== null && prev.io_r !== null ? (s.io_r - prev.io_r) / dt : null);
      data.iow.push(prev && dt > 0 && s.io_w !== null && prev.io_w !== null ? (s.io_w - prev.io_w) / dt : null);
      data.pids.push(s.pids);
      prev = s;
      window.capsaCharts.points += 1;
      window.capsaCharts.lastMem = s.mem;
    });
    Object.keys(data).forEach(function (k) { if (data[k].length > WINDOW) { data[k].splice(0, data[k].length - WINDOW); } });
    var memNow = document.getElementById("mem-now");
    if (prev && prev.mem !== null) {
      memNow.textContent = (prev.mem / 1048576).toFixed(1) + " MiB" +
        (limits.memory_limit ? " of " + (limits.memory_limit / 1048576).toFixed(0) + " MiB limit" : "");
    }
    redraw();
  }
  var metrics = new EventSource(root.dataset.metrics);
  // Every (re)connection starts with "limits" and then the kept history: start the series afresh.
  metrics.addEventListener("limits", function (e) {
    limits = JSON.parse(e.data);
    window.capsaCharts.memLimit = limits.memory_limit;
    Object.keys(data).forEach(function (k) { data[k] = []; });
    prev = null;
  });
  metrics.addEventListener("samples", onSamples);
  metrics.addEventListener("end", function () { metrics.close(); });
  window.addEventListener("pagehide", function () { states.close(); metrics.close(); if (source) { source.close(); } });
})();

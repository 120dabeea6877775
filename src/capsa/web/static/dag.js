// Draws a graph (workflow DAG, capsule dependencies) with dagre's layout as SVG; node colours
// follow live states from server-sent events. Labels are set with textContent: never parsed as HTML.
"use strict";
(function () {
  var box = document.getElementById("dag");
  if (!box || typeof dagre === "undefined") { return; }
  var graph = JSON.parse(document.querySelector(box.dataset.graph).textContent);
  var NS = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs) {
    var el = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  }

  var g = new dagre.graphlib.Graph({ multigraph: false });
  g.setGraph({ rankdir: "LR", nodesep: 30, ranksep: 90, edgesep: 20, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(function () { return {}; });
  graph.nodes.forEach(function (n) {
    g.setNode(n.id, { width: Math.max(90, 9 * n.label.length + 28), height: 40, data: n });
  });
  graph.edges.forEach(function (e) {
    g.setEdge(e.from, e.to, { label: e.label, width: Math.min(260, 7 * e.label.length), height: 16, labelpos: "c" });
  });
  dagre.layout(g);

  var size = g.graph();
  var svg = svgEl("svg", { width: size.width, height: size.height, viewBox: "0 0 " + size.width + " " + size.height,
                           role: "img", "aria-label": "dependency graph" });
  var defs = svgEl("defs");
  var marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.appendChild(svgEl("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.appendChild(marker);
  svg.appendChild(defs);

  g.edges().forEach(function (ref) {
    var e = g.edge(ref);
    var d = e.points.map(function (p, i) { return (i ? "L" : "M") + p.x + "," + p.y; }).join(" ");
    var group = svgEl("g", { class: "edge", "data-from": ref.v, "data-to": ref.w });
    group.appendChild(svgEl("path", { d: d, "marker-end": "url(#arrow)" }));
    if (e.label) {
      var text = svgEl("text", { x: e.x, y: e.y + 4, "text-anchor": "middle", class: "edge-label" });
      text.textContent = e.label;
      group.appendChild(text);
    }
    svg.appendChild(group);
  });

  var nodes = {};
  g.nodes().forEach(function (id) {
    var n = g.node(id), data = n.data;
    var group = svgEl("g", { class: "node st-" + data.state, "data-node": id, "data-state": data.state,
                             transform: "translate(" + (n.x - n.width / 2) + "," + (n.y - n.height / 2) + ")" });
    group.appendChild(svgEl("rect", { width: n.width, height: n.height, rx: 6, ry: 6 }));
    var label = svgEl("text", { x: n.width / 2, y: n.height / 2 + 5, "text-anchor": "middle" });
    label.textContent = data.label;
    group.appendChild(label);
    var title = svgEl("title");
    group.appendChild(title);
    nodes[id] = { el: group, data: data, title: title };
    setState(id, data);
    group.addEventListener("click", function () {
      var job = nodes[id].data.job_id;
      if (job && box.dataset.jobBase) { window.location.href = box.dataset.jobBase + encodeURIComponent(job); }
    });
    svg.appendChild(group);
  });
  box.appendChild(svg);

  function setState(id, s) {
    var node = nodes[id];
    if (!node) { return; }
    Object.keys(s).forEach(function (k) { node.data[k] = s[k]; });
    node.el.setAttribute("class", "node st-" + node.data.state + (node.data.job_id ? " linked" : ""));
    node.el.setAttribute("data-state", node.data.state);
    node.title.textContent = id + ": " + node.data.state + (node.data.reason ? " (" + node.data.reason + ")" : "") +
      (node.data.requires && node.data.requires !== "(none)" ? "\nrequires " + node.data.requires : "");
  }

  function setRow(name, s) {
    var row = document.querySelector('tr[data-wf-job="' + CSS.escape(name) + '"]');
    if (!row) { return; }
    row.querySelectorAll("[data-field]").forEach(function (el) {
      var v = s[el.dataset.field];
      if (v !== undefined) { el.textContent = v === null ? "" : String(v); }
      if (el.dataset.field === "state") { el.className = "state st-" + s.state; }
    });
    var cell = row.cells[0];
    if (s.job_id && !cell.querySelector("a")) {
      var a = document.createElement("a");
      a.href = box.dataset.jobBase + encodeURIComponent(s.job_id);
      a.textContent = name;
      cell.textContent = "";
      cell.appendChild(a);
    }
  }

  if (box.dataset.events) {
    var source = new EventSource(box.dataset.events);
    source.addEventListener("state", function (e) {
      var wf = JSON.parse(e.data);
      Object.keys(wf.jobs).forEach(function (name) { setState(name, wf.jobs[name]); setRow(name, wf.jobs[name]); });
      var st = document.getElementById("wf-state");
      if (st) { st.textContent = wf.state; st.className = "state st-" + wf.state; }
      var reason = document.getElementById("wf-reason");
      if (reason) { reason.textContent = wf.reason; }
      var cancel = document.getElementById("btn-wf-cancel");
      if (cancel) { cancel.disabled = wf.ended; }
    });
    source.addEventListener("end", function () { source.close(); });
    window.addEventListener("pagehide", function () { source.close(); });
  }
})();

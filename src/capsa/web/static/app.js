// capsa web: glue shared by every page. No inline scripts anywhere (the CSP forbids them);
// server data reaches the page as escaped HTML or JSON, and is written back with textContent only.
"use strict";

// Elements with data-sse="URL" data-sse-refresh="#target": whenever the server-sent state changes,
// htmx re-fetches the target fragment (its own hx-get, trigger "refresh").
function capsaLiveRefresh() {
  document.querySelectorAll("[data-sse]").forEach(function (el) {
    var target = document.querySelector(el.dataset.sseRefresh);
    var first = true;
    var source = new EventSource(el.dataset.sse);
    source.addEventListener("state", function () {
      if (first) { first = false; return; }   // the state the page was rendered from
      if (target && window.htmx) { htmx.trigger(document.querySelector(el.dataset.sseRefresh), "refresh"); }
    });
    source.addEventListener("failure", function (e) { capsaFlash(JSON.parse(e.data).message, true); });
    window.addEventListener("pagehide", function () { source.close(); });
  });
}

function capsaFlash(text, isError) {
  var flash = document.getElementById("flash");
  if (!flash) { return; }
  flash.textContent = text;
  flash.className = isError ? "error shown" : "shown";
  clearTimeout(capsaFlash.timer);
  capsaFlash.timer = setTimeout(function () { flash.className = ""; }, 6000);
}

document.addEventListener("htmx:responseError", function (e) {
  var xhr = e.detail.xhr;
  capsaFlash("refused (" + xhr.status + "): " + xhr.responseText, true);
});
document.addEventListener("htmx:sendError", function () { capsaFlash("the dashboard server is unreachable", true); });
document.addEventListener("DOMContentLoaded", capsaLiveRefresh);

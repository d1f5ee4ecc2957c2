// amsha ui: a little plain JavaScript over server-rendered pages. Text is only ever set
// with textContent, never as HTML, except the state diff, which the server renders (escaped).
"use strict";

(function () {
  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  // ---- span details: click a row of the waterfall (delegated: a live page replaces it) ----
  var selectedSpan = null;
  function showSpan(index) {
    $all(".span-detail").forEach(function (el) { el.hidden = true; });
    $all(".span-row").forEach(function (el) { el.classList.remove("selected"); el.setAttribute("aria-expanded", "false"); });
    var detail = document.getElementById("span-detail-" + index);
    var row = $('.span-row[data-span="' + index + '"]');
    var hint = $("#span-hint");
    if (hint) { hint.hidden = true; }
    if (detail) { detail.hidden = false; }
    if (row) {
      row.classList.add("selected");
      row.setAttribute("aria-expanded", "true");
      selectedSpan = row.getAttribute("data-span-id");
    }
  }
  document.addEventListener("click", function (ev) {
    var row = ev.target.closest ? ev.target.closest(".span-row") : null;
    if (row) { showSpan(row.getAttribute("data-span")); }
  });

  // A live page re-reads its timeline (server-rendered, escaped) when spans start or end,
  // at most every 300 ms, keeping the selected span open.
  var refreshTimer = null;
  function refreshTimeline(runId) {
    if (refreshTimer) { return; }
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      fetch("/runs/" + encodeURIComponent(runId) + "/timeline", { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          var section = $("#timeline");
          if (!html || !section) { return; }
          var holder = document.createElement("div");
          holder.innerHTML = html;
          var fresh = holder.querySelector("#timeline");
          if (!fresh) { return; }
          fresh.setAttribute("data-refreshed", String(Number(section.getAttribute("data-refreshed") || "0") + 1));
          section.replaceWith(fresh);
          if (selectedSpan) {
            var row = $('.span-row[data-span-id="' + CSS.escape(selectedSpan) + '"]');
            if (row) { showSpan(row.getAttribute("data-span")); }
          }
        });
    }, 300);
  }

  // ---- token replay: at the recorded pace, or at once ----
  var tokenData = $("#tokens-data");
  var streams = tokenData ? JSON.parse(tokenData.textContent || "{}") : {};
  var timers = {};
  $all("button.replay").forEach(function (button) {
    button.addEventListener("click", function () {
      var task = button.getAttribute("data-replay-task");
      var target = document.getElementById(button.getAttribute("data-target"));
      var chunks = streams[task] || [];
      if (!target) { return; }
      (timers[target.id] || []).forEach(clearTimeout);
      timers[target.id] = [];
      target.textContent = "";
      if (button.getAttribute("data-pace") === "instant") {
        target.textContent = chunks.map(function (c) { return c[1]; }).join("");
        target.setAttribute("data-replayed", "instant");
        return;
      }
      target.setAttribute("data-replayed", "running");
      chunks.forEach(function (chunk, i) {
        timers[target.id].push(setTimeout(function () {
          target.textContent += chunk[1];
          if (i === chunks.length - 1) { target.setAttribute("data-replayed", "recorded"); }
        }, chunk[0] * 1000));
      });
    });
  });

  // ---- state diff ----
  var diffForm = $("#diff-form");
  if (diffForm) {
    diffForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var params = new URLSearchParams(new FormData(diffForm));
      fetch(diffForm.action + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (r) { return r.text().then(function (t) { return { ok: r.ok, text: t }; }); })
        .then(function (res) {
          var out = $("#diff-result");
          if (res.ok) { out.innerHTML = res.text; } else { out.textContent = "diff failed: " + res.text.slice(0, 300); }
        });
    });
  }

  // ---- live: server-sent events, and cancel ----
  var run = $("#run");
  if (run && run.getAttribute("data-live") === "1" && window.EventSource) {
    var runId = run.getAttribute("data-run-id");
    var from = run.getAttribute("data-next-seq") || "0";
    var output = $("#live-output");
    var list = $("#live-events");
    var state = $("#live-state");
    var status = $("#run-status");
    var source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/stream?from_seq=" + from);
    var lastTask = null;
    source.onopen = function () { state.textContent = "connected"; };
    source.addEventListener("amsha", function (msg) {
      var event = JSON.parse(msg.data);
      if (event.kind === "llm.token") {
        if (event.task !== lastTask && event.task) {
          if (output.textContent) { output.textContent += "\n\n"; }
          output.textContent += "[" + event.task + "] ";
          lastTask = event.task;
        }
        output.textContent += (event.data && event.data.text) || "";
        output.setAttribute("data-chunks", String(Number(output.getAttribute("data-chunks") || "0") + 1));
        return;
      }
      var li = document.createElement("li");
      li.textContent = "#" + event.seq + " " + event.kind + (event.task ? " · " + event.task : "");
      list.appendChild(li);
      if (/\.(started|finished|failed|cancelled)$/.test(event.kind)) { refreshTimeline(runId); }
      if (event.kind === "run.started" || event.kind === "task.started") { status.textContent = "RUNNING"; }
    });
    source.addEventListener("end", function (msg) {
      source.close();
      var data = JSON.parse(msg.data);
      status.textContent = data.status;
      status.className = "status s-" + String(data.status).toLowerCase();
      state.textContent = "ended: " + data.status;
      setTimeout(function () { window.location.reload(); }, 400);
    });
    source.onerror = function () { state.textContent = "reconnecting…"; };
  }

  var cancel = $("#cancel");
  if (cancel && run) {
    cancel.addEventListener("click", function () {
      cancel.disabled = true;
      var message = $("#cancel-message");
      fetch("/api/runs/" + encodeURIComponent(run.getAttribute("data-run-id")) + "/cancel", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Amsha-UI": "1" },
        body: JSON.stringify({ reason: "cancelled from amsha ui" })
      }).then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          message.textContent = res.ok ? "cancel " + res.body.outcome : (res.body.error || "cancel failed");
          if (!res.ok) { cancel.disabled = false; }
        })
        .catch(function (err) { message.textContent = "cancel failed: " + err; cancel.disabled = false; });
    });
  }
})();

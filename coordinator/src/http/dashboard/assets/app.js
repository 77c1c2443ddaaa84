// lth dashboard: live progress over Server-Sent Events (no polling), confirm dialogs.
// Embedded in the coordinator binary; no dependencies.
(function () {
  "use strict";
  function setBar(id, done, total) {
    var el = document.getElementById(id);
    if (!el) return;
    var f = total > 0 ? done / total : 0;
    el.querySelector(".fill").style.width = (100 * f).toFixed(1) + "%";
    el.querySelector(".label").textContent = done + "/" + total;
    el.title = done + " of " + total;
  }
  function setPct(id, f) {
    var el = document.getElementById(id);
    if (!el) return;
    el.querySelector(".fill").style.width = (100 * f).toFixed(1) + "%";
    el.querySelector(".label").textContent = Math.round(100 * f) + "%";
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button[data-confirm]");
    if (b && !window.confirm(b.getAttribute("data-confirm"))) e.preventDefault();
  });
  var root = document.querySelector(".sweep[data-sweep]");
  if (!root || !window.EventSource) return;
  var id = root.getAttribute("data-sweep");
  var live = document.createElement("span");
  live.id = "live";
  var h1 = root.querySelector("h1");
  if (h1) h1.appendChild(live);
  // Refetch the plots and job tables after jobs change state: at most once per 2 s.
  var pending = null, lastFetch = 0;
  function refresh() {
    if (pending) return;
    var wait = Math.max(0, 2000 - (Date.now() - lastFetch));
    pending = setTimeout(function () {
      lastFetch = Date.now();
      var url = "/sweeps/" + id + "/fragment" + window.location.search;
      fetch(url, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
        pending = null;
        if (html !== null) { document.getElementById("fragment").innerHTML = html; root.setAttribute("data-refreshed", String(Date.now())); }
      }, function () { pending = null; });
    }, wait);
  }
  var es = new EventSource("/sweeps/" + id + "/live?after=" + root.getAttribute("data-after"));
  es.onopen = function () { live.className = "on"; live.textContent = "live"; };
  es.onerror = function () { live.className = ""; live.textContent = "reconnecting…"; };
  es.addEventListener("summary", function (e) {
    var s = JSON.parse(e.data), j = s.jobs, total = 0;
    for (var k in j) { total += j[k]; var c = document.getElementById("c-" + k); if (c) c.textContent = j[k]; }
    setBar("p-all", j.succeeded, total);
    s.metrics.forEach(function (m) { setBar("p-m-" + m.metric, m.done, m.total); });
    var st = document.getElementById("sweep-state");
    if (st && root.getAttribute("data-state") !== s.state) {
      root.setAttribute("data-state", s.state);
      st.innerHTML = '<span class="state s-' + s.state + '">' + s.state + "</span>";
      var p = document.getElementById("btn-pause"), r = document.getElementById("btn-resume"), c2 = document.getElementById("btn-cancel");
      if (p) p.disabled = s.state !== "running";
      if (r) r.disabled = s.state !== "paused";
      if (c2) c2.disabled = ["succeeded", "failed", "cancelled"].indexOf(s.state) >= 0;
    }
    // Retry: enabled while jobs are failed and the sweep is not cancelled (as the server renders it).
    var rt = document.getElementById("btn-retry");
    if (rt) {
      rt.disabled = !(j.failed > 0 && s.state !== "cancelled");
      rt.textContent = "retry " + j.failed + " failed";
      rt.setAttribute("data-failed", String(j.failed));
    }
    root.setAttribute("data-updates", String(1 + Number(root.getAttribute("data-updates") || 0)));
  });
  es.addEventListener("job", function (e) {
    var j = JSON.parse(e.data);
    if (j.kind === "progress") { setPct("p-job-" + j.id, j.progress); return; }
    refresh();
  });
  es.addEventListener("end", function (e) {
    es.close();
    live.className = ""; live.textContent = "sweep " + e.data;
    refresh();
  });
})();

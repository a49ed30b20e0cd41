// edgeface hub: confirm destructive forms; keep the events table live (polls /api/events every 2 s).
"use strict";
document.querySelectorAll("form.confirm").forEach(function (f) {
  f.addEventListener("submit", function (ev) {
    if (!window.confirm(f.dataset.confirm)) { ev.preventDefault(); }
  });
});
(function () {
  var table = document.querySelector("#events tbody");
  if (!table) { return; }
  var last = 0;
  table.querySelectorAll("tr").forEach(function (r) { last = Math.max(last, parseFloat(r.dataset.received) || 0); });
  function cell(text) { var td = document.createElement("td"); td.textContent = text; return td; }
  function poll() {
    fetch("/api/events?after=" + last, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (data) {
      data.events.slice().reverse().forEach(function (e) {
        var tr = document.createElement("tr");
        tr.dataset.received = e.received;
        [e.time, e.door, e.kind, e.decision || "", e.identity || "",
         e.score === null ? "" : e.score.toFixed(3)].forEach(function (t) { tr.appendChild(cell(t)); });
        var td = document.createElement("td");
        if (e.has_snapshot) {
          var img = document.createElement("img");
          img.className = "snap"; img.alt = "face"; img.src = "/events/" + e.event_id + "/snapshot.jpg";
          td.appendChild(img);
        }
        tr.appendChild(td);
        table.insertBefore(tr, table.firstChild);
        last = Math.max(last, e.received);
      });
      document.getElementById("live").textContent = "live";
    }).catch(function () {
      document.getElementById("live").textContent = "reconnecting…";
    });
  }
  setInterval(poll, 2000);
})();

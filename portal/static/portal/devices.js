// The devices page kept current by push (portal/consumers.py): the page tells the server
// which device rows are on screen, and the server sends a row again, rendered, whenever its
// device changes. Nothing is polled. After a lost connection the page reconnects (waiting
// longer each time, up to a minute), reloads its rows once to catch up, and watches again.
// Times ("3 minutes ago") are recounted here every 30 s, so that an idle page stays true
// without asking the server.
(function () {
  "use strict";

  var MAX_WAIT_MS = 60000;
  var AGO_EVERY_MS = 30000;
  var table = document.getElementById("devices");
  var status = document.getElementById("live-status");
  if (!table || !table.getAttribute("data-live-url") || !window.WebSocket) { return; }

  var socket = null;
  var failures = 0;
  var connectedOnce = false;
  var stopped = false;

  function say(state, text) {
    if (!status) { return; }
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function rowIds() {
    var rows = table.querySelectorAll("tbody tr[data-device]");
    var ids = [];
    for (var i = 0; i < rows.length; i++) { ids.push(parseInt(rows[i].getAttribute("data-device"), 10)); }
    return ids;
  }

  function parse(html, tag) {
    // Rows are rendered by the server's escaping templates; a <template> parses them inert.
    var holder = document.createElement("template");
    holder.innerHTML = html;
    return holder.content.querySelector(tag);
  }

  function replaceRows(rows) {
    Object.keys(rows).forEach(function (id) {
      var current = document.getElementById("device-" + id);
      var fresh = parse("<table><tbody>" + rows[id] + "</tbody></table>", "tr");
      if (current && fresh) {
        current.replaceWith(fresh);
        recount(fresh);
      }
    });
  }

  function watch(refresh) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ watch: rowIds(), refresh: !!refresh }));
    }
  }

  function catchUp() {
    // Changes made while the socket was down were never pushed: read the rows once.
    var url = table.getAttribute("data-rows-url");
    return fetch(url, { credentials: "same-origin", headers: { "HX-Request": "true" } }).then(function (response) {
      if (response.status !== 200) { return; }
      return response.text().then(function (html) {
        var fresh = parse("<table>" + html + "</table>", "tbody");
        var current = document.getElementById("device-rows");
        if (fresh && current) {
          current.replaceWith(fresh);
          recount(fresh);
        }
      });
    }).catch(function () { /* the next reconnect tries again */ });
  }

  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    say("connecting", "Connecting for live updates…");
    socket = new WebSocket(scheme + window.location.host + table.getAttribute("data-live-url"));
    socket.addEventListener("open", function () {
      failures = 0;
      var again = connectedOnce;
      connectedOnce = true;
      (again ? catchUp() : Promise.resolve()).then(function () { watch(false); });
    });
    socket.addEventListener("message", function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === "watching") {
        say("live", "Live: rows change as devices connect and disconnect.");
      } else if (message.type === "rows") {
        replaceRows(message.rows || {});
      }
    });
    socket.addEventListener("close", function (event) {
      socket = null;
      if (stopped) { return; }
      if (event.code === 4401 || event.code === 4403) {
        say("off", "Live updates stopped: sign in again to resume them.");
        return;
      }
      failures += 1;
      var wait = Math.min(MAX_WAIT_MS, 1000 * Math.pow(2, Math.min(failures, 6)));
      say("reconnecting", "Live updates paused: reconnecting…");
      window.setTimeout(connect, wait);
    });
  }

  // --- relative times -------------------------------------------------------------------

  var UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];

  function ago(seconds) {
    // The wording of the server's `ago` filter (portal/templatetags/portal_tags.py).
    if (seconds < 10) { return "just now"; }
    if (seconds < 60) { return "less than a minute ago"; }
    for (var i = 0; i < UNITS.length; i++) {
      var count = Math.floor(seconds / UNITS[i][1]);
      if (count >= 1) { return count + "\u00a0" + UNITS[i][0] + (count === 1 ? "" : "s") + " ago"; }
    }
    return "just now";
  }

  function recount(root) {
    var times = (root || document).querySelectorAll("time[data-ago]");
    var now = Date.now();
    for (var i = 0; i < times.length; i++) {
      var at = Date.parse(times[i].getAttribute("datetime"));
      var prefix = times[i].getAttribute("data-prefix") || "";
      var suffix = times[i].getAttribute("data-suffix") || "";
      if (!isNaN(at)) { times[i].textContent = prefix + ago(Math.max(0, (now - at) / 1000)) + suffix; }
    }
  }

  window.addEventListener("pagehide", function () {
    stopped = true;
    if (socket) { socket.close(1000); }
  });
  window.addEventListener("pageshow", function (event) {
    // Back from the browser's page cache: the socket was closed on the way out.
    if (event.persisted && !socket) { stopped = false; connectedOnce = true; connect(); }
  });
  window.setInterval(function () { recount(document); }, AGO_EVERY_MS);
  connect();
})();

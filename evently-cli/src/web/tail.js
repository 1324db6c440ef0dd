// The live tail: appends each event the server sends (Server-Sent Events)
// at the top of the table. Values go in through textContent, never as HTML.
(function () {
  const rows = document.getElementById("tail-rows");
  const state = document.getElementById("tail-state");
  const source = new EventSource("/tail/events" + window.location.search);
  source.addEventListener("open", function () { state.textContent = "following the log"; });
  source.addEventListener("error", function () { state.textContent = "disconnected; retrying"; });
  source.addEventListener("event", function (message) {
    const e = JSON.parse(message.data);
    const tr = document.createElement("tr");
    tr.className = "tail-event";
    const cell = function (text) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
      return td;
    };
    cell(String(e.position));
    cell(e.recorded_at);
    const stream = cell("");
    const a = document.createElement("a");
    a.href = "/streams/" + encodeURIComponent(e.stream_id);
    a.textContent = e.stream_id + "@" + e.stream_version;
    stream.appendChild(a);
    const type = cell("");
    const link = document.createElement("a");
    link.href = "/events/" + encodeURIComponent(e.event_id);
    link.textContent = e.event_type;
    type.appendChild(link);
    const payload = cell(JSON.stringify(e.payload));
    payload.className = "payload";
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > 500) { rows.removeChild(rows.lastChild); }
  });
})();

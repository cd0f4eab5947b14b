// Live updates: the server sends a `changed` event when a request arrives or changes (no
// polling); the panel is then fetched again, one fetch at a time, once more if it changed meanwhile.
(function () {
  "use strict";
  const live = document.getElementById("live");
  let fetching = false;
  let again = false;

  function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    htmx.ajax("GET", "/panel", { target: "#panel", swap: "innerHTML settle:0ms" }).finally(function () {
      fetching = false;
      if (again) { again = false; refresh(); }
    });
  }

  const source = new EventSource("/events");
  source.addEventListener("changed", refresh);
  source.onopen = function () { live.textContent = "live"; live.className = "live on"; };
  source.onerror = function () { live.textContent = "disconnected"; live.className = "live off"; };

  document.body.addEventListener("htmx:responseError", function (event) {
    const text = event.detail.xhr.responseText || event.detail.xhr.statusText;
    live.textContent = text.slice(0, 120);
    live.className = "live off";
    refresh();
  });
})();

// Live refresh of the read-only pages: every few seconds the page is fetched again (same
// credentials, same URL) and its <main> replaced when it changed. Pauses while the tab is hidden
// or while the reader has a <details> open. Without JavaScript the pages are simply static.
(function () {
  var seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds || !window.fetch || !window.DOMParser) { return; }
  var status = document.getElementById("refreshed");
  function refresh() {
    if (document.hidden || document.querySelector("main details[open]")) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (text === null) { if (status) { status.textContent = "refresh failed"; } return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main && fresh.innerHTML !== main.innerHTML) { main.innerHTML = fresh.innerHTML; }
        if (status) { status.textContent = "updated " + new Date().toLocaleTimeString() + " ·"; }
      })
      .catch(function () { if (status) { status.textContent = "refresh failed ·"; } });
  }
  setInterval(refresh, seconds * 1000);
})();

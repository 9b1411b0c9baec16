// Triage dashboard: the one script. Refreshes the parts of a page marked data-refresh (the
// overview's cards) every data-every milliseconds, while the tab is visible, and shows the
// "select every entry on this page" boxes (data-select-all). The pages work without it (the
// overview then reloads itself every 5 seconds; entries are ticked one by one).
(function () {
  "use strict";
  document.querySelectorAll("[data-refresh]").forEach(function (box) {
    var every = parseInt(box.getAttribute("data-every"), 10) || 2000;
    var url = box.getAttribute("data-refresh");
    var stopped = false;

    function later() {
      if (!stopped) {
        window.setTimeout(tick, every);
      }
    }

    function tick() {
      if (document.hidden) {
        later();
        return;
      }
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (answer) {
          if (answer.redirected) {
            stopped = true; // the session ended: the page itself goes to the login
            window.location.reload();
            return null;
          }
          return answer.ok ? answer.text() : null;
        })
        .then(function (html) {
          if (html) {
            box.innerHTML = html;
            box.setAttribute("data-refreshed", String(Date.now()));
          }
        })
        .catch(function () {
          // the server is restarting or unreachable: try again at the next tick
        })
        .then(later);
    }

    later();
  });

  document.querySelectorAll("[data-select-all]").forEach(function (all) {
    var name = all.getAttribute("data-select-all");
    all.hidden = false;
    all.addEventListener("change", function () {
      all.form.querySelectorAll('input[type="checkbox"][name="' + name + '"]').forEach(function (box) {
        box.checked = all.checked;
      });
    });
  });
})();

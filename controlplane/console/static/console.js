// The console's only script: reloads the live parts of a page and copies
// text. Pages work without it, minus those two.
"use strict";

function startLive(el) {
  var url = el.getAttribute("data-live");
  var every = parseInt(el.getAttribute("data-refresh"), 10) || 1000;
  var busy = false;
  function tick() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (res) {
        if (res.status === 401) {
          // The session ended: the page itself goes to the sign-in.
          window.location.reload();
          return null;
        }
        return res.ok ? res.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          el.innerHTML = html;
          el.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }
  window.setInterval(tick, every);
}

function copyFrom(button) {
  var target = document.getElementById(button.getAttribute("data-copy"));
  if (!target) {
    return;
  }
  var text = target.value !== undefined ? target.value : target.textContent;
  var done = function () {
    var label = button.textContent;
    button.textContent = "Copied";
    window.setTimeout(function () { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { selectText(target); });
  } else {
    selectText(target);
  }
}

function selectText(el) {
  if (el.select) {
    el.select();
    return;
  }
  var range = document.createRange();
  range.selectNodeContents(el);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-live]").forEach(startLive);
  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () { copyFrom(b); });
  });
});

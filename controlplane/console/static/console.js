// The console's only script: reloads the live parts of a page and copies
// text. Pages work without it, minus those two.
"use strict";

function startLive(el) {
  var url = el.getAttribute("data-live");
  var every = parseInt(el.getAttribute("data-refresh"), 10) || 1000;
  var news = document.getElementById(el.getAttribute("data-announce-to") || "");
  var last = null;
  var busy = false;
  function tick() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (res) {
        if (res.status === 401 || res.status === 404) {
          // The session ended, or the cluster is gone: the page itself
          // says so (the sign-in, or the error page).
          window.location.reload();
          return null;
        }
        return res.ok ? res.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined) {
          return;
        }
        el.setAttribute("data-updated", String(Date.now()));
        if (html === last) {
          return; // nothing moved: leave focus and selection alone
        }
        last = html;
        var before = announced(el);
        update(el, html);
        if (news) {
          var changed = announced(el).filter(function (s) { return before.indexOf(s) < 0; });
          if (changed.length > 0) {
            news.textContent = changed.join(". ");
          }
        }
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }
  window.setInterval(tick, every);
}

// update replaces only the top-level children of el that changed, so a
// link or field in a part that did not change keeps its focus.
function update(el, html) {
  var next = document.createElement(el.tagName);
  next.innerHTML = html;
  var olds = el.children;
  var fresh = next.children;
  if (olds.length !== fresh.length) {
    el.innerHTML = html;
    return;
  }
  for (var i = fresh.length - 1; i >= 0; i--) {
    if (!olds[i].isEqualNode(fresh[i])) {
      el.replaceChild(fresh[i], olds[i]);
    }
  }
}

// announced lists what the part asks screen readers to be told when it
// changes (data-news attributes: a cluster's state, say).
function announced(el) {
  return Array.prototype.map.call(el.querySelectorAll("[data-news]"), function (n) {
    return n.getAttribute("data-news");
  });
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

// Copy buttons: <button data-copy-target="input-id" data-copy-status="status-id">.
// The status element is aria-live, so screen readers hear the confirmation.
(function () {
  "use strict";
  function say(statusId, text) {
    var status = statusId && document.getElementById(statusId);
    if (status) status.textContent = text;
  }

  function fallbackCopy(input) {
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch (e) {
      return false;
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-copy-target]") : null;
    if (!button) return;
    var input = document.getElementById(button.getAttribute("data-copy-target"));
    if (!input) return;
    var statusId = button.getAttribute("data-copy-status");
    var done = function () { say(statusId, "Copied to the clipboard."); };
    var failed = function () {
      input.select();
      say(statusId, fallbackCopy(input) ? "Copied to the clipboard." : "Could not copy: select the text and copy it yourself.");
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, failed);
    } else {
      failed();
    }
  });
})();

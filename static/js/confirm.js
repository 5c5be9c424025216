// Forms with data-confirm ask before they submit (remove, revoke, leave, transfer).
// Without JavaScript they simply submit; the server still checks everything.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();

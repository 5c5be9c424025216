// Live notices: a WebSocket on this organization's host, reconnecting with backoff.
(function () {
  "use strict";
  var list = document.getElementById("notices");
  var dot = document.getElementById("live-status");
  if (!list) return;
  var delay = 500;

  function render(notice) {
    if (list.querySelector('[data-id="' + notice.id + '"]')) return;
    var empty = list.querySelector(".empty");
    if (empty) empty.remove();
    var item = document.createElement("li");
    item.className = "notice " + notice.level;
    item.dataset.id = notice.id;
    var title = document.createElement("strong");
    title.textContent = notice.title;
    item.appendChild(title);
    if (notice.body) item.appendChild(document.createTextNode(" — " + notice.body));
    list.insertBefore(item, list.firstChild);
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/ws/notices/");
    socket.onopen = function () { delay = 500; dot.classList.add("on"); };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type === "snapshot") message.notices.slice().reverse().forEach(render);
      if (message.type === "notice") render(message.notice);
    };
    socket.onclose = function (event) {
      dot.classList.remove("on");
      if (event.code === 4403 || event.code === 4404) return;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  connect();
})();

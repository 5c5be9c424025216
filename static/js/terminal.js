// The live terminal of a workspace: xterm.js <-> /ws/workspaces/<id>/terminal/.
// The protocol is documented in apps/workspaces/consumers.py. One driver types;
// everyone else follows read-only. Reconnects with backoff; on each (re)attach
// the screen is cleared and the shell's scrollback replayed, so nothing repeats.
(function () {
  "use strict";

  var CLOSE_EXITED = 4000;
  var CLOSE_FORBIDDEN = 4403;
  var CLOSE_NOT_RUNNING = 4409;

  function setUp(panel) {
    if (!window.Terminal || !window.FitAddon) {
      panel.querySelector("[data-terminal-status]").textContent = "The terminal could not load.";
      return;
    }
    var workspaceId = panel.dataset.workspaceId;
    var statusEl = panel.querySelector("[data-terminal-status]");
    var driverEl = panel.querySelector("[data-terminal-driver]");
    var viewersEl = panel.querySelector("[data-terminal-viewers]");
    var messageEl = panel.querySelector("[data-terminal-message]");
    var takeButton = panel.querySelector("[data-terminal-take]");
    var handOverEl = panel.querySelector("[data-terminal-hand-over]");
    var handToEl = panel.querySelector("[data-terminal-hand-to]");
    var handButton = panel.querySelector("[data-terminal-hand]");
    var restartButton = panel.querySelector("[data-terminal-restart]");
    var startForm = panel.querySelector("[data-terminal-start]"); // absent for watch-only roles

    var term = new window.Terminal({
      cursorBlink: true,
      scrollback: 5000,
      fontSize: 14,
      fontFamily: 'ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace',
      theme: { background: "#0b0d12" },
    });
    var fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(panel.querySelector("[data-terminal-screen]"));
    // A screen measured before the page is laid out (or while hidden) proposes a size of a
    // few columns; sent to the shell, that makes bash redraw its prompt over the line above
    // once the real size arrives. Such sizes are never applied or sent.
    var MIN_COLS = 20;
    var MIN_ROWS = 4;
    function fitScreen() {
      var size = fit.proposeDimensions();
      if (!size || !(size.cols >= MIN_COLS) || !(size.rows >= MIN_ROWS)) return;
      if (size.cols !== term.cols || size.rows !== term.rows) term.resize(size.cols, size.rows);
    }
    fitScreen();

    var encoder = new TextEncoder();
    var socket = null;
    var me = null;
    var canDrive = panel.dataset.canDrive === "true";
    var room = { viewers: [], driver: null };
    var sharedSize = null; // the shell's size, set by the driver
    var delay = 500;
    var retryTimer = null;
    var notInPlan = false; // the server said the plan lacks the terminal; its message stays shown

    function driving() {
      return me !== null && room.driver === me;
    }

    function setStatus(state, text) {
      statusEl.dataset.state = state;
      statusEl.textContent = text;
    }

    function say(text) {
      messageEl.textContent = text;
      messageEl.hidden = !text;
    }

    function send(message) {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    }

    // The shell gets the driver's size once it has held for a moment. While the page lays
    // itself out (the viewers list filling in, a control appearing) the screen can measure
    // a few columns narrow for a frame; sent to the shell, that narrow size made bash wrap
    // and redraw its prompt, and the redraw at the real width then erased the line above it.
    var SIZE_SETTLE_MS = 200;
    var sizeTimer = null;
    function sendSize() {
      if (sizeTimer !== null) clearTimeout(sizeTimer);
      sizeTimer = setTimeout(function () {
        sizeTimer = null;
        if (!driving() || term.cols < MIN_COLS || term.rows < MIN_ROWS) return;
        send({ type: "resize", rows: term.rows, cols: term.cols });
      }, SIZE_SETTLE_MS);
    }

    // The driver's screen sets the size; followers show the shell at the driver's size.
    function applySize() {
      if (driving()) {
        fitScreen();
        sendSize();
      } else if (sharedSize) {
        term.resize(sharedSize.cols, sharedSize.rows);
      }
    }

    function nameOf(id) {
      for (var i = 0; i < room.viewers.length; i++) if (room.viewers[i].id === id) return room.viewers[i].name;
      return null;
    }

    function renderRoom() {
      viewersEl.textContent = "";
      room.viewers.forEach(function (viewer) {
        var item = document.createElement("li");
        item.dataset.testid = "terminal-viewer";
        item.textContent = viewer.name + (viewer.id === me ? " (you)" : "");
        if (viewer.id === room.driver) {
          var badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = "driving";
          item.appendChild(badge);
        } else if (!viewer.can_drive) {
          var watching = document.createElement("span");
          watching.className = "badge";
          watching.textContent = "watch only";
          item.appendChild(watching);
        }
        viewersEl.appendChild(item);
      });
      if (room.driver === null) driverEl.textContent = "Nobody is driving";
      else if (driving()) driverEl.textContent = "You are driving";
      else driverEl.textContent = (nameOf(room.driver) || "Someone") + " is driving";

      takeButton.hidden = !canDrive || driving();
      handOverEl.hidden = !driving();
      handToEl.textContent = "";
      var anyone = document.createElement("option");
      anyone.value = "";
      anyone.textContent = "anyone (release)";
      handToEl.appendChild(anyone);
      room.viewers.forEach(function (viewer) {
        if (viewer.id === me || !viewer.can_drive) return;
        var option = document.createElement("option");
        option.value = viewer.id;
        option.textContent = viewer.name;
        handToEl.appendChild(option);
      });
      if (handToEl.options.length > 1) handToEl.selectedIndex = 1;
    }

    function onControl(message) {
      switch (message.type) {
        case "hello":
          me = message.you;
          canDrive = message.can_drive;
          renderRoom();
          break;
        case "attached":
          term.reset(); // the scrollback that follows redraws the screen
          sharedSize = { rows: message.rows, cols: message.cols };
          applySize();
          setStatus("connected", "Connected");
          delay = 500;
          say("");
          break;
        case "room":
          var wasDriving = driving();
          room = { viewers: message.viewers, driver: message.driver };
          renderRoom();
          if (driving() !== wasDriving) {
            applySize();
            say(driving() ? "" : "You are following; take control to type.");
          }
          if (driving() && !wasDriving) term.focus();
          break;
        case "size":
          sharedSize = { rows: message.rows, cols: message.cols };
          if (!driving()) applySize();
          break;
        case "control_requested":
          say(message.name + " asks for control. Pick them under \u201cHand over\u201d to let them type.");
          for (var i = 0; i < handToEl.options.length; i++) {
            if (handToEl.options[i].value === message.by) handToEl.selectedIndex = i;
          }
          break;
        case "refused":
          say(message.message);
          break;
        case "error":
          say(message.message);
          if (message.code === "stopped") setStatus("stopped", "Workspace not running");
          if (message.code === "feature_not_in_plan") {
            notInPlan = true;
            setStatus("stopped", "Not in your plan");
          }
          break;
        case "exit":
          say("The shell exited with code " + message.code + ".");
          break;
      }
    }

    function connect() {
      retryTimer = null;
      setStatus(delay > 500 ? "reconnecting" : "connecting", delay > 500 ? "Reconnecting…" : "Connecting…");
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(
        scheme + location.host + "/ws/workspaces/" + workspaceId + "/terminal/?rows=" + term.rows + "&cols=" + term.cols
      );
      socket.binaryType = "arraybuffer";
      socket.onmessage = function (event) {
        if (typeof event.data === "string") onControl(JSON.parse(event.data));
        else term.write(new Uint8Array(event.data));
      };
      socket.onclose = function (event) {
        socket = null;
        room = { viewers: [], driver: null };
        renderRoom();
        takeButton.hidden = true;
        if (event.code === CLOSE_NOT_RUNNING) {
          setStatus("stopped", "Workspace not running");
          if (startForm) startForm.hidden = false;
          return;
        }
        if (event.code === CLOSE_FORBIDDEN) {
          setStatus("stopped", notInPlan ? "Not in your plan" : "No access");
          return;
        }
        if (event.code === CLOSE_EXITED) {
          setStatus("exited", "Shell exited");
          restartButton.hidden = false;
          return;
        }
        setStatus("reconnecting", "Disconnected; reconnecting in " + Math.round(delay / 1000) + " s…");
        retryTimer = setTimeout(connect, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }

    term.onData(function (data) {
      // Sent even when following: the server says why it was not typed.
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    });
    term.onResize(function () {
      if (driving()) sendSize();
    });
    window.addEventListener("resize", function () {
      if (driving()) fitScreen();
    });
    takeButton.addEventListener("click", function () {
      send({ type: "take_control" });
    });
    handButton.addEventListener("click", function () {
      send({ type: "hand_over", to: handToEl.value || null });
    });
    restartButton.addEventListener("click", function () {
      restartButton.hidden = true;
      say("");
      delay = 500;
      connect();
    });
    document.addEventListener("visibilitychange", function () {
      // Back to a tab that gave up waiting: try at once.
      if (document.visibilityState === "visible" && retryTimer !== null) {
        clearTimeout(retryTimer);
        connect();
      }
    });
    connect();
  }

  document.querySelectorAll("[data-terminal]").forEach(setUp);
})();

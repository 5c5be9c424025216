// A run's page, live: the timeline, the meter, the state and its controls, from the run's
// WebSocket /ws/runs/<id>/?after=<seq> (protocol in apps/agents/consumers.py). On a
// reconnect it asks for the events after the last one it drew, so nothing is missing or
// drawn twice. When the run ends, the result (answer and diff) is read from the REST API.
(function () {
  "use strict";

  var CLOSE_INVALID = 4400;
  var CLOSE_FORBIDDEN = 4403;
  var CLOSE_NOT_FOUND = 4404;
  var FINISHED = ["succeeded", "failed", "cancelled"];
  var STATE_LABELS = {
    queued: "Queued",
    running: "Running",
    paused: "Paused",
    waiting_for_approval: "Waiting for approval",
    succeeded: "Succeeded",
    failed: "Failed",
    cancelled: "Cancelled",
  };

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // A unified diff, each line coloured by its first character; text only, never HTML.
  function renderDiff(pre, text) {
    pre.textContent = "";
    String(text || "")
      .split("\n")
      .forEach(function (line, index, lines) {
        if (index === lines.length - 1 && line === "") return;
        var kind = "ctx";
        if (line.indexOf("+++") === 0 || line.indexOf("---") === 0 || line.indexOf("diff ") === 0) kind = "file";
        else if (line.charAt(0) === "+") kind = "add";
        else if (line.charAt(0) === "-") kind = "del";
        else if (line.indexOf("@@") === 0) kind = "hunk";
        pre.appendChild(el("span", "diff-line diff-" + kind, line + "\n"));
      });
  }

  function describeAction(payload) {
    var args = payload.arguments || {};
    var tool = payload.tool || "";
    if (tool === "bash" && args.command !== undefined) return "$ " + args.command;
    if (tool === "python" && args.code !== undefined) return String(args.code);
    if (tool === "str_replace_editor") {
      var parts = [args.command || "", args.path || ""];
      if (args.view_range) parts.push(JSON.stringify(args.view_range));
      return parts.join(" ").trim();
    }
    if (tool === "search") return [args.pattern || args.query || "", args.path || ""].join(" ").trim();
    if (tool === "think") return String(args.thought || args.text || "");
    if (tool === "finish") return String(args.answer || args.message || args.summary || "");
    var keys = Object.keys(args);
    return keys.length ? JSON.stringify(args, null, 2) : "";
  }

  function setUp(root) {
    var runId = root.dataset.runId;
    var canRun = root.dataset.canRun === "true";
    var timeline = root.querySelector("[data-timeline]");
    var emptyNote = root.querySelector("[data-timeline-empty]");
    var stateEl = root.querySelector("[data-run-state]");
    var reasonEl = root.querySelector("[data-run-reason]");
    var statusEl = root.querySelector("[data-stream-status]");
    var dotEl = root.querySelector("[data-stream-dot]");
    var meter = {
      steps: root.querySelector("[data-meter-steps]"),
      input: root.querySelector("[data-meter-input]"),
      output: root.querySelector("[data-meter-output]"),
      cost: root.querySelector("[data-meter-cost]"),
    };
    var approval = root.querySelector("[data-approval]");
    var approvalReason = root.querySelector("[data-approval-reason]");
    var approvalAction = root.querySelector("[data-approval-action]");
    var result = root.querySelector("[data-result]");
    var diffEl = root.querySelector("[data-diff]");

    var state = root.dataset.state;
    var control = root.dataset.control || "";
    var lastSeq = 0;
    // The run's totals as of `base.seq` (sent on each connect), plus the events after it.
    var base = { seq: 0, steps: 0, input: 0, output: 0, cost: 0 };
    var extra = { steps: 0, input: 0, output: 0, cost: 0 };
    var actions = {}; // call id (or "step:<n>") -> its timeline entry
    var pendingAction = null;
    var socket = null;
    var delay = 500;
    var stopped = false;
    var resultLoaded = FINISHED.indexOf(state) >= 0;

    if (diffEl) renderDiff(diffEl, diffEl.textContent);

    function setStatus(text, live) {
      statusEl.textContent = text;
      if (dotEl) dotEl.classList.toggle("on", !!live);
    }

    function drawMeter() {
      meter.steps.textContent = String(Math.max(base.steps, extra.steps));
      meter.input.textContent = String(base.input + extra.input);
      meter.output.textContent = String(base.output + extra.output);
      meter.cost.textContent = (base.cost + extra.cost).toFixed(6);
    }

    function showControls() {
      var finished = FINISHED.indexOf(state) >= 0;
      var visible = {
        pause: (state === "queued" || state === "running") && control !== "pause",
        resume: state === "paused" || (state === "running" && control === "pause"),
        cancel: !finished && control !== "cancel",
      };
      root.querySelectorAll("[data-control-form]").forEach(function (form) {
        form.hidden = !visible[form.dataset.controlForm];
      });
      approval.hidden = state !== "waiting_for_approval";
      result.hidden = !finished;
    }

    function setState(next, reason) {
      if (next && next !== state) {
        state = next;
        root.dataset.state = state;
        stateEl.textContent = STATE_LABELS[state] || state;
        stateEl.className = "badge run-state state-" + state;
        // A control was taken up once the state moves on.
        control = "";
      }
      if (reason !== undefined && reason !== null) {
        reasonEl.textContent = reason;
        if (approvalReason && state === "waiting_for_approval") approvalReason.textContent = reason;
      }
      if (state === "waiting_for_approval" && pendingAction && approvalAction) {
        approvalAction.textContent = describeAction(pendingAction) || pendingAction.tool;
      }
      showControls();
      if (FINISHED.indexOf(state) >= 0 && !resultLoaded) loadResult();
    }

    function showQueue(position) {
      var line = root.querySelector("[data-queue-position]");
      if (!line) return;
      if (position) root.querySelector("[data-queue-number]").textContent = String(position);
      line.hidden = !position;
    }

    function loadResult() {
      resultLoaded = true;
      fetch("/api/v1/agents/runs/" + runId, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.ok ? response.json() : null;
        })
        .then(function (run) {
          if (!run) return;
          var answer = (run.result && run.result.answer) || "";
          var diff = (run.result && run.result.diff) || "";
          var commit = (run.result && run.result.commit) || "";
          root.querySelector("[data-answer]").textContent = answer;
          renderDiff(diffEl, diff);
          diffEl.hidden = !diff;
          root.querySelector("[data-no-diff]").hidden = !!diff;
          var committed = root.querySelector("[data-committed]");
          committed.hidden = !commit;
          root.querySelector("[data-commit-sha]").textContent = commit;
          var commitForm = root.querySelector("[data-commit-form]");
          if (commitForm) commitForm.hidden = !(canRun && diff && !commit);
          base = {
            seq: run.last_seq,
            steps: run.steps,
            input: run.input_tokens,
            output: run.output_tokens,
            cost: parseFloat(run.cost) || 0,
          };
          extra = { steps: 0, input: 0, output: 0, cost: 0 };
          drawMeter();
        })
        .catch(function () {
          resultLoaded = false; // tried again on the next state event or reconnect
        });
    }

    function entry(event, title) {
      var item = el("li", "event event-" + event.kind);
      item.dataset.seq = event.seq;
      item.dataset.kind = event.kind;
      item.setAttribute("data-testid", "event");
      var head = el("div", "event-head");
      head.appendChild(el("span", "event-title", title));
      if (event.step) head.appendChild(el("span", "event-step muted", "step " + event.step));
      item.appendChild(head);
      return item;
    }

    function drawAction(event) {
      var payload = event.payload || {};
      var item = entry(event, payload.tool ? payload.tool : "answer");
      if (payload.thought) item.appendChild(el("p", "thought", payload.thought));
      var what = describeAction(payload);
      if (what) item.appendChild(el("pre", payload.tool === "bash" ? "command" : "arguments", what));
      if (payload.risk) item.appendChild(el("p", "risk", "Needs approval: " + payload.risk));
      if (payload.valid === false && payload.problem) item.appendChild(el("p", "event-problem", payload.problem));
      actions[payload.call_id || "step:" + event.step] = item;
      pendingAction = payload;
      return item;
    }

    function drawObservation(event) {
      var payload = event.payload || {};
      var data = payload.data || {};
      var owner = actions[payload.call_id || "step:" + event.step];
      var block = el("div", "observation" + (payload.error ? " observation-error" : ""));
      block.dataset.seq = event.seq;
      block.setAttribute("data-testid", "observation");
      var head = el("div", "event-head");
      head.appendChild(el("span", "event-title", payload.error ? "error" : "output"));
      if (data.exit_code !== undefined && data.exit_code !== null) {
        head.appendChild(el("span", "badge exit-code", "exit " + data.exit_code));
      }
      if (data.denied) head.appendChild(el("span", "badge", "denied"));
      block.appendChild(head);
      if (data.diff) {
        if (data.path) block.appendChild(el("p", "edit-path", data.path));
        var diff = el("pre", "diff");
        renderDiff(diff, data.diff);
        block.appendChild(diff);
      }
      if (payload.output) block.appendChild(el("pre", "output", payload.output));
      pendingAction = null;
      if (owner) {
        owner.appendChild(block);
        return null;
      }
      var item = entry(event, payload.tool || "observation");
      item.appendChild(block);
      return item;
    }

    function draw(event) {
      var payload = event.payload || {};
      var item = null;
      if (event.kind === "message") {
        if (payload.role === "user") {
          item = entry(event, "task");
        } else {
          item = entry(event, "agent");
        }
        item.appendChild(el("p", "message-text", payload.text || ""));
      } else if (event.kind === "action") {
        item = drawAction(event);
      } else if (event.kind === "observation") {
        item = drawObservation(event);
      } else if (event.kind === "state") {
        item = entry(event, STATE_LABELS[payload.state] || payload.state || "state");
        if (payload.reason) item.appendChild(el("p", "state-reason muted", payload.reason));
        if (payload.queue_position) item.appendChild(el("p", "muted", "Place in the queue: " + payload.queue_position));
        setState(payload.state, payload.reason);
        // Leaving the line hides the place; a queued event without one keeps what is shown.
        if (payload.state !== "queued") showQueue(null);
        else if (payload.queue_position) showQueue(payload.queue_position);
      } else if (event.kind === "error") {
        item = entry(event, "error");
        item.appendChild(el("p", "event-problem", payload.message || payload.code || "Something went wrong."));
      }
      if (item) timeline.appendChild(item);
      if (emptyNote) emptyNote.hidden = true;
    }

    function receive(event) {
      if (event.seq <= lastSeq) return; // already drawn
      lastSeq = event.seq;
      if (event.seq > base.seq) {
        extra.input += event.input_tokens || 0;
        extra.output += event.output_tokens || 0;
        extra.cost += parseFloat(event.cost) || 0;
        extra.steps = Math.max(extra.steps, event.step || 0);
      }
      draw(event);
      drawMeter();
    }

    function connect() {
      var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
      var url = scheme + "//" + window.location.host + "/ws/runs/" + runId + "/?after=" + lastSeq;
      socket = new WebSocket(url);
      socket.onopen = function () {
        delay = 500;
      };
      socket.onmessage = function (message) {
        var data;
        try {
          data = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        if (data.type === "hello") {
          var run = data.run;
          base = {
            seq: run.last_seq,
            steps: run.steps,
            input: run.input_tokens,
            output: run.output_tokens,
            cost: parseFloat(run.cost) || 0,
          };
          extra = { steps: 0, input: 0, output: 0, cost: 0 };
          drawMeter();
        } else if (data.type === "event") {
          receive(data.event);
        } else if (data.type === "caught_up") {
          setStatus("Live", true);
          setState(state);
        } else if (data.type === "error") {
          setStatus(data.message, false);
        }
      };
      socket.onclose = function (closed) {
        socket = null;
        if ([CLOSE_INVALID, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND].indexOf(closed.code) >= 0) {
          stopped = true;
          if (closed.code === CLOSE_FORBIDDEN) setStatus("You no longer have access to this run.", false);
          return;
        }
        if (stopped) return;
        setStatus("Reconnecting…", false);
        window.setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      };
    }

    // The meter keeps the server's figures until the socket's hello brings a base to add to.
    showControls();
    connect();
    window.addEventListener("beforeunload", function () {
      stopped = true;
      if (socket) socket.close();
    });
  }

  function start() {
    document.querySelectorAll("[data-run]").forEach(setUp);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

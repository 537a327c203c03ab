// renalscan operator view. One socket carries frames (binary: header + JPEG together, so the
// label on screen always belongs to the pixels under it), events (numbered, replayed after a
// reconnect) and health. No framework, no remote asset: the cart is often offline.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const BADGES = {
    probe_lifted: "Probe lifted",
    frozen: "Frozen image",
    no_scan_area: "No scan area",
    no_anatomy: "No anatomy",
    not_a_kidney: "Not a kidney view",
    no_signal: "No signal",
  };
  const STALE_MS = 1000;

  const state = {
    role: null,
    instance: null,
    lastEventId: 0,
    lastFrameAt: 0,
    frozen: false,
    overlay: true,
    lastHeader: null,
    journalled: [], // decisions with a journal number, newest last
    rows: new Map(), // journal_seq or "d"+seq -> timeline row
    seenDecisions: new Set(),
    socket: null,
    retry: 500,
  };
  // For tests and the latency budget: what the page measured.
  window.rsView = { latencies: [], frames: 0, decisions: [] };

  // ---- pairing -------------------------------------------------------------------------
  async function start() {
    let who;
    try {
      who = await (await fetch("/api/whoami", { cache: "no-store" })).json();
    } catch (e) {
      setTimeout(start, 1000);
      return;
    }
    if (who.pairing) {
      $("pairing").hidden = false;
      $("view").hidden = true;
      $("pair-form").addEventListener("submit", pair);
      return;
    }
    $("pairing").hidden = true;
    $("view").hidden = false;
    $("exam").hidden = false;
    connect();
  }

  async function pair(ev) {
    ev.preventDefault();
    $("pair-error").textContent = "";
    const code = $("pair-code").value.trim();
    const r = await fetch("/api/pair", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code: code }),
    });
    if (r.ok) {
      $("pair-code").value = "";
      start();
    } else {
      const body = await r.json().catch(() => ({ error: "pairing failed" }));
      $("pair-error").textContent = body.error || "pairing failed";
    }
  }

  // ---- socket --------------------------------------------------------------------------
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(scheme + "://" + location.host + "/ws");
    ws.binaryType = "arraybuffer";
    state.socket = ws;
    setConn("connecting…", false);
    ws.onopen = () => {
      state.retry = 500;
      setConn("connected", false);
    };
    ws.onmessage = (m) => {
      if (typeof m.data === "string") {
        text(JSON.parse(m.data));
      } else {
        frame(m.data);
      }
    };
    ws.onclose = (e) => {
      state.socket = null;
      setConn("disconnected" + (e.reason ? ": " + e.reason : "") + " — reconnecting", true);
      setTimeout(connect, state.retry);
      state.retry = Math.min(state.retry * 2, 5000);
    };
  }

  function send(obj) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(obj));
      return true;
    }
    $("control-msg").textContent = "not connected: try again in a moment";
    return false;
  }

  function setConn(t, bad) {
    $("h-conn").textContent = t;
    $("h-conn").classList.toggle("bad", bad);
  }

  function text(msg) {
    switch (msg.type) {
      case "hello":
        hello(msg);
        break;
      case "event":
        if (msg.id <= state.lastEventId) return;
        state.lastEventId = msg.id;
        event(msg.event);
        break;
      case "health":
        health(msg.health);
        break;
      case "error":
        $("control-msg").textContent = msg.message;
        break;
    }
  }

  function hello(msg) {
    if (state.instance && state.instance !== msg.instance) {
      // The device restarted: its event numbers begin again.
      state.lastEventId = 0;
      const li = document.createElement("li");
      li.className = "restart";
      li.textContent = "device restarted " + new Date().toLocaleTimeString();
      $("timeline").prepend(li);
    }
    state.instance = msg.instance;
    send({ type: "resume", since: state.lastEventId });
    state.role = msg.role;
    const id = msg.identity || {};
    $("h-model").textContent = "model " + (id.model || "?") + " " + (id.version || "");
    $("h-signer").textContent = "signer " + (id.signer || "?");
    $("h-form").textContent = "form " + (id.form || "?");
    const operator = state.role === "operator";
    for (const b of ["freeze", "capture", "agree", "disagree"]) $(b).disabled = !operator;
    $("role-note").textContent = operator
      ? "Operator: actions are journalled with the decision's number."
      : "Viewer: this screen shows the scan; pair with the operator code to act.";
    updateMarkButtons();
    examButtons();
  }

  function health(h) {
    $("h-fps").textContent = "fps " + num(h.fps, 1);
    $("h-lat").textContent = "p95 " + num(h.p95_ms, 0) + " ms";
    $("h-journal").textContent = "journal " + (h.journal || "?");
    $("h-journal").classList.toggle("bad", h.journal !== "ok");
    const p = h.pacs;
    $("h-pacs").hidden = !p;
    if (p) {
      let t = "PACS " + p.sent + " sent";
      if (p.pending) t += ", " + p.pending + " waiting";
      if (p.quarantined) t += ", " + p.quarantined + " refused";
      if (p.held) t += ", HELD: check the PACS settings";
      $("h-pacs").textContent = t;
      $("h-pacs").title = p.alarm || p.address || "";
      $("h-pacs").classList.toggle("bad", !!(p.held || p.quarantined));
      $("h-pacs").classList.toggle("warn", !p.held && !p.quarantined && !!p.alarm);
    }
    if (h.frozen !== undefined && h.frozen !== state.frozen) setFrozen(h.frozen);
    if (h.state === "idle" || h.state === "no_signal") {
      // Nothing is being screened: never leave a verdict up.
      if (h.state === "no_signal") showBadge("no_signal");
    }
  }

  function num(v, d) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(d) : "—";
  }

  // ---- events: the timeline ------------------------------------------------------------
  function event(e) {
    if (e.kind === "decision") {
      addDecision(e);
    } else if (e.kind === "mark") {
      const row = state.rows.get(e.journal_seq);
      if (row) {
        const m = row.querySelector(".t-mark");
        m.textContent = e.agree ? "agreed" : "disagreed";
        m.className = "t-mark " + (e.agree ? "agree" : "disagree");
      }
    } else if (e.kind === "freeze") {
      setFrozen(e.frozen);
    } else if (e.kind === "session") {
      setSession(e.session);
    } else if (e.kind === "refused") {
      $("control-msg").textContent = e.action + ": " + e.reason;
    }
  }

  function addDecision(d) {
    window.rsView.decisions.push(d);
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.alt = "frame " + d.frame_index;
    if (d.thumb) img.src = d.thumb;
    const main = document.createElement("div");
    const t1 = document.createElement("div");
    t1.className = "t-main";
    const what = d.abnormal ? "Abnormal — " + label(d.class) : "Normal";
    t1.textContent = what + " · p " + d.p_abnormal.toFixed(3) + " / " + d.threshold.toFixed(3);
    const t2 = document.createElement("div");
    t2.className = "t-sub";
    const kind = d.decision_kind === "freeze" ? "classify-on-freeze" : d.decision_kind;
    t2.textContent =
      new Date(d.unix_ms).toLocaleTimeString() + " · " + kind + " · " + d.frames + " frame" +
      (d.frames === 1 ? "" : "s") + (d.journal_seq ? " · journal #" + d.journal_seq : " · not journalled");
    main.append(t1, t2);
    const mark = document.createElement("span");
    mark.className = "t-mark";
    li.append(img, main, mark);
    li.dataset.seq = d.seq;
    if (d.journal_seq) {
      li.dataset.journal = d.journal_seq;
      state.rows.set(d.journal_seq, li);
      state.journalled.push(d);
    }
    const list = $("timeline");
    list.prepend(li);
    while (list.children.length > 200) list.lastChild.remove();
    updateMarkButtons();
    if (d.decision_kind === "freeze") showDecision(d, true);
  }

  function label(c) {
    return String(c || "").replace(/_/g, " ");
  }

  function updateMarkButtons() {
    const has = state.journalled.length > 0 && state.role === "operator";
    $("agree").disabled = !has;
    $("disagree").disabled = !has;
  }

  // ---- frames --------------------------------------------------------------------------
  function frame(buf) {
    const bytes = new Uint8Array(buf);
    if (bytes.length < 8 || String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]) !== "RSF1") return;
    const n = new DataView(buf).getUint32(4, true);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    const jpeg = bytes.subarray(8 + n);
    state.lastFrameAt = performance.now();
    window.rsView.frames += 1;
    if (header.width > 0 && jpeg.length > 0) {
      createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }))
        .then((bmp) => draw(header, bmp))
        .catch(() => draw(header, null));
    } else {
      draw(header, null);
    }
  }

  function draw(h, bmp) {
    const scan = $("scan");
    const heat = $("heat");
    if (bmp) {
      if (scan.width !== bmp.width || scan.height !== bmp.height) {
        scan.width = heat.width = bmp.width;
        scan.height = heat.height = bmp.height;
      }
      scan.getContext("2d").drawImage(bmp, 0, 0);
      bmp.close();
    } else if (h.gate === "probe_lifted" || h.gate === "no_scan_area") {
      const g = scan.getContext("2d");
      g.fillStyle = "#000";
      g.fillRect(0, 0, scan.width, scan.height);
    }
    // A header without pixels while frozen keeps the frozen frame and its own map.
    if (bmp || !h.frozen) {
      drawHeat(h, heat);
      state.lastHeader = h;
    }
    if (h.frozen !== state.frozen) setFrozen(h.frozen);
    showBadge(h.gate);
    if (h.gate) {
      showDecision(null, false);
    } else {
      showDecision(h.decision, h.frozen);
    }
  }

  function drawHeat(h, canvas) {
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!state.overlay || !h.cam || !h.cam_w || !h.cam_h || h.gate) return;
    const small = document.createElement("canvas");
    small.width = h.cam_w;
    small.height = h.cam_h;
    const sg = small.getContext("2d");
    const img = sg.createImageData(h.cam_w, h.cam_h);
    for (let i = 0; i < h.cam.length; i++) {
      const [r, gg, b] = inferno(Math.max(0, Math.min(1, h.cam[i])));
      img.data[4 * i] = r;
      img.data[4 * i + 1] = gg;
      img.data[4 * i + 2] = b;
      img.data[4 * i + 3] = 255;
    }
    sg.putImageData(img, 0, 0);
    // The map covers the N x N model input; the picture is the crop placed inside it.
    const pw = Math.max(1, h.placed[2] - h.placed[0]);
    const ph = Math.max(1, h.placed[3] - h.placed[1]);
    const sx = canvas.width / pw;
    const sy = canvas.height / ph;
    g.imageSmoothingEnabled = true;
    g.drawImage(small, -h.placed[0] * sx, -h.placed[1] * sy, h.input_size * sx, h.input_size * sy);
    // Only inside the scan area: the map means nothing over the screen around it.
    const m = maskCanvas(h);
    if (m) {
      g.globalCompositeOperation = "destination-in";
      g.drawImage(m, 0, 0, canvas.width, canvas.height);
      g.globalCompositeOperation = "source-over";
    }
  }

  function maskCanvas(h) {
    if (!h.mask || !h.mask_w || !h.mask_h) return null;
    if (state.maskKey === h.mask + h.mask_w) return state.mask;
    const bits = Uint8Array.from(atob(h.mask), (c) => c.charCodeAt(0));
    const c = document.createElement("canvas");
    c.width = h.mask_w;
    c.height = h.mask_h;
    const g = c.getContext("2d");
    const img = g.createImageData(h.mask_w, h.mask_h);
    for (let i = 0; i < h.mask_w * h.mask_h; i++) {
      const on = (bits[i >> 3] >> (7 - (i & 7))) & 1;
      img.data[4 * i + 3] = on ? 255 : 0;
    }
    g.putImageData(img, 0, 0);
    state.mask = c;
    state.maskKey = h.mask + h.mask_w;
    return c;
  }

  // A short inferno-like ramp: dark purple through red to yellow.
  function inferno(t) {
    const stops = [
      [0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164],
    ];
    const x = t * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const f = x - i;
    return stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  }

  function showBadge(gate) {
    const b = $("badge");
    if (gate && BADGES[gate]) {
      b.textContent = BADGES[gate];
      b.dataset.gate = gate;
      b.hidden = false;
    } else {
      b.textContent = "";
      b.dataset.gate = "";
      b.hidden = true;
    }
  }

  function showDecision(d, frozen) {
    const v = $("verdict");
    const fill = $("bar-fill");
    if (!d) {
      v.textContent = "—";
      v.className = "verdict none";
      v.dataset.seq = "";
      $("dtype").textContent = "";
      fill.style.width = "0%";
      fill.className = "bar-fill";
      fill.dataset.p = "";
      $("pvalue").textContent = "p(abnormal) — · threshold " + thr();
      $("aggregated").textContent = "";
      return;
    }
    v.textContent = d.abnormal ? "Abnormal" : "Normal";
    v.className = "verdict " + (d.abnormal ? "abnormal" : "normal");
    v.dataset.seq = d.seq;
    $("dtype").textContent = d.abnormal ? "Type: " + label(d.class) : "";
    fill.style.width = (100 * d.p_abnormal).toFixed(1) + "%";
    fill.className = "bar-fill " + (d.abnormal ? "abnormal" : "normal");
    fill.dataset.p = String(d.p_abnormal);
    $("bar-thr").style.left = (100 * d.threshold).toFixed(1) + "%";
    $("pvalue").textContent = "p(abnormal) " + d.p_abnormal.toFixed(3) + " · threshold " + d.threshold.toFixed(3);
    $("aggregated").textContent =
      d.kind === "freeze" || frozen
        ? "classify-on-freeze: the frozen frame, classified once"
        : d.kind === "capture"
          ? "captured frame, classified once"
          : "aggregated over " + d.frames + " frames";
    if (!state.seenDecisions.has(d.seq)) {
      state.seenDecisions.add(d.seq);
      const ms = Date.now() - d.unix_ms;
      window.rsView.latencies.push(ms);
      send({ type: "latency", ms: ms });
    }
  }

  function thr() {
    const h = state.lastHeader;
    return h && typeof h.threshold === "number" ? h.threshold.toFixed(3) : "—";
  }

  // ---- exams ---------------------------------------------------------------------------
  function setSession(id) {
    state.session = id || null;
    const s = $("exam-state");
    s.textContent = id ? "Exam open · " + id : "No exam open";
    s.classList.toggle("open", !!id);
    $("exam-start").hidden = !!id;
    $("exam-end").hidden = !id;
    $("exam-form").hidden = true;
    examButtons();
  }

  function examButtons() {
    const op = state.role === "operator";
    $("exam-start").disabled = !op;
    $("exam-end").disabled = !op;
  }

  function openExam(ev) {
    ev.preventDefault();
    const v = (id) => $(id).value.trim() || null;
    send({
      type: "session",
      action: "start",
      context: {
        patient_id: v("ctx-patient"),
        accession: v("ctx-accession"),
        operator: v("ctx-operator"),
        side: v("ctx-side"),
      },
    });
    // The form is cleared at once: what was typed stays on the device only.
    for (const id of ["ctx-patient", "ctx-accession", "ctx-operator"]) $(id).value = "";
    $("ctx-side").value = "";
    $("exam-form").hidden = true;
  }

  function setFrozen(f) {
    state.frozen = f;
    $("frozen-tag").hidden = !f;
    $("freeze").textContent = f ? "Unfreeze" : "Freeze";
    $("freeze").classList.toggle("active", f);
  }

  // Nothing new for over a second: the verdict is stale, never shown as current.
  setInterval(() => {
    if ($("view").hidden || state.frozen) return;
    if (performance.now() - state.lastFrameAt > STALE_MS) {
      const v = $("verdict");
      v.textContent = "STALE";
      v.className = "verdict stale";
      v.dataset.seq = "";
      $("dtype").textContent = "";
      $("bar-fill").dataset.p = "";
      $("bar-fill").style.width = "0%";
      $("aggregated").textContent = "no frame for over a second";
      showBadge("no_signal");
    }
  }, 200);

  // ---- controls ------------------------------------------------------------------------
  function freeze() {
    $("control-msg").textContent = "";
    send({ type: "control", action: state.frozen ? "unfreeze" : "freeze" });
  }
  function capture() {
    $("control-msg").textContent = "";
    send({ type: "control", action: "capture" });
  }
  function mark(agree) {
    $("control-msg").textContent = "";
    const d = state.journalled[state.journalled.length - 1];
    if (!d) {
      $("control-msg").textContent = "no journalled decision to mark yet";
      return;
    }
    send({ type: "mark", journal_seq: d.journal_seq, agree: agree });
  }
  function toggleOverlay() {
    state.overlay = !state.overlay;
    const b = $("overlay");
    b.setAttribute("aria-pressed", String(state.overlay));
    b.textContent = "Attention overlay: " + (state.overlay ? "on" : "off");
    if (state.lastHeader) drawHeat(state.lastHeader, $("heat"));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("freeze").addEventListener("click", freeze);
    $("capture").addEventListener("click", capture);
    $("agree").addEventListener("click", () => mark(true));
    $("disagree").addEventListener("click", () => mark(false));
    $("overlay").addEventListener("click", toggleOverlay);
    $("exam-start").addEventListener("click", () => {
      $("exam-form").hidden = false;
      $("ctx-patient").focus();
    });
    $("exam-cancel").addEventListener("click", () => ($("exam-form").hidden = true));
    $("exam-form").addEventListener("submit", openExam);
    $("exam-end").addEventListener("click", () => send({ type: "session", action: "end" }));
    document.addEventListener("keydown", (e) => {
      if (
        e.target instanceof HTMLInputElement ||
        e.target instanceof HTMLSelectElement ||
        e.ctrlKey ||
        e.metaKey ||
        e.altKey
      )
        return;
      const k = e.key.toLowerCase();
      const op = state.role === "operator";
      if (k === "h") toggleOverlay();
      else if (k === "f" && op) freeze();
      else if (k === "c" && op) capture();
      else if (k === "a" && op) mark(true);
      else if (k === "d" && op) mark(false);
    });
    start();
  });
})();

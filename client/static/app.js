// endless browser viewer: connects by itself, creates (or joins ?stream=ID) a stream,
// watches it over WebRTC, and sends prompts and storyboards (docs/protocol.md).
// Roles: the page that creates a stream holds its control token (kept in this tab's
// sessionStorage, not in the address bar); "share this stream" gives a view link
// (?stream=ID&view=TOKEN: the video, no controls), "share control" a control link
// (?stream=ID&control=TOKEN) for a co-narrator.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ANCHORS = 256; // tick -> frame anchors kept (two per stall or pause; old ones go)

// Everything the page knows, in one object (also read by the browser tests).
const app = {
  ws: null,
  seq: 0,
  replies: new Map(),
  hello: null,
  stream: null,
  token: null, // the token this page sends for its stream
  role: null, // "control" or "view"
  viewToken: null, // known to a controlling page, for its share link
  viewer: null,
  pc: null,
  fps: 24,
  ticksPerFrame: 3750,
  firstTick: null, // media tick of the first frame sent to this viewer
  firstRtp: null, // its RTP timestamp as the browser saw it
  timeline: [], // [tick, frame, held] anchors from the server
  shownFrame: null, // generated frame index on screen now
  pendingSwitch: null, // {frame, sent}
  switchLatency: null, // seconds from sending a prompt to its first frame on screen
  applied: [], // prompt_applied replies
  errors: [], // error replies
  framesDecoded: 0,
  serverStats: null,
  paused: false,
  reconnectMs: 500, // next reconnect delay: doubles up to 10 s, back to 500 ms once open
  tracking: false, // the video frame callback loop is running
};
window.endless = app;

// -- websocket -------------------------------------------------------------------------
// A lost connection fails the requests waiting on it, drops the video, and reconnects with
// backoff; the new hello runs start() again, which rejoins the stream in the page's URL.
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  app.ws = ws;
  ws.onopen = () => {
    app.reconnectMs = 500;
  };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onerror = () => setStatus("connection error", "down");
  ws.onclose = () => {
    if (app.ws !== ws) return;
    failPending("the connection to the server was lost");
    closeVideo();
    setStatus(`disconnected · reconnecting in ${app.reconnectMs / 1000} s…`, "down");
    setTimeout(connect, app.reconnectMs);
    app.reconnectMs = Math.min(2 * app.reconnectMs, 10000);
  };
}

function failPending(message) {
  const waiting = [...app.replies.values()];
  app.replies.clear();
  waiting.forEach(({ reject }) => reject({ code: "disconnected", message }));
}

function request(msg) {
  const seq = ++app.seq;
  return new Promise((resolve, reject) => {
    if (!app.ws || app.ws.readyState !== WebSocket.OPEN) {
      reject({ code: "disconnected", message: "not connected to the server" });
      return;
    }
    app.replies.set(seq, { resolve, reject });
    app.ws.send(JSON.stringify({ ...msg, seq }));
  });
}

function onMessage(msg) {
  const waiting = msg.seq !== undefined && app.replies.get(msg.seq);
  if (waiting) {
    app.replies.delete(msg.seq);
    if (msg.type === "error") {
      app.errors.push(msg);
      waiting.reject(msg);
    } else {
      waiting.resolve(msg);
    }
    return;
  }
  switch (msg.type) {
    case "hello":
      app.hello = msg;
      if (msg.vocabulary) showVocabulary(msg.vocabulary);
      start().catch(startFailed);
      break;
    case "timeline":
      addAnchor(msg.tick, msg.frame, msg.held);
      break;
    case "viewer_started":
      if (msg.viewer === app.viewer) {
        app.firstTick = msg.tick;
        (msg.timeline || []).forEach(([t, f, h]) => addAnchor(t, f, h));
      }
      break;
    case "stats":
      app.serverStats = msg;
      $("now-playing").textContent = `now: “${msg.prompt}”`;
      break;
    case "prompt_changed":
      showMessage(`Another viewer switched to “${msg.prompt}” (frame ${msg.frame}).`, "ok");
      break;
    case "paused":
    case "resumed":
      setPaused(msg.type === "paused");
      break;
    case "stream_ended":
      if (msg.stream !== app.stream) break;
      app.stream = null;
      closeVideo();
      setStatus(`stream ended (${msg.reason})`, "down");
      showMessage("This stream has ended. Reload the page to start a new one.", "error");
      break;
    case "viewer_closed":
      if (msg.viewer !== app.viewer) break;
      closeVideo();
      if (app.stream) watch(app.stream).catch(startFailed); // e.g. connect_timeout
      break;
    case "error":
      app.errors.push(msg);
      showError(msg);
      break;
  }
}

// A request on this page's stream, with its token.
function onStream(type, fields = {}) {
  return request({ type, stream: app.stream, token: app.token, ...fields });
}

// -- starting: create or join, then watch ---------------------------------------------------
const kept = (stream) => `endless.control.${stream}`; // sessionStorage key of a control token

function tokenFor(stream, params) {
  if (app.stream === stream && app.token) return app.token; // rejoining after a reconnect
  return params.get("control") || params.get("view") || sessionStorage.getItem(kept(stream));
}

async function start() {
  const params = new URLSearchParams(location.search);
  let stream = params.get("stream");
  if (stream) {
    const token = tokenFor(stream, params);
    try {
      const joined = await request({ type: "join", stream, token });
      app.fps = joined.fps;
      setRole(stream, token, joined.role, joined.view_token);
      setPaused(Boolean(joined.paused));
    } catch (err) {
      if (err.code === "unauthorized") {
        setStatus("not playing", "down");
        showMessage(`This link has no valid token for stream ${stream}.`, "error");
        return;
      }
      if (err.code !== "unknown_stream") throw err;
      showMessage(`Stream ${stream} has ended; starting a new one.`, "error");
      stream = null;
    }
  }
  if (!stream) {
    const prompt = params.get("prompt") || app.hello.default_prompt;
    const key = params.get("key") || sessionStorage.getItem("endless.key");
    if (app.hello.key_required && !key) {
      setStatus("not playing", "down");
      showMessage("This server needs its API key to start a stream: open /?key=KEY.", "error");
      return;
    }
    if (key) sessionStorage.setItem("endless.key", key); // the address bar drops it below
    const created = await request({ type: "create", prompt, seed: 0, ...(key ? { key } : {}) });
    stream = created.stream;
    app.fps = created.fps;
    setRole(stream, created.control_token, "control", created.view_token);
    history.replaceState(null, "", `?stream=${encodeURIComponent(stream)}`);
  }
  app.stream = stream;
  $("share").hidden = !app.viewToken;
  await watch(stream);
}

// What this page may do: a view page loses every control (they leave the page).
function setRole(stream, token, role, viewToken) {
  app.token = token;
  app.role = role;
  app.viewToken = viewToken || (role === "view" ? token : null);
  if (role === "control") {
    sessionStorage.setItem(kept(stream), token);
    $("share-control").hidden = false;
  } else {
    viewOnly();
  }
}

function viewOnly() {
  document.querySelectorAll("[data-role=control]").forEach((el) => el.remove());
}

function shareLink(kind) {
  const token = kind === "view" ? app.viewToken : app.token;
  const q = new URLSearchParams({ stream: app.stream, [kind]: token });
  return `${location.origin}/?${q}`;
}

async function share(kind) {
  if (!app.stream) return noStream();
  const link = shareLink(kind);
  $("share-what").textContent =
    kind === "view" ? "Watch-only link:" : "Control link (lets its holder steer):";
  $("share-link").value = link;
  $("share-box").hidden = false;
  $("share-link").select();
  try {
    await navigator.clipboard.writeText(link);
    showMessage("Link copied.", "ok");
  } catch (err) {
    showMessage("Copy the link above.", "ok");
  }
}

// Starting failed: say so; a busy server is asked again a little later.
function startFailed(err) {
  showError(err);
  if (err && err.code === "disconnected") return; // the reconnect starts again
  setStatus("not playing", "down");
  if (err && err.code === "busy") setTimeout(() => start().catch(startFailed), 2000);
}

function closeVideo() {
  if (app.pc) app.pc.close();
  app.pc = null;
  app.viewer = null;
  app.firstTick = null;
  app.firstRtp = null;
  app.timeline = [];
  app.pendingSwitch = null;
}

function gatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function watch(stream) {
  closeVideo();
  const pc = new RTCPeerConnection();
  app.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (ev) => {
    $("video").srcObject = ev.streams[0] || new MediaStream([ev.track]);
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") setStatus(`live · stream ${stream}`, "live");
    if (pc.connectionState === "failed") setStatus("video connection failed", "down");
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc, 1500);
    setStatus("negotiating video…");
    const answer = await onStream("watch", { sdp: pc.localDescription.sdp });
    app.viewer = answer.viewer;
    app.ticksPerFrame = answer.ticks_per_frame;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  } catch (err) {
    pc.close();
    if (app.pc === pc) app.pc = null;
    throw err;
  }
  trackFrames();
}

// -- which generated frame is on screen -------------------------------------------------------
function addAnchor(tick, frame, held) {
  if (!app.timeline.some(([t, f, h]) => t === tick && f === frame && h === held)) {
    app.timeline.push([tick, frame, held]);
    app.timeline.sort((a, b) => a[0] - b[0]);
    const extra = app.timeline.length - MAX_ANCHORS;
    if (extra > 0) app.timeline.splice(0, extra);
  }
}

function frameAt(tick) {
  let anchor = null;
  for (const a of app.timeline) if (a[0] <= tick) anchor = a;
  if (!anchor) return null;
  const [t, f, held] = anchor;
  return held ? f : f + (tick - t);
}

function trackFrames() {
  const video = $("video");
  if (!video.requestVideoFrameCallback || app.tracking) return;
  app.tracking = true;
  const onFrame = (now, meta) => {
    if (meta.rtpTimestamp !== undefined) {
      if (app.firstRtp === null) app.firstRtp = meta.rtpTimestamp;
      if (app.firstTick !== null) {
        const delta = (meta.rtpTimestamp - app.firstRtp) >>> 0; // RTP timestamps wrap
        const tick = app.firstTick + Math.round(delta / app.ticksPerFrame);
        app.shownFrame = frameAt(tick);
        const p = app.pendingSwitch;
        if (p && app.shownFrame !== null && app.shownFrame >= p.frame) {
          app.switchLatency = (now - p.sent) / 1000;
          app.pendingSwitch = null;
          showMessage(
            `“${p.prompt}” on screen from frame ${p.frame}, ` +
              `${Math.round(app.switchLatency * 1000)} ms after sending.`,
            "ok",
          );
        }
      }
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

// -- prompts and storyboards -----------------------------------------------------------------
function noStream() {
  showMessage("No stream is playing (see the status above).", "error");
}

async function sendPrompt(text) {
  if (!app.stream) return noStream();
  const sent = performance.now();
  try {
    const reply = await onStream("prompt", { text });
    app.applied.push(reply);
    app.pendingSwitch = { frame: reply.frame, sent, prompt: reply.prompt };
    showMessage(`Applied “${reply.prompt}” from frame ${reply.frame}.`, "ok");
  } catch (err) {
    showError(err);
  }
}

function addStoryboardRow(at = "", prompt = "") {
  const row = document.createElement("tr");
  row.innerHTML =
    '<td><input type="number" min="0" step="0.5" class="sb-at"></td>' +
    '<td><input type="text" class="sb-prompt"></td>' +
    '<td><button type="button" class="sb-remove" aria-label="remove">×</button></td>';
  row.querySelector(".sb-at").value = at;
  row.querySelector(".sb-prompt").value = prompt;
  row.querySelector(".sb-remove").onclick = () => row.remove();
  $("storyboard").querySelector("tbody").appendChild(row);
}

async function playStoryboard() {
  if (!app.stream) return noStream();
  const rows = [...$("storyboard").querySelectorAll("tbody tr")];
  const items = rows
    .map((r) => ({
      at: parseFloat(r.querySelector(".sb-at").value),
      prompt: r.querySelector(".sb-prompt").value.trim(),
    }))
    .filter((item) => item.prompt && Number.isFinite(item.at));
  if (!items.length) {
    showMessage("Add at least one item with a time and a prompt.", "error");
    return;
  }
  try {
    const reply = await onStream("storyboard", { items });
    const when = reply.items.map((i) => `${i.at}s → frame ${i.frame}`).join(", ");
    showMessage(`Storyboard scheduled: ${when}.`, "ok");
  } catch (err) {
    showError(err);
  }
}

// -- the page ------------------------------------------------------------------------------------
function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

function setPaused(paused) {
  app.paused = paused;
  if ($("pause")) $("pause").textContent = paused ? "Resume" : "Pause";
}

function showMessage(text, kind) {
  const el = $("message");
  el.textContent = text;
  el.className = `message ${kind}`;
}

function showError(err) {
  const el = $("message");
  el.className = "message error";
  el.textContent = "";
  if (err && err.code === "unknown_words") {
    el.append("Unknown words: ");
    err.words.forEach((w, i) => {
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = w;
      el.append(span);
      if (i < err.words.length - 1) el.append(", ");
    });
    el.append(". The model only knows the words listed beside the prompt.");
  } else {
    const text = err && err.message ? err.message : String(err);
    el.textContent = err && err.code ? `${text} (${err.code})` : text;
  }
  el.dataset.code = (err && err.code) || "";
}

function showVocabulary(vocab) {
  const parts = Object.entries(vocab).map(([k, words]) => `${k}: ${words.join(", ")}`);
  if ($("vocabulary")) $("vocabulary").textContent = `Words: ${parts.join(" · ")}`;
}

async function updateStats() {
  const s = app.serverStats;
  if (s) {
    $("stat-buffer").textContent = `${s.buffer_seconds.toFixed(2)} s`;
    $("stat-cache").textContent = `${(s.cache_bytes / 1048576).toFixed(1)} MiB`;
    $("stat-stalls").textContent = String(s.stalls);
  }
  if (app.switchLatency !== null) {
    $("stat-switch").textContent = `${Math.round(app.switchLatency * 1000)} ms`;
  }
  if (!app.pc) return;
  const report = await app.pc.getStats();
  report.forEach((r) => {
    if (r.type !== "inbound-rtp" || r.kind !== "video") return;
    const prev = app.framesDecoded;
    app.framesDecoded = r.framesDecoded || 0;
    const fps = r.framesPerSecond !== undefined ? r.framesPerSecond : app.framesDecoded - prev;
    $("stat-fps").textContent = String(Math.round(fps));
    if (r.jitterBufferEmittedCount) {
      const ms = (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount;
      $("stat-latency").textContent = `${Math.round(ms)} ms`;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("prompt-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("prompt").value.trim();
    if (text) sendPrompt(text);
  });
  $("add-item").onclick = () => addStoryboardRow();
  $("play-storyboard").onclick = playStoryboard;
  $("pause").onclick = async () => {
    if (!app.stream) return noStream();
    try {
      const reply = await onStream(app.paused ? "resume" : "pause");
      setPaused(reply.type === "paused");
    } catch (err) {
      showError(err);
    }
  };
  $("stop").onclick = () => {
    if (app.stream) onStream("stop").catch(showError);
  };
  $("share").onclick = () => share("view");
  $("share-control").onclick = () => share("control");
  addStoryboardRow(2, "a small cyan ring moving left in the night");
  addStoryboardRow(5, "a big yellow triangle standing still in the desert");
  if (new URLSearchParams(location.search).get("view")) viewOnly(); // no controls, ever
  setInterval(updateStats, 1000);
  connect();
});

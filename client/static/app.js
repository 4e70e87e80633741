// endless browser viewer: connects by itself, creates (or joins ?stream=ID) a stream,
// watches it over WebRTC, and sends prompts and storyboards (docs/protocol.md).
"use strict";

const $ = (id) => document.getElementById(id);

// Everything the page knows, in one object (also read by the browser tests).
const app = {
  ws: null,
  seq: 0,
  replies: new Map(),
  hello: null,
  stream: null,
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
};
window.endless = app;

// -- websocket -------------------------------------------------------------------------
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  app.ws = new WebSocket(`${proto}://${location.host}/ws`);
  app.ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  app.ws.onclose = () => setStatus("disconnected", "down");
  app.ws.onerror = () => setStatus("connection error", "down");
}

function request(msg) {
  const seq = ++app.seq;
  return new Promise((resolve, reject) => {
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
      showVocabulary(msg.vocabulary);
      start().catch((err) => showError(err));
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
      setStatus(`stream ended (${msg.reason})`, "down");
      break;
    case "error":
      app.errors.push(msg);
      showError(msg);
      break;
  }
}

// -- starting: create or join, then watch ---------------------------------------------------
async function start() {
  const params = new URLSearchParams(location.search);
  let stream = params.get("stream");
  if (stream) {
    const joined = await request({ type: "join", stream });
    app.fps = joined.fps;
  } else {
    const prompt = params.get("prompt") || app.hello.default_prompt;
    const created = await request({ type: "create", prompt, seed: 0 });
    stream = created.stream;
    app.fps = created.fps;
    history.replaceState(null, "", `?stream=${encodeURIComponent(stream)}`);
  }
  app.stream = stream;
  const share = $("share");
  share.href = location.href;
  share.hidden = false;
  await watch(stream);
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
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc, 1500);
  setStatus("negotiating video…");
  const answer = await request({ type: "watch", stream, sdp: pc.localDescription.sdp });
  app.viewer = answer.viewer;
  app.ticksPerFrame = answer.ticks_per_frame;
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  trackFrames();
}

// -- which generated frame is on screen -------------------------------------------------------
function addAnchor(tick, frame, held) {
  if (!app.timeline.some(([t, f, h]) => t === tick && f === frame && h === held)) {
    app.timeline.push([tick, frame, held]);
    app.timeline.sort((a, b) => a[0] - b[0]);
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
  if (!video.requestVideoFrameCallback) return;
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
async function sendPrompt(text) {
  if (!app.stream) return;
  const sent = performance.now();
  try {
    const reply = await request({ type: "prompt", stream: app.stream, text });
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
    const reply = await request({ type: "storyboard", stream: app.stream, items });
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
  $("pause").textContent = paused ? "Resume" : "Pause";
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
    el.append(". The model only knows the words listed below.");
  } else {
    const text = err && err.message ? err.message : String(err);
    el.textContent = err && err.code ? `${text} (${err.code})` : text;
  }
  el.dataset.code = (err && err.code) || "";
}

function showVocabulary(vocab) {
  const parts = Object.entries(vocab).map(([k, words]) => `${k}: ${words.join(", ")}`);
  $("vocabulary").textContent = `Words: ${parts.join(" · ")}`;
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
    if (!app.stream) return;
    try {
      const reply = await request({ type: app.paused ? "resume" : "pause", stream: app.stream });
      setPaused(reply.type === "paused");
    } catch (err) {
      showError(err);
    }
  };
  $("stop").onclick = () => app.stream && request({ type: "stop", stream: app.stream });
  addStoryboardRow(2, "a small cyan ring moving left in the night");
  addStoryboardRow(5, "a big yellow triangle standing still in the desert");
  setInterval(updateStats, 1000);
  connect();
});

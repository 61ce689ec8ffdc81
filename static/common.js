// Shared by the demo page (app.js) and the WHEP viewer (whep.js): ICE gathering, captions
// (panel + native text-track cues), tags, server status and getStats figures. No build step.
"use strict";

const MAX_CAPTION_LINES = 50;

function $(id) { return document.getElementById(id); }

// aiortc answers only after gathering all its candidates; the browser does the same (capped) so
// the offer carries its candidates and no trickle is needed.
function waitForIceGathering(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

// The server's ICE servers (empty unless it configures STUN/TURN); host candidates otherwise.
// A viewer names its stream, so that stream's own viewer token opens the route.
async function fetchIceServers(token, manifestId) {
  const query = manifestId ? `?manifest_id=${encodeURIComponent(manifestId)}` : "";
  try {
    const resp = await fetch(`/webrtc/ice-servers${query}`, { headers: authHeaders(token) });
    if (resp.ok) return (await resp.json()).iceServers || [];
  } catch (_) { /* fall back to host candidates */ }
  return [];
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

// Captions: a scrolling panel, the current partial line, and native text-track cues on the video.
class CaptionView {
  constructor(video, list, partialEl) {
    this.video = video;
    this.list = list;
    this.partialEl = partialEl;
    this.targetLang = "";
    this.track = video.addTextTrack("captions", "AI captions", "en");
    this.track.mode = "showing";
    this.partialCue = null;
    this.count = 0;
  }

  textOf(event) {
    const translated = this.targetLang && event.translations ? event.translations[this.targetLang] : "";
    return { text: event.text || "", translated: translated || "" };
  }

  show(event) {
    const { text, translated } = this.textOf(event);
    const cueText = translated ? `${text}\n${translated}` : text;
    const now = this.video.currentTime || 0;
    if (!event.final) {
      this.partialEl.textContent = text;
      if (this.partialCue && this.partialCue.endTime > now) {
        this.partialCue.text = cueText;  // one cue rewritten, so partials do not stack
        this.partialCue.endTime = now + 3;
      } else {
        this.partialCue = this.addCue(now, now + 3, cueText);
      }
      return;
    }
    this.partialEl.textContent = "";
    if (this.partialCue) { this.partialCue.endTime = Math.min(this.partialCue.endTime, now); this.partialCue = null; }
    this.addCue(now, now + 4, cueText);
    const item = document.createElement("li");
    item.textContent = text;
    if (translated) {
      const span = document.createElement("span");
      span.className = "translation";
      span.textContent = translated;
      item.appendChild(span);
    }
    this.list.prepend(item);
    while (this.list.children.length > MAX_CAPTION_LINES) this.list.lastChild.remove();
    this.count += 1;
  }

  addCue(start, end, text) {
    if (typeof VTTCue === "undefined") return null;
    const cue = new VTTCue(start, end, text);
    cue.line = -3;
    this.track.addCue(cue);
    // keep the cue list short: drop cues that ended long ago
    const cues = Array.from(this.track.cues || []);
    for (const old of cues.slice(0, Math.max(0, cues.length - 20))) this.track.removeCue(old);
    return cue;
  }

  clear() {
    this.list.textContent = "";
    this.partialEl.textContent = "";
    for (const cue of Array.from(this.track.cues || [])) this.track.removeCue(cue);
    this.partialCue = null;
  }
}

function showTags(listEl, event) {
  listEl.textContent = "";
  const items = (event.tags || []).map((t) => `${t.name} ${Number(t.confidence).toFixed(2)}`);
  if (event.text) items.push(event.text);
  for (const label of items.slice(0, 20)) {
    const li = document.createElement("li");
    li.textContent = label;
    listEl.appendChild(li);
  }
}

function showServerStatus(msg) {
  $("stat-state").textContent = msg.state;
  $("stat-server-fps").textContent = `${msg.fps_in} / ${msg.fps_out}`;
  $("stat-dropped").textContent = String(msg.frames_dropped);
  const lat = msg.latency_ms || {};
  const fmt = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);
  $("stat-latency").textContent = `${fmt(lat.p50)} / ${fmt(lat.p95)}`;
}

// fps and resolution of the received video, round trip of the selected candidate pair
async function showPeerStats(pc) {
  if (!pc) return;
  const report = await pc.getStats();
  let rtt = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      if (s.framesPerSecond !== undefined) $("stat-fps").textContent = s.framesPerSecond.toFixed(0);
      if (s.frameWidth) $("stat-res").textContent = `${s.frameWidth}×${s.frameHeight}`;
    }
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime !== undefined) {
      rtt = s.currentRoundTripTime;
    }
  });
  if (rtt !== null) $("stat-rtt").textContent = `${(rtt * 1000).toFixed(1)} ms`;
}

// One data-channel message from the server → the page.
function handleServerMessage(data, captions, tagsEl, log) {
  let msg;
  try { msg = JSON.parse(data); } catch (_) { return; }
  window.streamlensMessages = (window.streamlensMessages || 0) + 1;
  switch (msg.type) {
    case "caption": captions.show(msg); break;
    case "tags":
    case "description": showTags(tagsEl, msg); break;
    case "status": showServerStatus(msg); break;
    case "error": if (log) log(msg.message || "server error"); break;
    default: break;
  }
  return msg;
}

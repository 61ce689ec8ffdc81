// Shared by the demo page (app.js), the WHEP viewer (whep.js) and the HLS viewer (hls-view.js): the
// notice line and connection pill, ICE gathering, captions
// (panel + native text-track cues), tags, server status and getStats figures. No build step.
"use strict";

const MAX_CAPTION_LINES = 50;

function $(id) { return document.getElementById(id); }

function notice(text) {
  const el = $("notice");
  el.textContent = text || "";
  el.hidden = !text;
}

// the connection pill: green while connected (WebRTC) or playing (HLS), red when failed
function setConnection(state) {
  const pill = $("connection");
  pill.textContent = state;
  const good = state === "connected" || state === "playing";
  pill.className = "pill " + (good ? "connected" : state === "failed" ? "failed" : "");
}

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

// Captions: a list of finals (one entry per caption id), the current partial line, and ONE
// native text-track cue over the video, of at most two short lines, replaced by the next caption.
// When the server burns captions into the picture (event.burned_in) the page draws no cue, so a
// caption is never shown twice. A translation arrives as an update of its caption (same id): the
// entry is updated in place. Translations the translator was unsure of (confidence < 0.5) are
// greyed out.
const CUE_LINE_CHARS = 36;
const LOW_TRANSLATION_CONFIDENCE = 0.5;

// The last `count` lines of `text` wrapped at `width` characters (words kept whole).
function lastLines(text, count, width = CUE_LINE_CHARS) {
  const lines = [];
  let line = "";
  for (const word of String(text || "").split(/\s+/).filter(Boolean)) {
    const piece = word.length > width ? word.slice(0, width - 1) + "…" : word;
    if (line && line.length + 1 + piece.length > width) { lines.push(line); line = piece; }
    else line = line ? `${line} ${piece}` : piece;
  }
  if (line) lines.push(line);
  return lines.slice(-count);
}

class CaptionView {
  constructor(video, list, partialEl) {
    this.video = video;
    this.list = list;
    this.partialEl = partialEl;
    this.targetLang = "";
    this.burnedIn = false;  // what the newest caption said; the page also sets it on a params change
    this.track = video.addTextTrack("captions", "AI captions", "en");
    this.track.mode = "showing";
    this.cue = null;
    this.items = new Map();  // caption id → its list entry (bounded with the list)
    this.count = 0;
  }

  translationOf(event) {
    if (!this.targetLang || !event.translations) return { translated: "", unsure: false };
    const translated = event.translations[this.targetLang] || "";
    const confidence = (event.translation_confidence || {})[this.targetLang];
    return { translated, unsure: typeof confidence === "number" && confidence < LOW_TRANSLATION_CONFIDENCE };
  }

  show(event) {
    if (typeof event.burned_in === "boolean") this.burnedIn = event.burned_in;
    const text = event.text || "";
    const { translated, unsure } = this.translationOf(event);
    if (!event.final) {
      this.partialEl.textContent = text;
      this.showCue(lastLines(text, 2), 3);
      return;
    }
    this.partialEl.textContent = "";
    if (!text) { this.showCue([], 0); return; }  // an empty final withdraws its partial
    const lines = translated ? [...lastLines(text, 1), ...lastLines(translated, 1)] : lastLines(text, 2);
    this.showCue(lines, 5);
    this.upsertItem(event.id, text, translated, unsure);
  }

  // one cue at a time: the next caption replaces it (never stacked), none when burned in
  showCue(lines, seconds) {
    if (this.cue) { this.track.removeCue(this.cue); this.cue = null; }
    if (this.burnedIn || !lines.length || typeof VTTCue === "undefined") return;
    const now = this.video.currentTime || 0;
    this.cue = new VTTCue(now, now + seconds, lines.join("\n"));
    this.cue.line = -2;
    this.track.addCue(this.cue);
  }

  refresh() {
    if (this.burnedIn && this.cue) { this.track.removeCue(this.cue); this.cue = null; }
  }

  upsertItem(id, text, translated, unsure) {
    let item = this.items.get(id);
    if (!item) {
      item = document.createElement("li");
      item.dataset.captionId = String(id);
      this.items.set(id, item);
      this.list.prepend(item);
      this.count += 1;
      while (this.list.children.length > MAX_CAPTION_LINES) {
        const old = this.list.lastChild;
        this.items.delete(Number(old.dataset.captionId));
        old.remove();
      }
    }
    item.textContent = text;
    if (translated) {
      const span = document.createElement("span");
      span.className = unsure ? "translation unsure" : "translation";
      span.textContent = translated;
      if (unsure) {
        span.style.opacity = "0.55";
        span.style.filter = "grayscale(1)";
        span.title = "the translator was unsure of this translation";
      }
      item.appendChild(span);
    }
  }

  clear() {
    this.list.textContent = "";
    this.partialEl.textContent = "";
    for (const cue of Array.from(this.track.cues || [])) this.track.removeCue(cue);
    this.cue = null;
    this.items.clear();
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

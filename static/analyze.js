// "Analyse a video" tab: upload a file or give a URL, ask a prompt or look for tags, follow the
// job's progress over SSE, then show the answer, a timeline of tag spans and the transcript.
// Talks to /v1/analyze, /v1/inference/*, /v1/jobs/{id}/events (see docs/guides/recorded-video.md).
// The API token goes only in an Authorization header, never in a URL (URLs end up in logs, the
// history and Referer headers): the SSE stream and the WebVTT download are read with fetch.
"use strict";

(function () {
  const el = (id) => document.getElementById(id);
  const section = el("analyze");
  if (!section) return;

  // -- the tab bar: "Live" (everything else in <main>) and "Analyse a video" ----------------------
  const main = document.querySelector("main");
  const bar = document.createElement("nav");
  bar.className = "tabbar";
  bar.innerHTML = '<button type="button" data-tab="live">Live</button>' +
    '<button type="button" data-tab="analyze" id="analyze-tab">Analyse a video</button>';
  main.parentNode.insertBefore(bar, main);
  main.appendChild(section);

  section.hidden = false;  // shown and hidden by the body class from here on (analyze.css)

  function showTab(name) {
    document.body.classList.toggle("an-active", name === "analyze");
    for (const b of bar.querySelectorAll("button")) b.classList.toggle("active", b.dataset.tab === name);
  }
  bar.addEventListener("click", (e) => {
    const tab = e.target.dataset && e.target.dataset.tab;
    if (tab) { showTab(tab); history.replaceState(null, "", tab === "analyze" ? "#analyze" : "#"); }
  });
  showTab(location.hash === "#analyze" ? "analyze" : "live");

  // -- the form ----------------------------------------------------------------------------------------
  const mode = () => section.querySelector('input[name="an-mode"]:checked').value;
  const token = () => (el("token") && el("token").value) || "";
  const headers = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

  function setMode() {
    el("an-prompt-row").hidden = mode() !== "prompt";
    el("an-tags-row").hidden = mode() !== "tags";
  }
  for (const radio of section.querySelectorAll('input[name="an-mode"]')) radio.addEventListener("change", setMode);
  setMode();

  function setStatus(text, bad) {
    const status = el("an-status");
    status.textContent = text;
    status.classList.toggle("bad", !!bad);
  }

  async function errorOf(resp) {
    try {
      const body = await resp.json();
      return (body.error && body.error.message) || JSON.stringify(body);
    } catch (_) {
      return `HTTP ${resp.status}`;
    }
  }

  function request() {
    const file = el("an-file").files[0];
    const url = el("an-url").value.trim();
    if (!file && !url) throw new Error("choose a file or give a video URL");
    const interval = parseFloat(el("an-interval").value) || 2;
    const transcript = el("an-transcript").checked;
    const lang = el("an-translate").value;
    let path, options;
    if (mode() === "prompt") {
      const prompt = el("an-prompt").value.trim();
      if (!prompt) throw new Error("write a prompt");
      path = file ? "/v1/inference/upload?async=true" : "/v1/inference/url?async=true";
      options = { prompt };
    } else {
      const tags = el("an-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
      path = tags.length || !transcript ? "/v1/analyze" : "/v1/transcribe";
      options = path === "/v1/analyze"
        ? { tag_list: tags, frame_interval: interval, transcript, translate_to: lang ? [lang] : [] }
        : { translate_to: lang ? [lang] : [] };
    }
    if (file) {
      const form = new FormData();
      for (const [key, value] of Object.entries(options)) {
        form.append(key, Array.isArray(value) ? JSON.stringify(value) : String(value));
      }
      form.append("video", file, file.name);
      return { path, init: { method: "POST", body: form, headers: headers() } };
    }
    return {
      path,
      init: { method: "POST", body: JSON.stringify({ video_url: url, ...options }),
              headers: { "Content-Type": "application/json", ...headers() } },
    };
  }

  // -- running a job ------------------------------------------------------------------------------------
  let source = null;  // the AbortController of the events stream being read
  let vttUrl = null;  // the blob: URL of the last WebVTT download, revoked with its result

  async function run() {
    let req;
    try {
      req = request();
    } catch (err) {
      setStatus(err.message, true);
      return;
    }
    clearResult();
    el("an-run").disabled = true;
    setStatus("sending…");
    try {
      const resp = await fetch(req.path, req.init);
      if (resp.status !== 202) throw new Error(await errorOf(resp));
      const accepted = await resp.json();
      el("an-job").textContent = accepted.job_id;
      follow(accepted);
    } catch (err) {
      setStatus(err.message, true);
      el("an-run").disabled = false;
    }
  }

  // Server-sent events read with fetch (EventSource cannot send an Authorization header): calls
  // onEvent(name, data) for each event until the stream ends or `signal` aborts it.
  async function readEvents(url, signal, onEvent) {
    const resp = await fetch(url, { headers: { Accept: "text/event-stream", ...headers() }, signal });
    if (!resp.ok) throw new Error(await errorOf(resp));
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          if (colon === 0) continue;  // a comment (keepalive)
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  function follow(accepted) {
    if (source) source.abort();
    const controller = new AbortController();
    source = controller;
    const finish = () => {
      if (source === controller) { source = null; el("an-run").disabled = false; }
      controller.abort();
    };
    readEvents(accepted.events_url, controller.signal, (name, data) => {
      if (name === "progress") showProgress(JSON.parse(data));
      else if (name === "result") showJob(JSON.parse(data));
      else if (name === "end") finish();
    }).catch((err) => {
      if (!controller.signal.aborted) setStatus(err.message, true);
    }).finally(finish);
  }

  function showProgress(p) {
    const fraction = Math.max(0, Math.min(1, p.fraction || 0));
    el("an-progress").value = fraction;
    const frames = p.frames_planned ? `${p.frames_done}/${p.frames_planned} frames` : `${p.frames_done || 0} frames`;
    const eta = p.eta_seconds != null ? `, about ${Math.ceil(p.eta_seconds)} s left` : "";
    setStatus(`${(fraction * 100).toFixed(0)} % — ${p.phase || "working"}, ${frames}${eta}`);
  }

  function clearResult() {
    if (vttUrl) { URL.revokeObjectURL(vttUrl); vttUrl = null; }
    el("an-progress").value = 0;
    el("an-answer").textContent = "";
    el("an-timeline").innerHTML = "";
    el("an-transcript-out").innerHTML = "";
    el("an-job").textContent = "";
  }

  function showJob(job) {
    if (job.status !== "completed") {
      setStatus(`${job.status}: ${job.error || ""}`, true);
      return;
    }
    el("an-progress").value = 1;
    setStatus("done");
    const result = job.result || {};
    if (result.text !== undefined) el("an-answer").textContent = result.text;
    if (result.tags) showTimeline(result.tags, result.duration || 0);
    if (result.transcript) showTranscript(result.transcript, job.id);
  }

  function showTimeline(tags, duration) {
    const box = el("an-timeline");
    const names = Object.keys(tags);
    if (!names.length) { box.textContent = "no tags found"; return; }
    for (const name of names) {
      const row = document.createElement("div");
      row.className = "an-row";
      const label = document.createElement("span");
      label.className = "an-label";
      label.textContent = name;
      const track = document.createElement("div");
      track.className = "an-track";
      for (const span of tags[name]) {
        const bar = document.createElement("div");
        bar.className = "an-span";
        bar.style.left = `${(100 * span.start) / (duration || 1)}%`;
        bar.style.width = `${Math.max(0.5, (100 * (span.end - span.start)) / (duration || 1))}%`;
        bar.title = `${name}: ${span.start.toFixed(1)}–${span.end.toFixed(1)} s` +
          (span.confidence != null ? ` (${Math.round(span.confidence * 100)} %)` : "");
        track.appendChild(bar);
      }
      row.append(label, track);
      box.appendChild(row);
    }
  }

  function clock(seconds) {
    const m = Math.floor(seconds / 60), s = (seconds % 60).toFixed(1).padStart(4, "0");
    return `${m}:${s}`;
  }

  function showTranscript(transcript, jobId) {
    const list = el("an-transcript-out");
    for (const segment of transcript.segments) {
      const item = document.createElement("li");
      const time = document.createElement("span");
      time.className = "mono";
      time.textContent = `${clock(segment.start)} `;
      item.append(time, document.createTextNode(segment.text));
      for (const [lang, text] of Object.entries(segment.translations || {})) {
        const tr = document.createElement("span");
        tr.className = "translation";
        tr.textContent = `${lang}: ${text}`;
        item.appendChild(tr);
      }
      list.appendChild(item);
    }
    const link = document.createElement("a");
    link.textContent = "download WebVTT";
    link.id = "an-vtt";
    link.download = `${jobId}.vtt`;
    const item = document.createElement("li");
    item.appendChild(link);
    list.appendChild(item);
    // fetched with the token in a header; the link points at the bytes (a blob: URL), not the route
    fetch(`/v1/jobs/${encodeURIComponent(jobId)}/transcript.vtt`, { headers: headers() })
      .then(async (resp) => {
        if (!resp.ok) throw new Error(await errorOf(resp));
        const blob = await resp.blob();
        if (vttUrl) URL.revokeObjectURL(vttUrl);
        vttUrl = URL.createObjectURL(blob);
        link.href = vttUrl;
      })
      .catch((err) => { link.textContent = `WebVTT not available: ${err.message}`; });
  }

  el("an-run").addEventListener("click", run);
})();

// HLS viewer: hls.js plays /stream/{id}/hls/master.m3u8; each SUBTITLES rendition of the master
// (the spoken language and every translation) is a text track, chosen in the language menu.
// The viewer token goes in an Authorization header on every request hls.js makes (xhrSetup), never
// in a URL. (A player that cannot send headers puts it on the master URL as a query parameter
// instead, and the server repeats it on every URI it lists: see docs/guides/obs-to-platforms.md.)
"use strict";

const hlsView = { hls: null, waiting: null };

function masterUrl(manifestId) {
  return `/stream/${encodeURIComponent(manifestId)}/hls/master.m3u8`;
}

// The master answers 503 until the first segment (and its subtitles) is ready: wait for it.
async function waitForMaster(url, token, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const resp = await fetch(url, { cache: "no-store", headers: authHeaders(token) });
    if (resp.ok) return;
    if (resp.status !== 503 || Date.now() > deadline) throw new Error(`no HLS for this stream: ${await errorText(resp)}`);
    await new Promise((resolve) => { hlsView.waiting = setTimeout(resolve, 1000); });
  }
}

function fillLanguages(hls) {
  const select = $("subtitle-lang");
  select.replaceChildren(new Option("off", "-1"));
  hls.subtitleTracks.forEach((track, index) => {
    select.append(new Option(`${track.name} (${track.lang})`, String(index)));
  });
  select.value = String(hls.subtitleTrack);
  select.disabled = hls.subtitleTracks.length === 0;
}

async function play() {
  notice("");
  const manifestId = $("manifest-id").value.trim();
  if (!manifestId) { notice("Enter the manifest id of a stream with an HLS output."); return; }
  if (typeof Hls === "undefined") { notice("hls.js is not installed on the server (make deps: npm ci --prefix web)."); return; }
  const url = masterUrl(manifestId);
  const token = $("token").value.trim();
  $("play").disabled = true;
  $("stop").disabled = false;
  setConnection("waiting");
  $("playlist-url").textContent = `HLS: ${url}`;
  try {
    await waitForMaster(url, token);
    const video = $("video");
    if (!Hls.isSupported()) {  // Safari plays HLS (and its subtitle renditions) natively: open mode only here
      video.src = url;
      setConnection("playing");
      return;
    }
    const headers = authHeaders(token);
    const hls = new Hls({
      subtitleDisplay: true,
      xhrSetup: (xhr) => { for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value); },
    });
    hlsView.hls = hls;
    hls.on(Hls.Events.SUBTITLE_TRACKS_UPDATED, () => fillLanguages(hls));
    hls.on(Hls.Events.SUBTITLE_TRACK_SWITCH, () => { $("subtitle-lang").value = String(hls.subtitleTrack); });
    hls.on(Hls.Events.FRAG_BUFFERED, () => setConnection("playing"));
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      const why = (data.error && data.error.message) || data.reason || "";
      notice(`playback failed: ${data.details}${why ? ` (${why})` : ""}`);
      setConnection("failed");
    });
    hls.loadSource(url);
    hls.attachMedia(video);
    video.play().catch(() => {});
  } catch (err) {
    notice(err.message || String(err));
    stop();
  }
}

function stop() {
  clearTimeout(hlsView.waiting);
  if (hlsView.hls) hlsView.hls.destroy();
  hlsView.hls = null;
  $("video").removeAttribute("src");
  $("subtitle-lang").disabled = true;
  $("play").disabled = false;
  $("stop").disabled = true;
  setConnection("idle");
}

$("subtitle-lang").addEventListener("change", (e) => {
  if (hlsView.hls) hlsView.hls.subtitleTrack = Number(e.target.value);
});
$("play").addEventListener("click", play);
$("stop").addEventListener("click", stop);

const query = new URLSearchParams(window.location.search);
$("manifest-id").value = query.get("id") || "";

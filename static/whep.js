// WHEP viewer: POST an application/sdp offer (recvonly video + audio, an "events" data channel
// for captions/tags/status) to /whep/{manifest_id}; 201 + answer + Location; DELETE to stop.
"use strict";

const viewer = { pc: null, location: null, statsTimer: null, captions: null };

function manifestFromUrl() {
  const match = window.location.pathname.match(/^\/view\/([^/]+)$/);
  if (match) return decodeURIComponent(match[1]);
  return new URLSearchParams(window.location.search).get("id") || "";
}

async function play() {
  notice("");
  const manifestId = $("manifest-id").value.trim();
  if (!manifestId) { notice("Enter the manifest id of a running stream."); return; }
  $("play").disabled = true;
  try {
    const pc = new RTCPeerConnection({ iceServers: await fetchIceServers($("token").value, manifestId) });
    viewer.pc = pc;
    const channel = pc.createDataChannel("events", { ordered: true });
    channel.onmessage = (e) => handleServerMessage(e.data, viewer.captions, $("tags"), null);
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.ontrack = (e) => { stream.addTrack(e.track); $("remote").srcObject = stream; };
    pc.onconnectionstatechange = () => setConnection(pc.connectionState);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const resp = await fetch(`/whep/${encodeURIComponent(manifestId)}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders($("token").value) },
      body: pc.localDescription.sdp,
    });
    if (resp.status !== 201) throw new Error(`cannot watch '${manifestId}': ${await errorText(resp)}`);
    viewer.location = resp.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    viewer.statsTimer = setInterval(() => showPeerStats(viewer.pc).catch(() => {}), 1000);
    $("stop").disabled = false;
  } catch (err) {
    notice(err.message || String(err));
    stop();
  }
}

function stop() {
  if (viewer.statsTimer) clearInterval(viewer.statsTimer);
  if (viewer.location) {
    fetch(viewer.location, { method: "DELETE", headers: authHeaders($("token").value) }).catch(() => {});
  }
  if (viewer.pc) viewer.pc.close();
  viewer.pc = viewer.location = viewer.statsTimer = null;
  $("remote").srcObject = null;
  setConnection("idle");
  $("play").disabled = false;
  $("stop").disabled = true;
}

// A shared link carries the stream's viewer token in the fragment (#token=...), never sent to a server.
function tokenFromFragment() {
  return new URLSearchParams(window.location.hash.replace(/^#/, "")).get("token") || "";
}

viewer.captions = new CaptionView($("remote"), $("captions"), $("partial"));
$("manifest-id").value = manifestFromUrl();
if (tokenFromFragment()) $("token").value = tokenFromFragment();
$("target-lang").addEventListener("change", () => { viewer.captions.targetLang = $("target-lang").value; });
$("play").addEventListener("click", play);
$("stop").addEventListener("click", stop);
window.addEventListener("beforeunload", stop);
if ($("manifest-id").value) play();

// The demo page: camera + microphone → POST /offer → the processed video and audio come back on
// the same peer connection; the "events" data channel carries captions, tags and status, and
// takes parameter changes.
"use strict";

const page = {
  pc: null,
  channel: null,
  media: null,
  manifestId: null,
  sessionId: null,
  statsTimer: null,
  captions: null,
};

function currentParams() {
  const lang = $("target-lang").value;
  return {
    captions: {
      enabled: $("captions-enabled").checked,
      translate_to: lang ? [lang] : [],
      burn_in: $("captions-burn-in").checked,
    },
    vision: {
      enabled: $("vision-enabled").checked,
      interval: Number($("vision-interval").value) || 1.0,
    },
  };
}

function sendParams() {
  page.captions.targetLang = $("target-lang").value;
  page.captions.burnedIn = $("captions-burn-in").checked;  // one rendition: the server's or ours
  page.captions.refresh();
  if (page.channel && page.channel.readyState === "open") {
    page.channel.send(JSON.stringify({ type: "params", ...currentParams() }));
  }
}

function cameraErrorMessage(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera and microphone access was denied. Allow them for this site in your browser's " +
        "settings (the camera icon in the address bar), then press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera or microphone was found. Connect one and press Start again.";
    case "NotReadableError":
      return "The camera or microphone is in use by another program. Close it and press Start again.";
    default:
      return `Could not open the camera: ${err && err.message ? err.message : err}`;
  }
}

async function openCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("this browser (or an insecure http:// origin) has no camera access"), { name: "SecurityError" });
  }
  return navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
    audio: true,
  });
}

async function start() {
  notice("");
  $("start").disabled = true;
  try {
    try {
      page.media = await openCamera();
    } catch (err) {
      notice(cameraErrorMessage(err));
      document.body.dataset.cameraError = err && err.name ? err.name : "error";
      return;
    }
    $("local").srcObject = page.media;
    const pc = new RTCPeerConnection({ iceServers: await fetchIceServers($("token").value) });
    page.pc = pc;
    page.channel = pc.createDataChannel("events", { ordered: true });
    page.channel.onopen = sendParams;
    page.channel.onmessage = (e) => handleServerMessage(e.data, page.captions, $("tags"), notice);
    for (const track of page.media.getTracks()) {
      pc.addTransceiver(track, { direction: "sendrecv", streams: [page.media] });
    }
    const remoteStream = new MediaStream();
    pc.ontrack = (e) => {
      remoteStream.addTrack(e.track);
      $("remote").srcObject = remoteStream;
    };
    pc.onconnectionstatechange = () => {
      setConnection(pc.connectionState);
      if (pc.connectionState === "failed") notice("The connection to the server failed.");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const resp = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders($("token").value) },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", params: currentParams() }),
    });
    if (!resp.ok) throw new Error(`the server refused the call: ${await errorText(resp)}`);
    const answer = await resp.json();
    page.manifestId = answer.manifest_id;
    page.sessionId = answer.session_id;
    $("manifest").textContent = answer.manifest_id;
    document.body.dataset.manifestId = answer.manifest_id;
    // the stream's own viewer token opens its WHEP, SSE and WebVTT routes and nothing else; it rides
    // in the fragment, which browsers never send to a server (so it is in no access log)
    const link = $("viewer-link");
    link.href = `/view/${encodeURIComponent(answer.manifest_id)}#token=${encodeURIComponent(answer.viewer_token)}`;
    link.hidden = false;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    page.statsTimer = setInterval(() => showPeerStats(page.pc).catch(() => {}), 1000);
    $("stop").disabled = false;
  } catch (err) {
    notice(err.message || String(err));
    stop();
  } finally {
    if (!page.pc) $("start").disabled = false;
  }
}

function stop() {
  if (page.statsTimer) clearInterval(page.statsTimer);
  page.statsTimer = null;
  if (page.channel) page.channel.close();
  if (page.pc) page.pc.close();  // the server ends the stream when the peer goes
  if (page.media) for (const track of page.media.getTracks()) track.stop();
  page.pc = page.channel = page.media = null;
  $("local").srcObject = null;
  $("remote").srcObject = null;
  $("viewer-link").hidden = true;
  setConnection("idle");
  $("start").disabled = false;
  $("stop").disabled = true;
}

page.captions = new CaptionView($("remote"), $("captions"), $("partial"));
$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
for (const id of ["captions-enabled", "target-lang", "captions-burn-in", "vision-enabled", "vision-interval"]) {
  $(id).addEventListener("change", sendParams);
}
window.addEventListener("beforeunload", stop);

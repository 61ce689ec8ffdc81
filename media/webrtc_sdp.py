"""SDP checks and negotiation helpers shared by `/offer`, WHIP and WHEP.

Answers are built by aiortc; this module validates offers up front (so a malformed one is a clear
400, not a stack trace), orders codecs by preference, reads what was negotiated, and parses
trickle-ICE sdpfrags (RFC 8840) for WHIP/WHEP PATCH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcicetransport import RTCIceCandidate
from aiortc.sdp import SessionDescription, candidate_from_sdp


class OfferError(ValueError):
    """The offer cannot be used: malformed. HTTP statuses are the edge's (httpapi/errors.py)."""


class UnsupportedOffer(OfferError):
    """A well-formed offer asking for what this server does not do (simulcast, data only, ...)."""


class OfferFailed(OfferError):
    """An acceptable offer whose session failed to start on our side."""


@dataclass
class OfferSummary:
    description: SessionDescription
    kinds: list[str]  # "audio" / "video" in m-line order
    directions: dict[str, str]  # kind → offered direction
    ice_ufrag: str | None
    ice_pwd: str | None
    has_data_channel: bool
    first_mid: str | None


def parse_offer(text: str, max_per_kind: int = 1) -> OfferSummary:
    """Validate an SDP offer: text starting with `v=0`, at least one audio/video m-line, at most
    `max_per_kind` of each kind (422 beyond), ICE credentials and a DTLS fingerprint on each."""
    if not isinstance(text, str) or not text.lstrip().startswith("v=0"):
        raise OfferError("the body is not an SDP offer (it must start with 'v=0')")
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises assorted errors on broken lines
        raise OfferError(f"malformed SDP: {exc}") from None
    kinds: list[str] = []
    directions: dict[str, str] = {}
    has_data = False
    for media in description.media:
        if media.kind == "application":
            has_data = True
        elif media.kind in ("audio", "video"):
            kinds.append(media.kind)
            directions.setdefault(media.kind, media.direction or "sendrecv")
            if not media.rtp.codecs:
                raise OfferError(f"malformed SDP: the {media.kind} m-line has no codecs")
        else:
            raise UnsupportedOffer(f"unsupported m-line kind {media.kind!r}")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferError("malformed SDP: missing a=ice-ufrag / a=ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError("malformed SDP: missing a=fingerprint")
    if not kinds:
        error = UnsupportedOffer if has_data else OfferError
        raise error("the offer has no audio or video m-line")
    for kind in ("audio", "video"):
        if kinds.count(kind) > max_per_kind:
            raise UnsupportedOffer(
                f"at most {max_per_kind} {kind} track(s) per session (simulcast and multiple tracks are not supported)"
            )
    if any(line.startswith(("a=simulcast:", "a=rid:")) for line in text.splitlines()):
        raise UnsupportedOffer("simulcast is not supported (turn it off in the publisher)")
    first = description.media[0] if description.media else None
    return OfferSummary(
        description=description,
        kinds=kinds,
        directions=directions,
        ice_ufrag=first.ice.usernameFragment if first and first.ice else None,
        ice_pwd=first.ice.password if first and first.ice else None,
        has_data_channel=has_data,
        first_mid=first.rtp.muxId if first else None,
    )


def video_codec_preferences(preferred: str) -> list[Any]:
    """All of aiortc's video codecs with `preferred` ("VP8"/"H264") first; RTX kept."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    wanted = f"video/{preferred}".lower()
    return sorted(codecs, key=lambda c: 0 if c.mimeType.lower() == wanted else 1)


def add_transceivers(
    pc: RTCPeerConnection, offer: OfferSummary, direction: str, preferred_video: str
) -> dict[str, RTCRtpTransceiver]:
    """Create our transceivers before the offer is applied so that our direction and codec order
    are used (aiortc matches them to the offer's m-lines in order)."""
    transceivers: dict[str, RTCRtpTransceiver] = {}
    for kind in offer.kinds:
        transceiver = pc.addTransceiver(kind, direction=direction)
        if kind == "video":
            transceiver.setCodecPreferences(video_codec_preferences(preferred_video))
        transceivers[kind] = transceiver
    return transceivers


def negotiated_codec(answer_sdp: str, kind: str) -> str | None:
    """The codec the answer selected for `kind` ("VP8", "H264", "opus"…), or None if rejected."""
    for media in SessionDescription.parse(answer_sdp).media:
        if media.kind != kind or media.port == 0:
            continue
        for codec in media.rtp.codecs:
            if codec.name.lower() not in ("rtx", "red", "ulpfec"):
                return codec.name.upper() if kind == "video" else codec.name
    return None


def answer_direction(answer_sdp: str, kind: str) -> str | None:
    for media in SessionDescription.parse(answer_sdp).media:
        if media.kind == kind:
            return media.direction
    return None


@dataclass
class SdpFragment:
    """An `application/trickle-ice-sdpfrag` body (RFC 8840)."""

    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[RTCIceCandidate] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_sdpfrag(text: str, default_mid: str | None) -> SdpFragment:
    frag = SdpFragment()
    mid = default_mid
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("a=ice-ufrag:"):
            frag.ice_ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            frag.ice_pwd = line.split(":", 1)[1]
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            try:
                candidate = candidate_from_sdp(line[len("a=candidate:") :])
            except (ValueError, IndexError, AssertionError) as exc:  # aiortc asserts the field count
                raise OfferError(f"malformed candidate line {line!r}: {exc}") from None
            candidate.sdpMid = mid
            frag.candidates.append(candidate)
        elif line == "a=end-of-candidates":
            frag.end_of_candidates = True
    return frag

"""Stream params updates as JSON merge patches (RFC 7396), and the defaults of shared options.

Every place an update arrives (`/stream/params`, `/stream/start` of a running id, the Livepeer
control channel, the WebRTC data channel) hands its object to `Stream.update_params`, which applies
it with `merge_patch`: keys the patch does not mention keep their value, `null` removes a key (the
option is back to its default), an object merges into the object it names, anything else replaces.
A list is a value: a patch that names `outputs` replaces the whole list (which outputs keep running
across the change is decided by media/outputs/spec.py, by entry name and settings).
"""

from __future__ import annotations

import copy
from typing import Any

# Options read by more than one part of the server, each defined once here.
# Captions are burned into the video unless `captions.burn_in` is false: OBS and other WHIP
# publishers have no data channel, so the picture is where their viewers see captions.
CAPTIONS_BURN_IN_DEFAULT = True
VISION_BURN_IN_DEFAULT = True  # `vision.burn_in`: tags and boxes drawn on the video
OVERLAY_ENABLED_DEFAULT = True  # `overlay.enabled`: the header (stream id, clock, media time)
OVERLAY_CLOCK_DEFAULT = True  # `overlay.clock`


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 §2 `MergePatch(Target, Patch)`; returns a new value, neither argument is changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def compose_patches(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One patch with the effect of applying `first`, then `second` (for coalescing queued updates).

    Exact except for one shape no single merge patch can say: `first` removes a key (null) and
    `second` sets it to an object; the composed patch then merges that object into the old value
    instead of replacing it."""
    result = dict(first)
    for key, value in second.items():
        earlier = result.get(key)
        if isinstance(value, dict) and isinstance(earlier, dict):
            result[key] = compose_patches(earlier, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def option(params: dict[str, Any], section: str, key: str, default: Any) -> Any:
    """`params[section][key]`, or `default` when either is absent (or the section is no object)."""
    block = params.get(section)
    if not isinstance(block, dict):
        return default
    value = block.get(key)
    return default if value is None else value

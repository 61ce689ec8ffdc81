"""`params.outputs`: the list of a stream's outputs, each entry validated by its `type`.

The list merges like every param (RFC 7396, `media.params.merge_patch`): a list is a value, so a
patch that names `outputs` replaces the whole list, `"outputs": null` (or `[]`) removes every
output, and a patch without `outputs` leaves the outputs running untouched. Across a change, an
entry keeps running when the new list has an entry with the same name and the same settings; any
other entry is stopped and the new one started. An entry's name is its `id` when it has one,
else its type and position among entries of that type (`rtmp0`, `rtmp1`, `hls0`): give entries an
`id` to keep them running while the list is reordered.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from httpapi.outbound import OutboundDenied, OutboundPolicy
from httpapi.redact import redact_url

MAX_OUTPUTS = 8  # per stream: each one is an encoder and a connection
MAX_URL_LENGTH = 2048
RTMP_DEFAULT_PORT = 1935
RTMPS_DEFAULT_PORT = 443
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

CaptionsMode = Literal["burn_in", "cea608", "both", "none"]


class OutputSpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(default=None, pattern=ID_PATTERN, description="a stable name for this output")


class RtmpOutputSpec(OutputSpecBase):
    """Push the processed stream to an RTMP(S) server (YouTube, Twitch, a CDN, another server)."""

    type: Literal["rtmp"]
    url: str = Field(description="rtmp://HOST[:PORT]/APP/STREAM_KEY or rtmps://...; the key is kept secret")
    captions: CaptionsMode = Field(
        default="burn_in",
        description="burn_in: drawn into the picture; cea608: CEA-608 in the H.264; both; none",
    )
    cea608_language: str | None = Field(
        default=None,
        min_length=2,
        max_length=16,
        pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})*$",
        description="the caption language put into CEA-608 (default: the spoken language)",
    )

    @field_validator("url")
    @classmethod
    def _rtmp_url(cls, value: str) -> str:
        if len(value) > MAX_URL_LENGTH:
            raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("rtmp", "rtmps"):
            raise ValueError(f"must be an rtmp:// or rtmps:// URL, got {redact_url(value)!r}")
        if not parts.hostname:
            raise ValueError("has no host")
        if "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:password@); put the stream key in the path")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) < 2:
            raise ValueError("must name an application and a stream key: rtmp://HOST[:PORT]/APP/STREAM_KEY")
        if any(c.isspace() or ord(c) < 32 for c in value):
            raise ValueError("must not contain whitespace or control characters")
        return value

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower().rstrip(".")

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (RTMPS_DEFAULT_PORT if parts.scheme == "rtmps" else RTMP_DEFAULT_PORT)


class HlsOutputSpec(OutputSpecBase):
    """HLS served by this server under `/stream/{id}/hls/` (built in `media.outputs.hls`)."""

    type: Literal["hls"]


OutputSpec = Annotated[RtmpOutputSpec | HlsOutputSpec, Field(discriminator="type")]
_OUTPUTS = TypeAdapter(list[OutputSpec])


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif index == 1 and part in ("rtmp", "hls"):
            continue  # the union's tag, not a field
        else:
            path += f".{part}"
    return path


def parse_outputs(params: dict[str, Any]) -> list[tuple[str, OutputSpec]]:
    """The validated `params.outputs` as (name, spec) pairs; raises ValueError naming the field
    (`params.outputs[0].url: ...`)."""
    return parse_outputs_list(params.get("outputs"), where="params.outputs")


def parse_outputs_list(raw: Any, where: str = "") -> list[tuple[str, OutputSpec]]:
    """`parse_outputs` of the list itself; messages start with `where` + the entry's path."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"{where or 'the value'} must be a list of output objects")
    if len(raw) > MAX_OUTPUTS:
        raise ValueError(f"{where or 'the list'} may hold at most {MAX_OUTPUTS} outputs per stream")
    try:
        specs = _OUTPUTS.validate_python(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "union_tag_invalid":
            message = "type must be one of 'rtmp', 'hls'"
        elif error["type"] == "union_tag_not_found":
            message = "type is required ('rtmp' or 'hls')"
        raise ValueError(f"{where}{_field_path(tuple(error['loc']))}: {message}") from None
    named: list[tuple[str, OutputSpec]] = []
    counts: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec.id is not None:
            name = spec.id
        else:
            name = f"{spec.type}{counts.get(spec.type, 0)}"
            counts[spec.type] = counts.get(spec.type, 0) + 1
        if any(name == other for other, _ in named):
            raise ValueError(f"{where}[{index}].id: the output name {name!r} is used twice")
        named.append((name, spec))
    return named


def check_outputs_block(
    block: Any, policy: OutboundPolicy, available: Collection[str], where: str = ""
) -> list[tuple[str, OutputSpec]]:
    """Everything a start or an update checks before it is accepted: the entries, that their type
    is built by this server, and the outbound policy (`check_outputs_now`). Raises ValueError."""
    specs = parse_outputs_list(block, where)
    for index, (_, spec) in enumerate(specs):
        if spec.type not in available:
            raise ValueError(f"{where}[{index}].type: '{spec.type}' outputs are not available on this server")
    check_outputs_now(specs, policy, where)
    return specs


def check_outputs_now(outputs: list[tuple[str, OutputSpec]], policy: OutboundPolicy, where: str = "") -> None:
    """The outbound policy on what needs no name lookup (literal addresses, denied host names);
    raises OutboundDenied naming the entry. Names are resolved and checked at every connect."""
    for index, (_, spec) in enumerate(outputs):
        if isinstance(spec, RtmpOutputSpec):
            verdict = policy.host_verdict(spec.host)
            if verdict is not None:
                raise OutboundDenied(f"{where}[{index}].url {redact_url(spec.url)}: {verdict}")


async def resolve_allowed(policy: OutboundPolicy, host: str, port: int) -> str:
    """The address to connect to for `host`: resolved once, every address checked by the outbound
    policy; the caller connects to this address, never to the name again, so DNS cannot rebind
    between check and connect."""
    addresses = await policy.checked_addresses(host, port, what="host")
    # IPv4 first: FFmpeg's RTMP client reaches it everywhere
    return str(next((address for address in addresses if address.version == 4), addresses[0]))

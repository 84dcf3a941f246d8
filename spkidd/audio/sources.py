"""One place that turns a source spec from the command line or the config into an AudioSource.

`mic`, `mic:NAME`, `mic:INDEX` -> the microphone; `rtsp://`, `http(s)://` and other stream URLs -> ffmpeg; an
existing file -> a replay. Backends are imported only when chosen, so a file replay never loads PortAudio.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from spkidd.audio.base import AudioSource, StatusCallback

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp", "hls")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_LISTEN_SCHEMES = ("udp", "tcp", "srt", "rtp")
"""Schemes whose URL may name no host: ffmpeg then listens (udp://@:1234, srt://:9000?mode=listener)."""


class SourceSpecError(ValueError):
    """A source spec that names nothing spkidd can open; the message says what was expected."""


def stream_url_problem(url: str) -> str | None:
    """What is wrong with `url` as a stream URL (`scheme://host[:port]/...`), or None: caught at the config
    check, before the model loads, rather than by ffmpeg after it."""
    match = _URL.match(url.strip())
    if match is None:
        return "is not a URL of the form scheme://host/path"
    scheme = match.group(1).lower()
    if scheme == "file":
        return None
    if scheme not in STREAM_SCHEMES:
        return f"has the unsupported scheme {scheme!r} (supported: {', '.join(STREAM_SCHEMES)}, file)"
    parts = urlsplit(url.strip())
    try:
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    if not parts.hostname and scheme not in _LISTEN_SCHEMES:
        return "names no host"
    return None


def make_source(
    spec: str,
    name: str,
    *,
    realtime: bool = True,
    on_status: StatusCallback | None = None,
    wait_for_devices: bool = True,
) -> AudioSource:
    """The AudioSource for `spec`. `realtime` matters for file replays only (False: as fast as possible);
    `wait_for_devices` for the microphone only (False: fail at once if there is no input device at all)."""
    text = spec.strip()
    if text == "mic" or text.startswith("mic:"):
        from spkidd.audio.microphone import MicrophoneSource

        device_text = text[4:].strip()
        device: int | str | None = None
        if device_text:
            device = int(device_text) if device_text.isdigit() else device_text
        return MicrophoneSource(name, device, on_status=on_status, wait_for_devices=wait_for_devices)
    url = _URL.match(text)
    if url is not None:
        scheme = url.group(1).lower()
        if scheme == "file":
            return _replay(Path(text[len("file://") :]), spec, name, realtime, on_status)
        if scheme not in STREAM_SCHEMES:
            raise SourceSpecError(
                f"source {name!r}: unsupported URL scheme {scheme!r} in {spec!r} "
                f"(supported: {', '.join(STREAM_SCHEMES)})"
            )
        from spkidd.audio.ffmpeg import FfmpegSource

        return FfmpegSource(name, text, on_status=on_status)
    return _replay(Path(text).expanduser(), spec, name, realtime, on_status)


def _replay(path: Path, spec: str, name: str, realtime: bool, on_status: StatusCallback | None) -> AudioSource:
    if not path.is_file():
        raise SourceSpecError(
            f"source {name!r}: {spec!r} is not an existing file, a stream URL (rtsp://, http(s)://, ...) "
            "or a microphone (mic, mic:NAME, mic:INDEX)"
        )
    from spkidd.audio.replay import ReplaySource

    return ReplaySource(name, path, realtime=realtime, on_status=on_status)

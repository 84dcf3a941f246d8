"""One place that turns a source spec from the command line or the config into an AudioSource.

`mic`, `mic:NAME`, `mic:INDEX` -> the microphone; `rtsp://`, `http(s)://` and other stream URLs -> ffmpeg; an
existing file -> a replay. Backends are imported only when chosen, so a file replay never loads PortAudio.
"""

from __future__ import annotations

import re
from pathlib import Path

from spkidd.audio.base import AudioSource, StatusCallback

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp", "hls")
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class SourceSpecError(ValueError):
    """A source spec that names nothing spkidd can open; the message says what was expected."""


def make_source(spec: str, name: str, *, realtime: bool = True, on_status: StatusCallback | None = None) -> AudioSource:
    """The AudioSource for `spec`. `realtime` matters for file replays only (False: as fast as possible)."""
    text = spec.strip()
    if text == "mic" or text.startswith("mic:"):
        from spkidd.audio.microphone import MicrophoneSource

        device_text = text[4:].strip()
        device: int | str | None = None
        if device_text:
            device = int(device_text) if device_text.isdigit() else device_text
        return MicrophoneSource(name, device, on_status=on_status)
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

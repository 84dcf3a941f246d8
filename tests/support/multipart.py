"""A recording posted to the page's /api/record as a browser's form would post it."""

from __future__ import annotations


def recording_form(audio: bytes, fields: dict[str, str], boundary: str, filename: str = "voice.wav") -> bytes:
    """multipart/form-data with `fields` first, then `audio` as the `audio` part; send it with the content type
    `multipart/form-data; boundary=BOUNDARY`."""
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    audio_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    return head.encode() + audio_head.encode() + audio + f"\r\n--{boundary}--\r\n".encode()

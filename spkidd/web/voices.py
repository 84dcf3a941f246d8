"""Changing the household's voices from the page: enroll, forget, rename.

One change at a time (a lock), the CPU work off the event loop, the model file read fresh and written atomically
(`save_model`), then handed to the running streams: no restart, no SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spkidd.enrollment import (
    DifferentVoiceError,
    check_name,
    check_not_a_case_twin,
    enroll_audio,
    forget,
    rename,
)
from spkidd.modelfile import ModelBundle, ModelFileError, load_model, save_model
from spkidd.web.control import DaemonControl
from spkidd.web.errors import PageError

log = logging.getLogger(__name__)


class VoiceError(PageError):
    """A change of the household's voices that cannot be made."""


@dataclass(frozen=True)
class EnrollResult:
    speaker: str
    speech_s: float
    updated: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "speaker": self.speaker,
            "speech_s": round(self.speech_s, 1),
            "updated": self.updated,
            "warnings": self.warnings,
        }


def speaker_rows(bundle: ModelBundle) -> list[dict[str, Any]]:
    """The voices list: each speaker with how it got in and how much speech backs it."""
    rows = []
    for label in bundle.labels:
        info = bundle.enrollment.get(label, {})
        rows.append(
            {
                "name": label,
                "source": str(info.get("source", "training")),
                "seconds": round(float(info.get("seconds", 0.0)), 1),
                "updated": str(info.get("updated", "")),
            }
        )
    return rows


def check_new_name(name: str, bundle: ModelBundle, renaming: str | None = None) -> None:
    """A name for a new or renamed speaker (`renaming`: its name now): enrollment's own rule (`check_name`, as
    `spkidd enroll` applies it), and free in the model, in any case (409 here, where `spkidd enroll` would update
    the speaker of that name instead)."""
    try:
        check_name(name)
    except ValueError as exc:
        raise VoiceError(str(exc)) from exc
    if name in bundle.labels:
        raise VoiceError(f"there is already a speaker called {name!r}", status=409)
    try:
        check_not_a_case_twin(name, bundle.labels, renaming)
    except ValueError as exc:
        raise VoiceError(str(exc), status=409) from exc


class VoiceKeeper:
    def __init__(self, control: DaemonControl) -> None:
        self._control = control
        self._lock = asyncio.Lock()

    def current(self) -> ModelBundle:
        bundle = self._control.bundle
        if bundle is None:
            raise VoiceError("the daemon has no model loaded yet")
        return bundle

    async def enroll(
        self, speaker: str, new: bool, clips: Callable[[], dict[str, np.ndarray]], force: bool = False
    ) -> EnrollResult:
        """`new`: a new speaker (the name must be free), else an existing one gets more speech (`force`: even if
        it sounds like another speaker, or a new name for a known voice). `clips` loads the audio (blocking; it runs
        in the worker thread)."""
        async with self._lock:
            bundle = await self._read()
            if new:
                check_new_name(speaker, bundle)
            elif speaker not in bundle.labels:
                raise VoiceError(f"no speaker {speaker!r} to add speech to", status=404)
            updated, report = await asyncio.to_thread(self._enroll, bundle, speaker, clips, force)
            await self._write(updated)
            log.info("web: enrolled %s (%.1f s of speech)", speaker, report.speech_s)
            return EnrollResult(speaker, report.speech_s, report.updated, list(report.warnings))

    async def forget(self, speaker: str) -> None:
        async with self._lock:
            bundle = await self._read()
            updated = await asyncio.to_thread(self._edit, forget, bundle, speaker)
            await self._write(updated)
            log.info("web: forgot %s", speaker)

    async def rename(self, speaker: str, new_name: str) -> str:
        async with self._lock:
            bundle = await self._read()
            if speaker not in bundle.labels:
                raise VoiceError(f"no speaker {speaker!r} in the model", status=404)
            check_new_name(new_name, bundle, renaming=speaker)
            updated = await asyncio.to_thread(self._edit, rename, bundle, speaker, new_name)
            await self._write(updated)
            log.info("web: renamed %s to %s", speaker, new_name)
            return new_name

    @staticmethod
    def _edit(change: Callable[..., ModelBundle], bundle: ModelBundle, *args: str) -> ModelBundle:
        """Runs in a worker thread: forgetting builds a new model (about 10 ms of torch), too long for the loop."""
        try:
            return change(bundle, *args)
        except ValueError as exc:
            raise VoiceError(str(exc)) from exc

    @staticmethod
    def _enroll(
        bundle: ModelBundle, speaker: str, clips: Callable[[], dict[str, np.ndarray]], force: bool
    ) -> tuple[ModelBundle, Any]:
        try:
            return enroll_audio(bundle, speaker, clips(), force)
        except DifferentVoiceError as exc:
            raise VoiceError(str(exc), status=409) from exc
        except ValueError as exc:
            raise VoiceError(str(exc)) from exc

    async def _read(self) -> ModelBundle:
        """The model file as it is now (it may have been changed by `spkidd enroll` since the daemon loaded it)."""
        try:
            return await asyncio.to_thread(load_model, self._control.model_path)
        except ModelFileError as exc:
            raise VoiceError(f"cannot read the model file: {exc}") from exc

    async def _write(self, bundle: ModelBundle) -> None:
        path = self._control.model_path
        try:
            await asyncio.to_thread(save_model, bundle, path)
        except OSError as exc:
            raise VoiceError(f"cannot write the model file {path}: {exc.strerror}", status=500) from exc
        self._control.use_bundle(bundle)

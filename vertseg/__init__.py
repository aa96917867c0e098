"""vertseg: semi-supervised vertebra segmentation and identification in spine CT.

`vertseg.predict(...)` (see `vertseg.api`) is imported on first use, so `import vertseg` stays cheap (no torch).
"""

__version__ = "0.1.0"

_LAZY = {"predict": "vertseg.api", "Result": "vertseg.api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vertseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

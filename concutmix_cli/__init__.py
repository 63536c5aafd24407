"""concutmix: long-tailed image recognition with Contrastive CutMix (ConCutMix).

`prepare`, `train`, `evaluate`, `inspect_labels`, `predict`, `export`, `plot` and `report`
(api.py) are the library; `concutmix` is its CLI."""

__version__ = "0.1.0"

_API = ("train", "evaluate", "inspect_labels", "prepare", "predict", "export", "plot", "report",
        "TrainResult", "InspectReport", "Predictions", "StopFlag")


def __getattr__(name: str):
    if name in _API:  # imported on first use: `concutmix --version` does not load torch
        from concutmix_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'concutmix_cli' has no attribute {name!r}")

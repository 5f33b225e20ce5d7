"""supportprune: compress pretrained CNNs with learned supports (Huang, Kong, Lucey 2017).

Python API: ``supportprune.SupportPruner`` (see ``supportprune.api``); the CLI is ``supportprune``.
"""

__version__ = "0.1.0"
__all__ = ["SupportPruner", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so `supportprune --help` does not pay for importing torch.
    if name == "SupportPruner":
        from supportprune.api import SupportPruner

        return SupportPruner
    raise AttributeError(f"module 'supportprune' has no attribute {name!r}")

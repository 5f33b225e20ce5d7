"""supportprune: compress pretrained CNNs with learned supports (Huang, Kong, Lucey 2017)."""

__version__ = "0.1.0"

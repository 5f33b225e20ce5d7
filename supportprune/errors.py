"""The one exception type the CLI turns into a one-line message."""


class SupportpruneError(Exception):
    """A problem with the user's input or environment, stated as what is wrong and how to fix it.

    The CLI prints ``str(error)`` on one line and exits non-zero; no traceback is shown.
    """

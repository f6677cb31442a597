"""The one exception type users see: a clear, one-line message about their input."""


class VitConvertError(Exception):
    """Bad input or an impossible request; the message says what and, where it can, what to do."""


class VitConvertWarning(UserWarning):
    """Allowed but probably not what the user wants (e.g. a dtype this device only emulates, slowly)."""

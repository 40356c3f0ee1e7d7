"""Exception types whose message is shown to the user as one line (the CLIs print it, no traceback)."""


class MeerError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ImageError(MeerError):
    """A file that cannot be used as an image (unreadable, not an image, unsupported mode)."""


class NoFaceError(MeerError):
    """An image in which no face was found."""


class OutputExistsError(MeerError):
    """Refusing to overwrite something the user already has."""

"""What the page asked for and cannot have: one kind of refusal, shown to the user as it is."""


class PageError(Exception):
    """A refusal whose message the page shows as it is, with `status` as the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

"""One Label Studio project's round state machine and its collaborators."""

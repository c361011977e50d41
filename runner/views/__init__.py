"""What people see in the terminal.

- ``live``: the live view of a run, drawn from its events.
- ``progress``: the leaderboard a run ends with, and ``runner status``.
"""

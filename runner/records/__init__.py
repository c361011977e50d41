"""The run directory's records: what a run writes, and how it is read back.

- ``events``: the event log (``events.jsonl``): its writer and its readers.
- ``event_kinds``: the catalogue of every event, its fields and its meaning.
- ``fold``: the one reading of the log: each trial's standing.
- ``status``: ``status.json``, the run as it is now.
- ``results``: the leaderboard and ``results.json``.
- ``files``: files written whole or not at all, and only where runner made them.
"""

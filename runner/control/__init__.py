"""The control file: from a person's edit to the running trial.

- ``file``: its format and validation (``control.json``).
- ``watch``: watching one file for saves, whichever way an editor saves it.
- ``inbox``: reading each version once and delivering its orders to the running trials.
- ``refusal``: a person's nudge on trial, undone if training blows up under it.
- ``nudge``: ``runner nudge``, the command-line client that edits the file and waits.
"""

"""What runs an experiment, start to end.

- ``loop``: the driver; ask the strategy, hand trials to the executor, tell the strategy.
- ``experiment``: what the driver, the trial loop and the workers share about one run.
- ``trial_loop``: one trial, trained like a textbook loop, with its snapshots.
- ``trial_decisions``: what decisions do to the running trial (nudges, rollbacks, ends...).
- ``trial_state``: what a trial's snapshots carry besides the backend's state.
- ``checkpoints``: when a trial's snapshots are taken, the ring in memory, which files stay.
- ``snapshot_files``: the snapshot file format, written durably and read back checked.
- ``pruning``: the pruner at work in the driver: a verdict as each epoch ends, sent as an order.
- ``divergence``: what counts as training blowing up.
- ``collapse``: what counts as a network that stopped learning without blowing up.
- ``interrupt``: clean stops on Ctrl-C and SIGTERM.
- ``resume``: where each trial of an interrupted run goes on.
- ``replay``: one trial trained again with the orders from its log, and compared (``runner replay``).
- ``plugin_manager``: the plugins of one run: built-ins, installed ones, one-off modules.
"""

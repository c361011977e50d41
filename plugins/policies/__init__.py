"""Built-in policies: how the runner reacts to what it sees, as replaceable plugins."""

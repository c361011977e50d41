"""Built-in pruners: which trials of a search end early (``search.pruner``)."""

"""What can be run and what was published, without torch: YAML, ids, recipes, cells, run specs, reference tables."""

"""`make demo`: the whole loop on one machine, each stage the command a user would run."""

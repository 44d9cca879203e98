"""Training data: the shipped neutral corpus, styled pairs, quality filters, relabel runs."""

"""The ops dashboard: see the loop, trigger retrains, promote and roll back."""

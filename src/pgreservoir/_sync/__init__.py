"""The blocking shell: threads carry out the core's decisions."""

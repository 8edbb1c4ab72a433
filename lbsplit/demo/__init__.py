"""`python -m lbsplit.demo` (`make demo`): the rollout plan on a private sandbox nginx.

`sandbox` starts nginx on loopback with v1/v2 backends from the shipped snippets;
the tests and benchmarks use it too. Nothing else in lbsplit imports this package.
May import: fleet, rollout, nginx, resources.
"""

"""The application layer: each command in one place, between the CLI and the parts.

`local` holds this host's commands that change the stage (apply, promote, restore, revert,
confirm, check): the transaction with the gate as its precheck, then the hooks and the
notifications. `commands` is what the CLI calls: each command on this host or, with [fleet],
on the whole fleet (the fleet's modules load only then); the fleet's agent gets `local` from
here as a parameter, so the parts below know nothing of each other's commands.
May import: fleet, watch, rollout, nginx, model, errors, config, stamps.
"""

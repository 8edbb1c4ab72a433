"""The rollout part: changing what nginx serves, safely, and remembering it.

`transaction` is the one transaction (lock -> validate -> render -> check -> swap ->
nginx -t -> reload -> verify, undo on any failure, named failpoints); it takes a
precheck callback, so it imports nothing from watch/. `planning` validates a stage and
renders what it will write, `wlcache` and `rendercache` keep validated whitelists and
rendered skeletons, `files` owns atomic writes and the lock, `state` the state_dir
layout, `status` compares the state with what nginx serves.
May import: nginx, model, errors, config, validate, whitelist, progress, timing, stamps.
"""

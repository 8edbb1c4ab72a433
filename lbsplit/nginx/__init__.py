"""The nginx part: everything that knows nginx's syntax, arithmetic and processes.

`dialect` writes lbsplit.conf and reads it back (the only code that knows its format),
`hashing` is split_clients' arithmetic, `route` explains a user's variant with it (pure),
and `process` is the one subprocess boundary (nginx -t, reload, finding the master,
asking the status page what it serves).
May import: model, errors, config, validate, progress, resources.
"""

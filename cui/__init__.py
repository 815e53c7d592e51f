"""cui, the Collective User Interface: one command line for publishers, users and administrators.

The CLI is thin: each command parses its arguments, calls one function of `cvl`, `reposerver`
or `utility`, and renders the result. Errors become exit codes in one place (`cui.main`).
"""
